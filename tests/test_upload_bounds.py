"""Bounded work for every upload: each hostile file is built here, refused with a message in words, and
costs a bounded amount of memory (traced by tracemalloc in this process; generous, never timed).

tracemalloc sees Python objects and numpy arrays, not Pillow's own pixel buffers: where decoding is the
hazard, the process's peak RSS is bounded too.
"""
from __future__ import annotations

import io
import resource
import struct
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from PIL import Image

import explainers.demo_data  # noqa: F401 - loaded by the train/test split: imported here, not while measuring
from explainers.errors import ModelValidationError
from explainers.safe_loading import load_state_dict, sniff_format
from studyapp.models import Dataset, MLModel, Stimulus
from studyapp.services.datasets import (DatasetValidationError, dataset_import_images, dataset_import_tabular,
                                        stimulus_array)
from studyapp.services.datasets import common, images
from studyapp.services.errors import ServiceError
from studyapp.services.mlmodels import mlmodel_register
from tests.factories import DatasetFactory

pytestmark = pytest.mark.django_db

MB = 1024 * 1024


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def measured(call: Callable[[], object]) -> tuple[object, float]:
    """(what ``call`` returned or the exception it raised, its peak traced memory in MB)."""
    tracemalloc.start()
    try:
        try:
            outcome = call()
        except Exception as exc:  # noqa: BLE001 - the refusal is the outcome under test
            outcome = exc
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return outcome, peak / MB


def refusal(outcome: object) -> str:
    assert isinstance(outcome, DatasetValidationError), f"expected a refusal, got {outcome!r}"
    return "\n".join(outcome.messages)


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def make_zip(files: dict[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def png(size: tuple[int, int], *, mode: str = "RGB", seed: int = 0) -> bytes:
    width, height = size
    pixels = ((np.indices((height, width)).sum(axis=0) + seed) % 256).astype(np.uint8)
    image = Image.fromarray(pixels, "L").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def zip_never_opened(monkeypatch):
    """Fail if zipfile opens an archive for reading, which parses its whole directory (what a refusal
    from the end record avoids); writing archives in the test stays possible."""
    real = zipfile.ZipFile

    def writing_only(file, mode="r", *args, **kwargs):
        assert mode != "r", "zipfile.ZipFile opened an archive for reading"
        return real(file, mode, *args, **kwargs)
    monkeypatch.setattr(zipfile, "ZipFile", writing_only)


# --------------------------------------------------------------------------- messages

def test_thousands_of_unknown_labels_give_a_few_short_messages():
    n = 3000
    files: dict[str, bytes | str] = {f"i{i}.png": b"" for i in range(n)}
    files["classes.txt"] = "\n".join(f"class{i}" for i in range(n))
    files["labels.csv"] = "filename,label\n" + "".join(f"i{i}.png,bad{i}\n" for i in range(n))
    archive = make_zip(files)

    outcome, peak = measured(lambda: dataset_import_images(name="Labels", archive=archive))

    message = refusal(outcome)
    assert len(outcome.messages) == common.EXAMPLES + 1
    assert "labels.csv row 2: 'bad0' is not one of the classes in classes.txt (class0, class1" in message
    assert "(and 2,980 more)" in message  # the class list inside each message is capped at 20
    assert "labels.csv has 2,995 more labels that are not classes in classes.txt: 'bad5' (row 7)" in message
    assert len(message) < 5_000  # was one message per label, each listing every class: 325 MB for N = 6000
    assert peak < 60
    assert not Dataset.objects.exists()


def test_the_admin_page_refusing_thousands_of_unknown_labels_stays_small(admin_client):
    n = 3000
    files: dict[str, bytes | str] = {f"i{i}.png": b"" for i in range(n)}
    files["classes.txt"] = "\n".join(f"class{i}" for i in range(n))
    files["labels.csv"] = "filename,label\n" + "".join(f"i{i}.png,bad{i}\n" for i in range(n))
    upload = io.BytesIO(make_zip(files))
    upload.name = "labels.zip"

    page = admin_client.post(reverse("admin:studyapp_dataset_add"),
                             {"name": "Labels", "kind": "images", "data_file": upload}).content.decode()

    assert "labels.csv has 2,995 more labels that are not classes in classes.txt" in page
    assert len(page) < 100_000  # 325 MB for N = 6000 before the messages were capped
    assert not Dataset.objects.exists()


def test_labels_seen_once_are_questioned_a_few_at_a_time():
    n = 2000
    rows = [f"f{i}.png,{'ab'[i % 2]}" for i in range(40)] + [f"g{i}.png,odd{i}" for i in range(n)]
    files: dict[str, bytes | str] = {row.split(",")[0]: png((4, 4), mode="L") for row in rows}
    files["labels.csv"] = "filename,label\n" + "\n".join(rows) + "\n"
    archive = make_zip(files)

    outcome, peak = measured(lambda: dataset_import_images(name="Typos", archive=archive))

    message = refusal(outcome)
    assert "labels.csv row 42: the label 'odd0' appears once, while the other classes have 20 to 20 items" in message
    assert "labels.csv has 1,995 more labels that appear only once: 'odd5' (row 47)" in message
    assert len(outcome.messages) == common.EXAMPLES + 1 and len(message) < 5_000
    assert peak < 60


def test_every_refusal_is_capped_in_number_and_length_of_messages():
    error = DatasetValidationError([f"problem {i}" for i in range(1000)] + ["x" * 1_000_000])

    assert len(error.messages) == common.MAX_MESSAGES + 1
    assert error.messages[-1] == ("... and 989 more problem(s). Fix the ones above and upload again to see the rest.")
    assert len(DatasetValidationError("y" * 1_000_000).messages[0]) == common.MAX_MESSAGE_CHARS


def test_tabular_errors_name_the_uploaded_file_and_say_mb(settings):
    upload = io.BytesIO(b"age,weight,label\n30,70,a\n41,eighty,b\n")
    upload.name = "uploads/patients.csv"

    with pytest.raises(DatasetValidationError) as caught:
        dataset_import_tabular(name="Patients", csv_file=upload)
    assert caught.value.messages[0].startswith("patients.csv, column 'weight' must contain numbers")

    settings.MAX_UPLOAD_MB = 1
    big = io.BytesIO(b"x,label\n" + b"1.5,a\n" * 200_000)
    big.name = "big.csv"
    with pytest.raises(DatasetValidationError) as caught:
        dataset_import_tabular(name="Big", csv_file=big)
    assert caught.value.messages == [
        "The CSV file big.csv is larger than the upload limit of 1 MB (setting MAX_UPLOAD_MB). Make it smaller "
        "(fewer or smaller items) or ask the administrator to raise MAX_UPLOAD_MB."]


# --------------------------------------------------------------------------- tabular

def test_a_csv_with_a_million_columns_is_refused_from_its_header_before_any_row_is_parsed():
    data = b"x," * 1_000_000 + b"label\n" + (b"1," * 1_000_000 + b"a\n") * 3  # 8 MB, one value per cell

    outcome, peak = measured(lambda: dataset_import_tabular(name="Wide", csv_file=data))

    assert refusal(outcome) == (
        "CSV file has more than 10,000 feature columns; at most 10,000 are allowed (setting MAX_DATASET_FEATURES). "
        "Remove columns the model does not use, or ask the administrator to raise the limit.")
    assert peak < 20  # parsing would make a Python string of every cell: hundreds of MB


def test_the_feature_limit_is_a_setting(settings):
    settings.MAX_DATASET_FEATURES = 3
    four = "a,b,c,d,label\n" + "".join(f"{i},{i},{i},{i},{'xy'[i % 2]}\n" for i in range(10))

    assert "has 4 feature columns; at most 3 are allowed" in refusal(measured(
        lambda: dataset_import_tabular(name="Four", csv_file=four.encode()))[0])
    three = "a,b,c,label,split\n" + "".join(f"{i},{i},{i},{'xy'[i % 2]},train\n" for i in range(10))
    assert dataset_import_tabular(name="Three", csv_file=three.encode()).input_shape == [3]


def test_bad_values_in_thousands_of_columns_are_checked_together_and_reported_briefly():
    n = 10_000
    header = ",".join(f"f{i}" for i in range(n)) + ",label\n"
    data = (header + ("x," * n + "a\n") + ("," * n + "b\n") + ("1," * n + "a\n")).encode()

    outcome, peak = measured(lambda: dataset_import_tabular(name="Dirty", csv_file=data))

    message = refusal(outcome)
    assert "CSV file, column 'f0': missing values in row 3. Empty cells and NaN are not allowed" in message
    assert "CSV file, column 'f0' must contain numbers, but has non-numeric values: row 2: 'x'." in message
    assert "CSV file: 9,995 more columns have missing, infinite or non-numeric values: 'f5', 'f6'" in message
    assert len(outcome.messages) <= common.MAX_MESSAGES + 1 and len(message) < 5_000
    assert peak < 60


def test_bad_cells_found_chunk_by_chunk_are_reported_in_column_order_with_their_rows(monkeypatch):
    monkeypatch.setattr(common, "TABULAR_CHUNK_VALUES", 8)  # two rows at a time
    data = b"a,b,c,label\n1,2,x,p\n1,2,3,q\n1,2,3,p\n ?,2,y,q\n1e39,2,3,p\n"

    assert refusal(measured(lambda: dataset_import_tabular(name="Chunks", csv_file=data))[0]).split("\n") == [
        "CSV file, column 'a': missing values in row 5 ('?'). Empty cells and NaN are not allowed; fill them in or "
        "remove those rows.",
        "CSV file, column 'a': infinite or too large values in row 6 ('1e39'). Values must be finite numbers within "
        "the 32-bit float range.",
        "CSV file, column 'c' must contain numbers, but has non-numeric values: row 2: 'x', row 5: 'y'. Fix the "
        "values, or remove the column if it is not a feature."]


def test_a_row_with_a_million_fields_is_refused_before_it_is_parsed():
    data = b"x,label\n1,a\n" + b"1," * 1_000_000 + b"b\n"

    outcome, peak = measured(lambda: dataset_import_tabular(name="Long row", csv_file=data))

    assert "CSV file row 3 has more than 40,108 commas, far more fields than the 10,002 columns allowed" in refusal(
        outcome)
    assert peak < 20


def test_rows_past_the_row_or_value_limit_stop_the_import(monkeypatch):
    monkeypatch.setattr(common, "MAX_TABULAR_VALUES", 30)
    monkeypatch.setattr(common, "TABULAR_CHUNK_VALUES", 22)  # two rows at a time
    data = ("a,b,c,d,e,f,g,h,i,j,label\n" + "1,2,3,4,5,6,7,8,9,10,x\n" * 50).encode()

    assert refusal(measured(lambda: dataset_import_tabular(name="Tall", csv_file=data))[0]).startswith(
        "CSV file has more than 3 rows. With 10 feature column(s) that is the most one import takes (at most "
        "100,000 rows and 30 values, rows x features).")
    assert not Dataset.objects.exists()


def test_a_large_valid_csv_is_converted_a_chunk_at_a_time(monkeypatch):
    monkeypatch.setattr(common, "TABULAR_CHUNK_VALUES", 41_000)  # 1,000 rows at a time
    rng = np.random.default_rng(0)
    values = rng.normal(size=(5_000, 40)).astype(np.float32)
    lines = [",".join(f"f{j}" for j in range(40)) + ",label"]
    lines += [",".join(f"{v:.6g}" for v in row) + f",{'ab'[i % 2]}" for i, row in enumerate(values)]
    data = ("\n".join(lines) + "\n").encode()  # 2.3 MB

    dataset, peak = measured(lambda: dataset_import_tabular(name="Many rows", csv_file=data))

    assert isinstance(dataset, Dataset) and dataset.n_items == 5_000
    np.testing.assert_allclose(stimulus_array(dataset.stimuli.get(index=4_999)), values[4_999], rtol=1e-5)
    assert peak < 15  # every cell as a Python string at once: 22 MB


# --------------------------------------------------------------------------- images

def test_four_4096_pixel_images_are_refused_from_their_headers_without_decoding():
    buffer = io.BytesIO()
    Image.new("RGB", (4096, 4096), (200, 30, 30)).save(buffer, format="PNG")
    big = buffer.getvalue()  # a 4096x4096 RGB PNG: small compressed, 200 MB as float32
    archive = make_zip({**{f"photo{i}.png": big for i in range(4)},
                        "labels.csv": "filename,label\n" + "".join(f"photo{i}.png,{'ab'[i % 2]}\n" for i in range(4))})
    rss_before = max_rss_mb()

    outcome, peak = measured(lambda: dataset_import_images(name="Photos", archive=archive))

    assert refusal(outcome) == (
        "4 image(s) have more pixels than the limit of 1,048,576 per image (about 1024x1024): photo0.png "
        "(4096x4096), photo1.png (4096x4096), photo2.png (4096x4096), photo3.png (4096x4096). Each image is the "
        "model's input as it is and is explained pixel by pixel, so resize them to the size the model was "
        "trained on (for example 224x224).")
    assert peak < 20
    assert max_rss_mb() - rss_before < 200  # decoding them took 9 GB
    assert not Dataset.objects.exists() and not Stimulus.objects.exists()


def _image_archive(n: int, side: int) -> bytes:
    files: dict[str, bytes | str] = {f"i{i:02d}.png": png((side, side), seed=i) for i in range(n)}
    files["labels.csv"] = "filename,label\n" + "".join(f"i{i:02d}.png,{'ab'[i % 2]}\n" for i in range(n))
    return make_zip(files)


def test_images_are_held_compact_and_stored_one_at_a_time(monkeypatch):
    monkeypatch.setattr(common, "BULK_BATCH_BYTES", 1 * MB)
    n, side = 24, 256
    archive = _image_archive(n, side)
    float32_total = n * 3 * side * side * 4 / MB  # 18 MB

    dataset, peak = measured(lambda: dataset_import_images(name="Streamed", archive=archive))

    assert isinstance(dataset, Dataset) and dataset.n_items == n and dataset.input_shape == [3, side, side]
    stored = stimulus_array(dataset.stimuli.get(source_name="i05.png"))
    expected = ((np.indices((side, side)).sum(axis=0) + 5) % 256).astype(np.float32) / 255.0
    np.testing.assert_array_equal(stored, np.stack([expected] * 3))
    # Holding the float32 arrays, their stack and the .npy bytes at once needed three times this.
    assert peak < float32_total


def test_the_import_budget_refuses_before_decoding_the_image_that_exceeds_it(monkeypatch):
    side = 64
    monkeypatch.setattr(common, "MAX_DECODED_BYTES", 3 * side * side * 3 * 4)
    decoded = []
    real = images._image_to_compact
    monkeypatch.setattr(images, "_image_to_compact", lambda image: decoded.append(1) or real(image))

    outcome, peak = measured(lambda: dataset_import_images(name="Budget", archive=_image_archive(6, side)))

    assert refusal(outcome) == (
        "The images would take more than 0.1 MB once decoded as the model's float32 input (the limit for one "
        "dataset; it is reached at image 4 of 6). Use fewer or smaller images.")
    assert len(decoded) == 3
    assert peak < 20


def _fake_zip_end(*, entries: int) -> bytes:
    """A zip whose zip64 end records claim ``entries`` entries (the 16-bit end record says 0xFFFF)."""
    real = make_zip({"labels.csv": "filename,label\n"})
    directory_start = real.index(b"PK\x01\x02")
    end = real.index(b"PK\x05\x06")
    directory = real[directory_start:end]
    zip64_end = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, len(directory),
                            directory_start)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return real[:end] + zip64_end + locator + eocd


def test_a_zip_claiming_a_million_entries_is_refused_from_its_end_record(zip_never_opened):
    archive = _fake_zip_end(entries=1_000_000)

    outcome, peak = measured(lambda: dataset_import_images(name="Entries", archive=archive))

    assert refusal(outcome) == "The archive has 1,000,000 entries; at most 100,000 are allowed. Use fewer items."
    assert peak < 5


def test_a_directory_holding_more_entries_than_its_end_record_declares_is_refused_too(zip_never_opened):
    real = make_zip({"e": b""})
    start, end = real.index(b"PK\x01\x02"), real.index(b"PK\x05\x06")
    directory = real[start:end] * 150_000  # 7 MB of directory records for one stored file
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(directory), start, 0)  # "1 entry"
    archive = real[:start] + directory + eocd

    outcome, peak = measured(lambda: dataset_import_images(name="Entries", archive=archive))

    assert refusal(outcome) == "The archive has 150,000 entries; at most 100,000 are allowed. Use fewer items."
    assert peak < 5  # parsing the directory: 150,000 ZipInfo objects


def test_labels_csv_with_more_rows_than_an_archive_may_hold_is_refused_before_parsing(monkeypatch):
    monkeypatch.setattr(common, "MAX_ARCHIVE_ENTRIES", 10)
    archive = make_zip({"a.png": png((4, 4)), "labels.csv": "filename,label\n" + "a.png,x\n" * 500})

    assert refusal(measured(lambda: dataset_import_images(name="Rows", archive=archive))[0]) == (
        "labels.csv has 501 lines, but an archive holds at most 10 images (one row each). Use fewer items.")


# --------------------------------------------------------------------------- model weights

def _safetensors_with_header(header: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header


def test_a_safetensors_header_nested_200000_deep_is_refused_in_words():
    weights = _safetensors_with_header(b'{"a":' + b"[" * 200_000)

    outcome, peak = measured(lambda: load_state_dict(weights))

    assert isinstance(outcome, ModelValidationError)
    assert str(outcome).startswith(
        "The safetensors header (the list of tensors at the start of the file) nests brackets more than 8 levels "
        "deep; a real one is 3 levels deep (tensor name, its description, its shape). The file is damaged or "
        "crafted, so it was not read.")
    assert peak < 5


def test_registering_deeply_nested_weights_gives_a_sentence_not_a_traceback(tmp_path):
    dataset = DatasetFactory(name="cells")
    weights = _safetensors_with_header(b'{"a":' + b"[" * 200_000)

    with pytest.raises(ServiceError, match="nests brackets more than 8 levels deep"):
        mlmodel_register(name="deep", architecture="tabular_mlp", weights=weights, dataset=dataset)
    path = tmp_path / "deep.safetensors"
    path.write_bytes(weights)
    with pytest.raises(CommandError, match="The model was not registered:\n  - The safetensors header"):
        call_command("register_model", "--name", "deep", "--architecture", "tabular_mlp", "--weights", str(path),
                     "--dataset", "cells")
    assert not MLModel.objects.exists()


def test_a_safetensors_header_of_megabytes_is_refused_with_its_size_in_mb():
    header = b'{"__metadata__":{"notes":"' + b"a" * (2 * MB) + b'"}}'

    outcome, peak = measured(lambda: load_state_dict(_safetensors_with_header(header)))

    assert isinstance(outcome, ModelValidationError)
    assert str(outcome).startswith("The safetensors header (the list of tensors at the start of the file) is 2.0 MB; "
                                   "a model of the built-in architectures needs a few KB, and at most 1 MB is read.")
    assert peak < 10  # the 2 MB header is never parsed


def test_a_weights_zip_with_too_many_members_is_called_a_zip_without_opening_it(zip_never_opened):
    weights = b"PK\x03\x04" + b"PK\x01\x02" * 20_000

    assert sniff_format(weights) == "zip"
    with pytest.raises(ModelValidationError, match="This file is a zip archive, not a safetensors file"):
        load_state_dict(weights)


# ---------------------------------------------------------------- JSON nested too deeply


@pytest.mark.django_db
def test_a_participant_api_body_nested_a_thousand_deep_is_refused_in_words_not_a_500(client, prepare):
    from tests.participation_helpers import api, live_tabular, post

    study = live_tabular(prepare)
    client.get(f"/s/{study.public_id}/")
    reply = client.post(api(study, "consent"), data="[" * 5000 + "]" * 5000, content_type="application/json",
                        HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value)
    assert reply.status_code == 422 and "nested too deeply" in reply.json()["detail"]
    assert post(client, api(study, "consent"), {"agree": True}).status_code == 201  # the session goes on


@pytest.mark.django_db
def test_a_deviation_value_nested_a_thousand_deep_is_a_form_error():
    from studyapp.admin.forms import DeviationForm

    form = DeviationForm(data={"value": "[" * 5000 + "]" * 5000}, hypothesis_labels=[])
    assert not form.is_valid() and "nested too deeply" in str(form.errors)
