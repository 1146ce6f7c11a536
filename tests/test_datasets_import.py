"""Dataset import services and the import_dataset command: happy paths and every refusal."""
from __future__ import annotations

import hashlib
import io
import stat
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.core.management import execute_from_command_line
from PIL import Image

from studyapp.models import Dataset, Stimulus
from studyapp.services import datasets as services
from studyapp.services.datasets import (DatasetValidationError, array_to_npy_bytes, dataset_import_builtin,
                                        dataset_import_images, dataset_import_tabular, stimulus_array)

pytestmark = pytest.mark.django_db


# --------------------------------------------------------------------------- helpers

@pytest.fixture(autouse=True)
def media_root(settings, tmp_path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def media_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def assert_nothing_written(root: Path) -> None:
    assert Dataset.objects.count() == 0
    assert Stimulus.objects.count() == 0
    assert media_files(root) == []


def png(value: int = 0, *, size: tuple[int, int] = (4, 4), mode: str = "L") -> bytes:
    """A small image whose pixels encode ``value`` so tests can tell images apart."""
    if mode in ("RGB", "RGBA"):
        colour = (value, 255 - value, 7) + ((255,) if mode == "RGBA" else ())
        image = Image.new(mode, size, colour)
    elif mode == "LA":
        image = Image.new("LA", size, (value, 255))
    else:
        image = Image.new(mode, size, value)
    image.putpixel((0, 0), (255,) * len(image.getbands()) if len(image.getbands()) > 1 else 255)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_zip(files: dict[str, bytes | str], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def image_files(*, per_class: int = 3, classes: tuple[str, ...] = ("cat", "bird"), split: bool = False,
                size: tuple[int, int] = (4, 4)) -> dict[str, bytes | str]:
    files: dict[str, bytes | str] = {}
    lines = ["filename,label" + (",split" if split else "")]
    for c, label in enumerate(classes):
        for i in range(per_class):
            filename = f"{label}_{i:02d}.png"
            files[filename] = png(10 * c + i, size=size)
            lines.append(f"{filename},{label}" + ((",test" if i == 0 else ",train") if split else ""))
    files["labels.csv"] = "\n".join(lines) + "\n"
    return files


def image_error(files_or_bytes: dict | bytes, **kwargs) -> str:
    archive = files_or_bytes if isinstance(files_or_bytes, bytes) else make_zip(files_or_bytes)
    with pytest.raises(DatasetValidationError) as caught:
        dataset_import_images(name="Pets", archive=archive, **kwargs)
    return "\n".join(caught.value.messages)


def tabular_error(text: str | bytes, **kwargs) -> str:
    data = text.encode() if isinstance(text, str) else text
    with pytest.raises(DatasetValidationError) as caught:
        dataset_import_tabular(name="Patients", csv_file=data, **kwargs)
    return "\n".join(caught.value.messages)


# --------------------------------------------------------------------------- images: accepted

def test_image_zip_becomes_a_dataset_with_one_stimulus_per_image(media_root):
    files = image_files(split=True)
    files["classes.txt"] = "cat\nbird\n"
    archive = make_zip(files)

    dataset = dataset_import_images(name="Pets", archive=io.BytesIO(archive), description="Two pets.")

    assert dataset.modality == "image" and dataset.source == "upload"
    assert dataset.class_names == ["cat", "bird"]
    assert dataset.input_shape == [1, 4, 4]
    assert dataset.n_items == 6 and dataset.stimuli.count() == 6
    assert dataset.value_range == [0.0, 1.0]
    assert dataset.description == "Two pets."
    assert dataset.content_sha256 == hashlib.sha256(archive).hexdigest()
    first = dataset.stimuli.get(index=0)
    assert (first.source_name, first.label, first.split) == ("cat_00.png", 0, "test")
    array = stimulus_array(first)
    assert array.dtype == np.float32 and array.shape == (1, 4, 4)
    assert array[0, 1, 1] == 0.0 and array[0, 0, 0] == 1.0
    bird = dataset.stimuli.get(source_name="bird_02.png")
    assert bird.label == 1 and bird.split == "train"
    assert stimulus_array(bird)[0, 1, 1] == pytest.approx(12 / 255)
    with bird.image.open("rb") as handle:
        shown = np.asarray(Image.open(handle))
    assert shown.shape == (4, 4) and shown[1, 1] == 12 and shown[0, 0] == 255
    assert len(media_files(media_root)) == 6


def test_stored_image_names_reveal_neither_label_nor_original_filename():
    dataset = dataset_import_images(name="Pets", archive=make_zip(image_files()))

    for stimulus in dataset.stimuli.all():
        stored = stimulus.image.name
        assert stored.startswith("stimuli/") and stored.endswith(".png")
        assert "cat" not in stored and "bird" not in stored
        assert Path(stimulus.source_name).stem not in stored


def test_without_split_column_classes_are_sorted_and_a_seeded_stratified_split_is_recorded():
    archive = make_zip(image_files(per_class=10, classes=("10", "2")))

    first = dataset_import_images(name="First", archive=archive)
    second = dataset_import_images(name="Second", archive=archive)

    assert first.class_names == ["2", "10"]  # integer labels sort as numbers
    splits = list(first.stimuli.values_list("label", "split"))
    assert sorted(splits) == sorted([(0, "test")] * 2 + [(0, "train")] * 8 + [(1, "test")] * 2 + [(1, "train")] * 8)
    assert splits == list(second.stimuli.values_list("label", "split"))
    assert "seed 0" in first.description and "80% train / 20% test" in first.description


def test_mixed_grayscale_and_colour_images_are_all_stored_as_rgb():
    files = {"gray.png": png(40), "colour.png": png(40, mode="RGB"), "clear.png": png(40, mode="RGBA"),
             "labels.csv": "filename,label\ngray.png,a\ncolour.png,b\nclear.png,b\n"}

    dataset = dataset_import_images(name="Mixed", archive=make_zip(files))

    assert dataset.input_shape == [3, 4, 4]
    gray = stimulus_array(dataset.stimuli.get(source_name="gray.png"))
    assert gray.shape == (3, 4, 4) and np.array_equal(gray[0], gray[1]) and np.array_equal(gray[1], gray[2])
    colour = stimulus_array(dataset.stimuli.get(source_name="colour.png"))
    assert colour[:, 1, 1] == pytest.approx([40 / 255, 215 / 255, 7 / 255])
    with dataset.stimuli.get(source_name="colour.png").image.open("rb") as handle:
        assert Image.open(handle).mode == "RGB"


def test_grayscale_images_with_alpha_or_sixteen_bits_keep_one_channel():
    sixteen = io.BytesIO()
    Image.fromarray(np.full((4, 4), 65535 // 5, dtype=np.uint16)).save(sixteen, format="PNG")
    files = {"a.png": png(51, mode="LA"), "b.png": sixteen.getvalue(),
             "labels.csv": "filename,label\na.png,x\nb.png,y\n"}

    dataset = dataset_import_images(name="Gray", archive=make_zip(files))

    assert dataset.input_shape == [1, 4, 4]
    assert stimulus_array(dataset.stimuli.get(source_name="a.png"))[0, 1, 1] == pytest.approx(0.2)
    assert stimulus_array(dataset.stimuli.get(source_name="b.png"))[0, 1, 1] == pytest.approx(0.2)


def test_a_single_top_level_folder_nested_folders_and_system_junk_are_handled():
    files = {"pets/labels.csv": "filename,label\ncats/a.png,cat\nbirds/b.png,bird\n",
             "pets/cats/a.png": png(1), "pets/birds/b.png": png(2),
             "pets/.DS_Store": b"junk", "__MACOSX/pets/._a.png": b"junk"}

    dataset = dataset_import_images(name="Nested", archive=make_zip(files))

    assert sorted(dataset.stimuli.values_list("source_name", flat=True)) == ["birds/b.png", "cats/a.png"]


# --------------------------------------------------------------------------- images: refused

def _truncated_png() -> bytes:
    return png(3)[:-20]  # the end of the pixel data and the IEND chunk are gone


IMAGE_ERRORS = {
    "missing_labels_csv": ({"a.png": png()}, "The archive has no labels.csv"),
    "labels_csv_in_wrong_folder": ({"x/labels.csv": "filename,label\n", "y.png": png()},
                                   "found at x/labels.csv"),
    "label_column_missing": ({"a.png": png(), "labels.csv": "filename,class\na.png,cat\n"},
                             "labels.csv has no 'label' column"),
    "unknown_column": ({"a.png": png(), "b.png": png(1),
                        "labels.csv": "filename,label,notes\na.png,cat,x\nb.png,dog,y\n"},
                       "unknown column(s) 'notes'"),
    "listed_image_missing": ({"imgs/a.png": png(), "b.png": png(1),
                              "labels.csv": "filename,label\na.png,cat\nb.png,dog\nimgs/a.png,cat\nc.png,dog\n"},
                             "'a.png' (row 2) (did you mean 'imgs/a.png'?)"),
    "image_not_listed": ({"a.png": png(), "b.png": png(1), "extra.png": png(2),
                          "labels.csv": "filename,label\na.png,cat\nb.png,dog\n"},
                         "1 file(s) that labels.csv does not list: extra.png"),
    "duplicate_filename": ({"a.png": png(), "b.png": png(1),
                            "labels.csv": "filename,label\na.png,cat\nb.png,dog\na.png,dog\n"},
                           "same filename more than once: 'a.png' (rows 2, 4)"),
    "truncated_image": ({"a.png": png(), "b.png": _truncated_png(),
                         "labels.csv": "filename,label\na.png,cat\nb.png,dog\n"},
                        "b.png is damaged or truncated"),
    "image_header_cut": ({"a.png": png(), "b.png": png()[:30],
                          "labels.csv": "filename,label\na.png,cat\nb.png,dog\n"},
                         "b.png is damaged or truncated (its header cannot be read)"),
    "not_an_image": ({"a.png": png(), "b.png": b"hello, not a picture",
                      "labels.csv": "filename,label\na.png,cat\nb.png,dog\n"},
                     "b.png is not an image format that can be read"),
    "different_sizes": ({"a.png": png(size=(4, 4)), "b.png": png(size=(4, 4)), "c.png": png(size=(5, 3)),
                         "labels.csv": "filename,label\na.png,cat\nb.png,dog\nc.png,dog\n"},
                        "different sizes (4x4: 2 image(s), e.g. a.png, b.png; 5x3: 1 image(s), e.g. c.png)"),
    "unknown_label": ({**image_files(per_class=5), "odd.png": png(9), "classes.txt": "cat\nbird\n",
                       "labels.csv": image_files(per_class=5)["labels.csv"] + "odd.png,dog\n"},
                      "labels.csv row 12: 'dog' is not one of the classes in classes.txt (cat, bird)"),
    "one_class": ({"a.png": png(), "b.png": png(1), "labels.csv": "filename,label\na.png,cat\nb.png,cat\n"},
                  "fewer than 2 classes (found: cat)"),
    "one_class_listed": ({"a.png": png(), "classes.txt": "cat\n", "labels.csv": "filename,label\na.png,cat\n"},
                         "classes.txt must list at least 2 classes"),
    "empty_dataset": ({"labels.csv": "filename,label\n"}, "labels.csv has no rows: the dataset would be empty"),
    "bad_split": ({**image_files(per_class=1), "labels.csv": "filename,label,split\ncat_00.png,cat,train\n"
                   "bird_00.png,bird,validation\n"}, "row 3: 'validation'"),
    "wrong_field_count": ({"a.png": png(), "labels.csv": "filename,label\na.png,cat,extra\n"},
                          "row 2 has 3"),
    "labels_not_utf8": ({"a.png": png(), "labels.csv": "filename,label\na.png,caf\xe9\n".encode("latin-1")},
                        "labels.csv is not valid UTF-8 text (byte 0xe9 on line 2"),
    "path_traversal": ({"../evil.png": png(), **image_files()}, "'../evil.png' goes up a folder"),
    "absolute_path": ({"/etc/evil.png": png(), **image_files()}, "'/etc/evil.png' is an absolute path"),
}


@pytest.mark.parametrize("files, expected", IMAGE_ERRORS.values(), ids=IMAGE_ERRORS.keys())
def test_each_invalid_image_archive_is_refused_with_a_clear_message_and_nothing_written(files, expected, media_root):
    assert expected in image_error(files)
    assert_nothing_written(media_root)


def test_a_file_that_is_not_a_zip_is_refused(media_root):
    assert "not a readable zip archive" in image_error(b"PK\x03\x04 but not really")
    assert_nothing_written(media_root)


def test_symbolic_links_in_the_archive_are_refused(media_root):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in image_files().items():
            archive.writestr(name, content)
        link = zipfile.ZipInfo("cat_99.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")

    assert "symbolic links, which are refused: cat_99.png" in image_error(buffer.getvalue())
    assert_nothing_written(media_root)


def test_an_archive_larger_than_the_upload_limit_is_refused_before_unpacking(settings, media_root):
    settings.MAX_UPLOAD_MB = 1
    archive = make_zip({**image_files(), "noise.bin": np.random.default_rng(0).bytes(1024 * 1024 + 10)},
                       compression=zipfile.ZIP_STORED)

    assert "larger than the upload limit of 1 MB" in image_error(archive)
    assert_nothing_written(media_root)


@pytest.fixture
def no_unpacking(monkeypatch):
    """Fail the test if any entry is decompressed."""
    real_open = zipfile.ZipFile.open

    def open_for_writing_only(self, name, mode="r", *args, **kwargs):
        assert mode == "w", f"{name} was decompressed"
        return real_open(self, name, mode, *args, **kwargs)
    monkeypatch.setattr(zipfile.ZipFile, "open", open_for_writing_only)


def test_a_zip_bomb_is_refused_from_its_headers_before_anything_is_decompressed(no_unpacking, media_root):
    archive = make_zip({**image_files(), "bomb.png": bytes(4 * 1024 * 1024)})

    assert "looks like a zip bomb" in image_error(archive)
    assert_nothing_written(media_root)


def test_an_archive_declaring_too_much_unpacked_data_is_refused(settings, monkeypatch, no_unpacking, media_root):
    settings.MAX_UPLOAD_MB = 1
    monkeypatch.setattr(services.common, "MAX_COMPRESSION_RATIO", 10_000)
    archive = make_zip({**image_files(), "big.png": bytes(11 * 1024 * 1024)})

    assert "would unpack to 11.0 MB, more than the limit of 10.0 MB" in image_error(archive)
    assert_nothing_written(media_root)


def test_an_entry_whose_header_understates_its_size_is_read_only_up_to_that_size(media_root):
    archive = bytearray(make_zip(image_files(), compression=zipfile.ZIP_STORED))
    # Shrink the size that the central directory records for the first image (cat_00.png).
    central = archive.index(b"PK\x01\x02")
    (real,) = struct.unpack_from("<I", archive, central + 24)
    struct.pack_into("<I", archive, central + 24, real - 10)

    assert "cat_00.png could not be read from the archive" in image_error(bytes(archive))
    assert_nothing_written(media_root)


def test_an_archive_with_too_many_entries_is_refused(monkeypatch, no_unpacking, media_root):
    monkeypatch.setattr(services.common, "MAX_ARCHIVE_ENTRIES", 5)

    assert "The archive has 7 entries; at most 5 are allowed" in image_error(image_files())
    assert_nothing_written(media_root)


def test_an_image_with_too_many_pixels_is_refused(monkeypatch, media_root):
    monkeypatch.setattr(services.common, "MAX_IMAGE_PIXELS", 10)

    assert ("6 image(s) have more pixels than the limit of 10 per image (about 3x3): cat_00.png (4x4), cat_01.png "
            "(4x4)") in image_error(image_files())
    assert_nothing_written(media_root)


def test_pillows_decompression_bomb_check_gives_a_clear_message(monkeypatch, media_root):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 16-pixel images trip Pillow's own warning

    assert "too many pixels (Pillow's decompression-bomb check)" in image_error(image_files())
    assert_nothing_written(media_root)


def test_a_dataset_name_that_is_taken_is_refused():
    dataset_import_images(name="Pets", archive=make_zip(image_files()))

    assert "A dataset named 'Pets' already exists" in image_error(image_files())
    assert Dataset.objects.count() == 1 and Stimulus.objects.count() == 6


def test_a_failure_while_writing_rolls_back_rows_and_removes_saved_images(monkeypatch, media_root):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(Stimulus.objects, "bulk_create", fail)

    with pytest.raises(RuntimeError, match="disk full"):
        dataset_import_images(name="Pets", archive=make_zip(image_files()))
    assert_nothing_written(media_root)


# --------------------------------------------------------------------------- tabular

CSV = ("age,weight,label,split\n"
       "30,70.5,healthy,train\n"
       "41,80,sick,test\n"
       "55,65.25,healthy,train\n")


def test_tabular_csv_becomes_a_dataset_with_descriptions_in_column_order():
    descriptions = io.BytesIO(b"feature,description,unit\nweight,Body weight,kg\nage,Age at visit,years\n")
    csv_file = io.BytesIO(b"\xef\xbb\xbf" + CSV.replace("\n", "\r\n").encode())  # Excel: BOM + CRLF

    dataset = dataset_import_tabular(name="Patients", csv_file=csv_file, descriptions=descriptions,
                                     class_names=["sick", "healthy"])

    assert dataset.modality == "tabular" and dataset.input_shape == [2]
    assert dataset.feature_names == ["age", "weight"]
    assert list(dataset.feature_descriptions.items()) == [
        ("age", {"description": "Age at visit", "unit": "years"}),
        ("weight", {"description": "Body weight", "unit": "kg"})]
    assert dataset.class_names == ["sick", "healthy"]
    assert dataset.value_range == [[30.0, 55.0], [65.25, 80.0]]
    rows = [(s.source_name, s.label, s.split, stimulus_array(s).tolist()) for s in dataset.stimuli.all()]
    assert rows == [("row 2", 1, "train", [30.0, 70.5]), ("row 3", 0, "test", [41.0, 80.0]),
                    ("row 4", 1, "train", [55.0, 65.25])]
    assert all(not s.image for s in dataset.stimuli.all())


def test_tabular_without_split_column_gets_a_seeded_split_and_missing_descriptions_are_fine():
    text = "x,label\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(20))

    dataset = dataset_import_tabular(name="Toy", csv_file=text.encode(),
                                     descriptions=b"feature,description\nx,A number\n")

    assert dataset.feature_descriptions == {"x": {"description": "A number", "unit": ""}}
    assert dataset.stimuli.filter(split="test").count() == 4
    assert "seed 0" in dataset.description


TABULAR_ERRORS = {
    "missing_label_column": (CSV, {"label_column": "Label"},
                             "CSV file has no label column 'Label'. Did you mean 'label'?"),
    "no_feature_columns": ("label,split\na,train\nb,test\n", {}, "has no feature columns"),
    "non_numeric": (CSV.replace("80,", "eighty,"), {},
                    "column 'weight' must contain numbers, but has non-numeric values: row 3: 'eighty'"),
    "decimal_comma": ('age,weight,label\n30,"70,5",a\n40,71,b\n', {}, "Use a dot as the decimal separator"),
    "empty_cell": (CSV.replace("41,", ","), {}, "column 'age': missing values in row 3"),
    "nan_value": (CSV.replace("41,", "NaN,"), {}, "column 'age': missing values in row 3 ('NaN')"),
    "infinite_value": (CSV.replace("41,", "inf,"), {}, "column 'age': infinite or too large values in row 3"),
    "float32_overflow": (CSV.replace("41,", "1e39,"), {}, "infinite or too large values in row 3 ('1e39')"),
    "duplicate_columns": ("age,age,label\n1,2,a\n3,4,b\n", {}, "'age' appears 2 times (columns 1, 2)"),
    "unnamed_column": ("age,,label\n1,2,a\n3,4,b\n", {}, "column(s) 2 have no name"),
    "unknown_label": (CSV, {"class_names": ["healthy", "ill"]},
                      "CSV file row 3: 'sick' is not one of the classes in the given class names (healthy, ill)"),
    "one_class": ("x,label\n1,a\n2,a\n", {}, "fewer than 2 classes (found: a)"),
    "empty_label": ("x,label\n1,a\n2,\n3,b\n", {}, "the label is empty in row(s) 3"),
    "wrong_field_count": ("x,y,label\n1,2,a\n3,b\n4,5,b,9\n", {}, "row 3 has 2, row 4 has 4"),
    "latin1": ("x,label\n1,caf\xe9\n2,b\n".encode("latin-1"), {}, "not valid UTF-8 text (byte 0xe9 on line 2"),
    "utf16": ("x,label\n1,a\n2,b\n".encode("utf-16"), {}, "is saved as UTF-16"),
    "header_only": ("x,label\n", {}, "has a header but no data rows"),
    "empty_file": ("", {}, "is empty"),
    "bad_split": (CSV.replace("test", "holdout"), {}, "row 3: 'holdout'"),
    "unknown_described_feature": (CSV, {"descriptions": b"feature,description,unit\nwieght,Weight,kg\n"},
                                  "descriptions file row 2 describes 'wieght', which is not a feature column of "
                                  "the data. Did you mean 'weight'?"),
    "descriptions_unknown_column": (CSV, {"descriptions": b"feature,description,units\nage,Age,y\n"},
                                    "unknown column(s) 'units'"),
}


@pytest.mark.parametrize("text, kwargs, expected", TABULAR_ERRORS.values(), ids=TABULAR_ERRORS.keys())
def test_each_invalid_csv_is_refused_with_a_clear_message_and_nothing_written(text, kwargs, expected, media_root):
    assert expected in tabular_error(text, **kwargs)
    assert_nothing_written(media_root)


def test_a_csv_larger_than_the_upload_limit_is_refused(settings, media_root):
    settings.MAX_UPLOAD_MB = 1
    text = "x,label\n" + "123456.789,a\n" * 90_000

    assert "larger than the upload limit of 1 MB" in tabular_error(text)
    assert_nothing_written(media_root)


def test_all_problems_of_a_csv_are_reported_together():
    messages = tabular_error("a,b,label\n1,x,c\n,2,d\n")

    assert len(messages.splitlines()) == 2
    assert "column 'a': missing values in row 3" in messages and "column 'b' must contain numbers" in messages


# --------------------------------------------------------------------------- split_info

def split_counts(dataset: Dataset) -> dict[str, int]:
    return {"n_train": dataset.stimuli.filter(split="train").count(),
            "n_test": dataset.stimuli.filter(split="test").count()}


def test_a_split_made_at_import_is_recorded_in_split_info_with_the_facts_of_the_description():
    dataset = dataset_import_images(name="Pets", archive=make_zip(image_files(per_class=10)), description="Pets.")

    assert dataset.split_info == {"method": "seeded_stratified", "seed": 0, "test_fraction": 0.2,
                                  "n_train": 16, "n_test": 4}
    assert split_counts(dataset) == {"n_train": 16, "n_test": 4}
    assert dataset.description == ("Pets.\n\nTrain/test split made at import: 80% train / 20% test, stratified "
                                   "by class, seed 0 (16 train, 4 test).")
    dataset.refresh_from_db()
    assert dataset.split_info["method"] == "seeded_stratified"


def test_classes_too_small_to_stratify_get_a_seeded_random_split_in_split_info():
    dataset = dataset_import_tabular(name="Toy", csv_file=b"x,label\n1,a\n2,a\n3,a\n4,b\n5,a\n")

    assert dataset.split_info == {"method": "seeded_random", "seed": 0, "test_fraction": 0.2,
                                  "n_train": 4, "n_test": 1}
    assert split_counts(dataset) == {"n_train": 4, "n_test": 1}
    assert "not stratified (some classes have too few items), seed 0 (4 train, 1 test)" in dataset.description


def test_a_split_column_is_recorded_as_from_file_with_its_counts_and_no_sentence():
    images = dataset_import_images(name="Pets", archive=make_zip(image_files(split=True)), description="Pets.")
    rows = dataset_import_tabular(name="Patients", csv_file=CSV.encode())

    assert images.split_info == {"method": "from_file", **split_counts(images)} == {
        "method": "from_file", "n_train": 4, "n_test": 2}
    assert rows.split_info == {"method": "from_file", **split_counts(rows)} == {
        "method": "from_file", "n_train": 2, "n_test": 1}
    assert (images.description, rows.description) == ("Pets.", "")


# Hashes of the built-in data as imported before split_info existed: split_info is derived, so it must
# not change them (an existing import would otherwise be refused as "different content").
BUILTIN_HASHES = {
    "digits": ("f767f2b6bfd45c164695693dbcda42bf320e0878074d25e4235dce9980821b7a", 1437, 360),
    "breast_cancer": ("3d59718f83d61c7a06beb4b5385925217c66b19913b192fe9835d571c52169bb", 455, 114),
}


@pytest.mark.parametrize("which", BUILTIN_HASHES)
def test_builtin_split_is_recorded_in_split_info_without_changing_the_content_hash(which):
    content_sha256, n_train, n_test = BUILTIN_HASHES[which]

    dataset = dataset_import_builtin(which=which)

    assert dataset.split_info == {"method": "seeded_stratified", "seed": 0, "test_fraction": 0.2,
                                  "n_train": n_train, "n_test": n_test}
    assert split_counts(dataset) == {"n_train": n_train, "n_test": n_test}
    assert dataset.content_sha256 == content_sha256
    assert f"seed 0 ({n_train} train, {n_test} test)." in dataset.description


# --------------------------------------------------------------------------- built-in data and helpers

def test_builtin_digits_import_is_idempotent(media_root):
    first = dataset_import_builtin(which="digits")
    files = len(media_files(media_root))
    again = dataset_import_builtin(which="digits")

    assert again.pk == first.pk and again.updated_at == first.updated_at
    assert first.name == "Handwritten digits (scikit-learn)" and first.source == "builtin"
    assert first.input_shape == [1, 8, 8] and first.class_names == [str(d) for d in range(10)]
    assert Dataset.objects.count() == 1 and Stimulus.objects.count() == first.n_items == 1797 == files
    assert len(media_files(media_root)) == files
    sample = stimulus_array(first.stimuli.get(index=0))
    assert sample.shape == (1, 8, 8) and 0.0 <= sample.min() and sample.max() <= 1.0


def test_builtin_breast_cancer_has_readable_features_with_units_and_is_idempotent():
    first = dataset_import_builtin(which="breast_cancer")
    again = dataset_import_builtin(which="breast_cancer")

    assert again.pk == first.pk and Stimulus.objects.count() == 569
    assert first.modality == "tabular" and first.class_names == ["malignant", "benign"]
    assert first.input_shape == [len(first.feature_names)] == [6]
    assert first.feature_descriptions["Mean radius"]["unit"] == "px"
    assert len(first.value_range) == 6 and first.value_range[0][0] < first.value_range[0][1]


def test_a_builtin_name_holding_other_content_is_not_overwritten():
    Dataset.objects.create(name="Handwritten digits (scikit-learn)", modality="image", input_shape=[1, 8, 8],
                           class_names=["0", "1"], content_sha256="0" * 64)

    with pytest.raises(DatasetValidationError, match="already exists with different content"):
        dataset_import_builtin(which="digits")
    assert Stimulus.objects.count() == 0


def test_an_unknown_builtin_is_refused_with_the_choices():
    with pytest.raises(DatasetValidationError, match="choose one of: digits, breast_cancer"):
        dataset_import_builtin(which="mnist")


def test_npy_helpers_round_trip_float32_without_pickles():
    stimulus = Stimulus(data=array_to_npy_bytes(np.arange(6, dtype=np.float64).reshape(2, 3)))

    array = stimulus_array(stimulus)
    assert array.dtype == np.float32 and array.tolist() == [[0, 1, 2], [3, 4, 5]]


# --------------------------------------------------------------------------- management command

@pytest.fixture
def keep_test_connection(monkeypatch):
    """run_from_argv closes every connection when it ends, which would end the test's transaction."""
    from django.db import connections
    monkeypatch.setattr(connections, "close_all", lambda: None)


def test_import_dataset_command_imports_and_prints_a_one_line_summary(tmp_path, capsys, keep_test_connection):
    path = tmp_path / "pets.zip"
    path.write_bytes(make_zip(image_files()))

    execute_from_command_line(["manage.py", "import_dataset", "--name", "Pets", "--images", str(path)])

    out = capsys.readouterr().out.strip()
    assert out.startswith("Imported dataset 'Pets'") and "6 image items" in out and len(out.splitlines()) == 1
    assert Dataset.objects.get().n_items == 6


def test_import_dataset_command_lists_validation_errors_without_traceback_and_exits_1(
        tmp_path, capsys, media_root, keep_test_connection):
    path = tmp_path / "patients.csv"
    path.write_text("age,label\nold,a\n,b\n")

    with pytest.raises(SystemExit) as exited:
        execute_from_command_line(["manage.py", "import_dataset", "--name", "P", "--tabular", str(path)])

    err = capsys.readouterr().err
    assert exited.value.code == 1
    assert "The dataset was not imported:\n  - patients.csv, column 'age'" in err
    assert "Traceback" not in err
    assert_nothing_written(media_root)


def test_an_upload_of_the_other_kind_says_which_kind_to_choose(media_root):
    assert "choose the kind 'tabular'" in image_error(b"age,weight,label\n30,70,yes\n41,80,no\n")
    assert "choose the kind 'images'" in tabular_error(make_zip(image_files()))
    assert_nothing_written(media_root)


def test_a_label_seen_once_among_frequent_ones_is_questioned_and_listing_the_classes_confirms_it(media_root):
    rows = [f"{i},{i % 7},{'cat' if i % 2 else 'dog'}" for i in range(40)] + ["99,1,dgo"]
    text = "a,b,label\n" + "\n".join(rows) + "\n"
    message = tabular_error(text)
    assert "the label 'dgo' appears once" in message and "Did you mean 'dog'" in message
    assert_nothing_written(media_root)
    dataset = dataset_import_tabular(name="Pets", csv_file=text.encode(), class_names=["cat", "dgo", "dog"])
    assert dataset.class_names == ["cat", "dgo", "dog"]
