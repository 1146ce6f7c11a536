"""Importing datasets: a zip of images, a CSV of numeric features, or built-in demo data.

Everything uploaded is untrusted. An import first reads and validates the whole upload in
memory (never extracting anything to disk) and only then writes, in one transaction, so a
rejected upload leaves no Dataset, no Stimulus and no file behind. Validation problems are
collected and raised together as :class:`DatasetValidationError`, each message saying what is
wrong, where, and what to do.

Conventions a consumer needs:

- Row numbers in messages are spreadsheet row numbers: the header is row 1, data starts at row 2.
- ``Stimulus.data`` is a float32 ``.npy`` blob (read it with :func:`stimulus_array`): images are
  (C, H, W) in [0, 1], C = 1 when every image is grayscale, otherwise 3 (RGB); tabular rows are
  (F,) in the units of the CSV.
- ``Dataset.value_range``: images ``[0.0, 1.0]``; tabular ``[[min, max], ...]``, one pair per
  feature in ``feature_names`` order (features have different units, so one overall range would
  make SmoothGrad noise far too large for some features and invisible for others).
- Class-index order: ``classes.txt`` / ``class_names`` when given, else the sorted distinct labels
  (numerically when every label is an integer, so "2" comes before "10").
- Without a ``split`` column, items get a seeded, class-stratified 80/20 train/test split; the
  seed and fraction are written into the dataset's description (Dataset has no field for them).
"""
from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import re
import stat
import warnings
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO

import numpy as np
import pandas as pd
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from PIL import Image, ImageOps, UnidentifiedImageError

from studyapp.models import Dataset, Stimulus
from studyapp.models.base import Modality
from studyapp.services.errors import ServiceError

__all__ = [
    "BUILTIN_DATASETS",
    "DatasetValidationError",
    "array_to_npy_bytes",
    "dataset_import_builtin",
    "dataset_import_images",
    "dataset_import_tabular",
    "stimulus_array",
]

# Limits on untrusted archives (module constants so deployments and tests can adjust them).
MAX_ARCHIVE_ENTRIES = 100_000
MAX_ENTRY_BYTES = 64 * 1024 * 1024          # one file inside the zip, uncompressed
MAX_UNCOMPRESSED_FACTOR = 10                 # all files together: factor x MAX_UPLOAD_MB
MAX_COMPRESSION_RATIO = 100                  # zip bombs reach ratios of 1000+; images ~1, CSV ~10
RATIO_CHECK_MIN_BYTES = 1024 * 1024          # tiny entries may legitimately compress very well
MAX_IMAGE_PIXELS = 4096 * 4096               # per image; far below Pillow's own bomb limit
MAX_DECODED_BYTES = 2 * 1024 ** 3            # float32 arrays of all images together
SPLIT_SEED = 0
TEST_FRACTION = 0.2
BULK_BATCH = 500
EXAMPLES = 5                                 # how many offending items a message lists

_JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
_IMAGE_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")
_MISSING_MARKERS = {"nan", "-nan", "+nan", "na", "n/a", "null", "none", "-", "?"}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class DatasetValidationError(ServiceError):
    """An upload that cannot become a dataset; ``messages`` lists every problem found."""

    def __init__(self, messages: str | Iterable[str]) -> None:
        super().__init__([messages] if isinstance(messages, str) else list(messages))


# --------------------------------------------------------------------------- array helpers

def array_to_npy_bytes(arr: np.ndarray) -> bytes:
    """A float32 ``.npy`` blob (the storage format of model inputs), never pickled."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def stimulus_array(stimulus: Stimulus) -> np.ndarray:
    """The model input of a stimulus, decoded from its ``.npy`` blob (pickles refused)."""
    return np.load(io.BytesIO(bytes(stimulus.data)), allow_pickle=False)


# --------------------------------------------------------------------------- small helpers

def _examples(items: list, limit: int = EXAMPLES) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / (1024 * 1024):.1f} MB"


def _read_upload(source: bytes | IO[bytes], *, what: str) -> bytes:
    """All bytes of an upload, reading at most MAX_UPLOAD_MB (+1 byte to detect excess)."""
    limit = settings.MAX_UPLOAD_MB * 1024 * 1024
    too_large = (f"The {what} is larger than the upload limit of {settings.MAX_UPLOAD_MB} MB "
                 f"(setting MAX_UPLOAD_MB). Make it smaller (fewer or smaller items) or ask the "
                 f"administrator to raise MAX_UPLOAD_MB.")
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        size = getattr(source, "size", None)
        if isinstance(size, int) and size > limit:
            raise DatasetValidationError(too_large)
        if hasattr(source, "seek"):
            try:
                source.seek(0)
            except (OSError, ValueError):
                pass  # a stream that cannot seek: read from where it is
        data = source.read(limit + 1)
        if isinstance(data, str):
            raise TypeError(f"The {what} was opened in text mode; open it in binary mode ('rb').")
    if len(data) > limit:
        raise DatasetValidationError(too_large)
    return data


def _display_name(source: object, *, default: str) -> str:
    """The uploaded file's own name (without folders) for messages, when it has one."""
    name = getattr(source, "name", None)
    if not isinstance(name, str) or not name.strip():
        return default
    return PurePosixPath(name.replace("\\", "/")).name


def _decode_text(data: bytes, *, filename: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DatasetValidationError(
            f"{filename} is saved as UTF-16. Save it as UTF-8 instead (in Excel: File > Save As > "
            f"'CSV UTF-8 (Comma delimited)').")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DatasetValidationError(
            f"{filename} is not valid UTF-8 text (byte 0x{data[exc.start]:02x} on line {line} cannot be "
            f"decoded; it was probably saved as Latin-1/Windows-1252). Save it as UTF-8 (in Excel: File > "
            f"Save As > 'CSV UTF-8 (Comma delimited)'); UTF-8 with a byte-order mark is fine too.") from None


@dataclass
class _Table:
    header: list[str]
    rows: list[list[str]]
    row_numbers: list[int]       # spreadsheet row of each data row (header = row 1)


def _read_csv(data: bytes, *, filename: str) -> _Table:
    """Parse CSV text strictly: every row must have as many fields as the header."""
    text = _decode_text(data, filename=filename)
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[list[str]] = []
    numbers: list[int] = []
    try:
        for fields in reader:
            if not fields or all(not f.strip() for f in fields):
                continue  # blank lines (often a trailing one) carry nothing
            if header is None:
                header = [f.strip() for f in fields]
            else:
                rows.append(fields)
                numbers.append(reader.line_num)
    except csv.Error as exc:
        raise DatasetValidationError(
            f"{filename} row {reader.line_num} cannot be read as CSV ({exc}). Check for an unclosed "
            f"quote (\") or a very long value.") from None
    if header is None:
        raise DatasetValidationError(f"{filename} is empty: it needs a header row and one row per item.")
    bad = [(n, len(r)) for n, r in zip(numbers, rows) if len(r) != len(header)]
    if bad:
        listed = _examples([f"row {n} has {k}" for n, k in bad])
        raise DatasetValidationError(
            f"{filename}: the header has {len(header)} columns but {len(bad)} row(s) have a different "
            f"number of fields: {listed}. Check for a missing or stray comma, or a comma inside a value "
            f"that should be quoted.")
    return _Table(header=header, rows=rows, row_numbers=numbers)


def _check_header(header: list[str], *, filename: str) -> list[str]:
    problems = []
    unnamed = [str(i + 1) for i, h in enumerate(header) if not h]
    if unnamed:
        problems.append(f"{filename}: column(s) {', '.join(unnamed)} have no name in the header row. "
                        f"Name every column or delete the empty ones.")
    counts = Counter(h for h in header if h)
    for name, count in counts.items():
        if count > 1:
            positions = [str(i + 1) for i, h in enumerate(header) if h == name]
            problems.append(f"{filename}: the column name '{name}' appears {count} times (columns "
                            f"{', '.join(positions)}). Column names must be unique; rename or remove the "
                            f"duplicates.")
    return problems


def _did_you_mean(wanted: str, options: Iterable[str]) -> str:
    options = list(options)
    close = [o for o in options if o.lower() == wanted.lower()]
    close += [o for o in difflib.get_close_matches(wanted, options, n=3, cutoff=0.6) if o not in close]
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _sorted_labels(labels: Iterable[str]) -> list[str]:
    distinct = set(labels)
    if all(re.fullmatch(r"[+-]?\d+", s) for s in distinct):
        return sorted(distinct, key=lambda s: (int(s), s))
    return sorted(distinct)


def _check_class_list(names: list[str], *, source: str) -> list[str]:
    problems = []
    if any(not n for n in names):
        problems.append(f"{source} contains an empty class name; remove it.")
    duplicates = sorted(n for n, c in Counter(names).items() if c > 1 and n)
    if duplicates:
        problems.append(f"{source} lists these classes more than once: {_examples(duplicates)}. "
                        f"Each class must appear exactly once.")
    if len(set(names)) < 2:
        problems.append(f"{source} must list at least 2 classes (found {len(set(names))}).")
    return problems


def _labels_to_indices(labels: list[str], row_numbers: list[int], *, class_names: list[str] | None,
                       filename: str, class_source: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(class_names, label indices, problems) for string labels as read from a file."""
    problems = []
    empty = [n for n, lab in zip(row_numbers, labels) if not lab]
    if empty:
        problems.append(f"{filename}: the label is empty in row(s) {_examples(empty)}. Every item needs a label.")
    present = [lab for lab in labels if lab]
    if class_names is None:
        class_names = _sorted_labels(present)
        if len(class_names) < 2:
            problems.append(f"{filename} has fewer than 2 classes (found: {', '.join(class_names) or 'none'}). "
                            f"A classification dataset needs items of at least 2 classes.")
    else:
        rows_by_unknown: dict[str, list[int]] = defaultdict(list)
        for n, lab in zip(row_numbers, labels):
            if lab and lab not in class_names:
                rows_by_unknown[lab].append(n)
        for lab, rows in rows_by_unknown.items():
            more = f" (and {len(rows) - 1} more row(s))" if len(rows) > 1 else ""
            problems.append(f"{filename} row {rows[0]}{more}: '{lab}' is not one of the classes in "
                            f"{class_source} ({', '.join(class_names)}). Fix the label or add the class to "
                            f"{class_source}.")
        if not rows_by_unknown and not empty and len(set(present)) < 2:
            problems.append(f"{filename} has items of fewer than 2 classes (only: {', '.join(set(present))}). "
                            f"A classification dataset needs items of at least 2 classes.")
    lookup = {name: i for i, name in enumerate(class_names)}
    indices = np.array([lookup.get(lab, -1) for lab in labels], dtype=np.int64)
    return class_names, indices, problems


def _parse_splits(values: list[str], row_numbers: list[int], *, filename: str) -> tuple[list[str], list[str]]:
    splits = [v.strip().lower() for v in values]
    bad = [f"row {n}: '{v}'" for n, v, s in zip(row_numbers, values, splits) if s not in ("train", "test")]
    if bad:
        return splits, [f"{filename}: the split column must say 'train' or 'test' in every row; "
                        f"found {_examples(bad)}. Fix these values or delete the split column to let the "
                        f"import make a seeded 80/20 split."]
    return splits, []


def _assign_splits(labels: np.ndarray) -> tuple[list[str], str]:
    """Seeded 80/20 split, stratified by class when every class has enough items."""
    from explainers.demo_data import train_test_split_indices

    n = len(labels)
    try:
        _, test = train_test_split_indices(n, test_fraction=TEST_FRACTION, seed=SPLIT_SEED, stratify=labels)
        how = "stratified by class"
    except ValueError:  # a class with a single item, or fewer test slots than classes
        _, test = train_test_split_indices(n, test_fraction=TEST_FRACTION, seed=SPLIT_SEED, stratify=None)
        how = "not stratified (some classes have too few items)"
    splits = [Stimulus.Split.TRAIN.value] * n
    for i in test:
        splits[int(i)] = Stimulus.Split.TEST.value
    note = (f"Train/test split made at import: {1 - TEST_FRACTION:.0%} train / {TEST_FRACTION:.0%} test, "
            f"{how}, seed {SPLIT_SEED} ({n - len(test)} train, {len(test)} test).")
    return splits, note


def _join_description(description: str, note: str) -> str:
    return f"{description.strip()}\n\n{note}" if description.strip() else note


def _check_name(name: str) -> str:
    name = (name or "").strip()
    max_length = Dataset._meta.get_field("name").max_length
    if not name:
        raise DatasetValidationError("Give the dataset a name.")
    if len(name) > max_length:
        raise DatasetValidationError(f"The dataset name is {len(name)} characters long; use at most {max_length}.")
    if Dataset.objects.filter(name=name).exists():
        raise DatasetValidationError(f"A dataset named '{name}' already exists; choose another name.")
    return name


# --------------------------------------------------------------------------- writing

@dataclass
class _Prepared:
    """A fully validated dataset, held in memory until it is written."""

    name: str
    modality: str
    source: str
    description: str
    class_names: list[str]
    arrays: np.ndarray                    # (N, *input_shape) float32
    labels: np.ndarray                    # (N,) int64
    splits: list[str]
    source_names: list[str]
    content_sha256: str
    value_range: list = field(default_factory=list)
    feature_names: list[str] = field(default_factory=list)
    feature_descriptions: dict = field(default_factory=dict)


def _png_bytes(array: np.ndarray) -> bytes:
    pixels = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if pixels.shape[0] == 1:
        image = Image.fromarray(pixels[0], "L")
    else:
        image = Image.fromarray(pixels.transpose(1, 2, 0), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # no text chunks: nothing of the original file travels along
    return buffer.getvalue()


def _store(prepared: _Prepared) -> Dataset:
    """Write the dataset and its stimuli in one transaction; remove saved files if it fails."""
    image_field = Stimulus._meta.get_field("image")
    storage = image_field.storage
    saved: list[str] = []
    is_image = prepared.modality == Modality.IMAGE
    try:
        with transaction.atomic():
            dataset = Dataset.objects.create(
                name=prepared.name, modality=prepared.modality, source=prepared.source,
                description=prepared.description, input_shape=[int(s) for s in prepared.arrays.shape[1:]],
                class_names=prepared.class_names, feature_names=prepared.feature_names,
                feature_descriptions=prepared.feature_descriptions, content_sha256=prepared.content_sha256,
                n_items=len(prepared.arrays), value_range=prepared.value_range)
            batch: list[Stimulus] = []
            for i, array in enumerate(prepared.arrays):
                image_name = ""
                if is_image:
                    # The opaque upload_to gives a random name: never the label or the original name.
                    target = image_field.generate_filename(None, "stimulus.png")
                    image_name = storage.save(target, ContentFile(_png_bytes(array)))
                    saved.append(image_name)
                batch.append(Stimulus(dataset=dataset, index=i, source_name=prepared.source_names[i][:255],
                                      label=int(prepared.labels[i]), split=prepared.splits[i],
                                      data=array_to_npy_bytes(array), image=image_name))
                if len(batch) >= BULK_BATCH:
                    Stimulus.objects.bulk_create(batch)
                    batch = []
            Stimulus.objects.bulk_create(batch)
    except BaseException as exc:
        # The rolled-back rows no longer point at these files: delete them so nothing stray remains.
        for name in saved:
            storage.delete(name)
        if isinstance(exc, IntegrityError) and Dataset.objects.filter(name=prepared.name).exists():
            raise DatasetValidationError(
                f"A dataset named '{prepared.name}' already exists; choose another name.") from None
        raise
    return dataset


# --------------------------------------------------------------------------- images

def _is_junk(name: str) -> bool:
    parts = name.split("/")
    base = parts[-1].lower()
    return parts[0] == "__MACOSX" or base in _JUNK_NAMES or base.startswith("._")


def _unsafe_reason(name: str) -> str | None:
    if "\x00" in name:
        return "contains a NUL character"
    if "\\" in name:
        return "uses backslashes (\\) in its path"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "goes up a folder ('..')"
    return None


def _archive_entries(data: bytes) -> tuple[zipfile.ZipFile, dict[str, zipfile.ZipInfo]]:
    """Open the zip and vet every entry from its headers alone, before anything is decompressed."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise DatasetValidationError(
            f"The upload is not a readable zip archive ({exc}). Create it with your system's "
            f"'Compress' command or the zip tool and upload the .zip file.") from None
    if len(infos) > MAX_ARCHIVE_ENTRIES:
        raise DatasetValidationError(
            f"The archive has {len(infos):,} entries; at most {MAX_ARCHIVE_ENTRIES:,} are allowed. "
            f"Use fewer items.")
    unsafe, links, encrypted, huge, bombs = [], [], [], [], []
    entries: dict[str, zipfile.ZipInfo] = {}
    duplicates: list[str] = []
    total = 0
    for info in infos:
        name = info.filename
        if stat.S_ISLNK(info.external_attr >> 16):
            links.append(name)
            continue
        reason = _unsafe_reason(name)
        if reason:
            unsafe.append(f"'{name}' {reason}")
            continue
        if info.is_dir() or _is_junk(name):
            continue
        total += info.file_size
        if info.flag_bits & 0x1:
            encrypted.append(name)
        elif info.file_size > MAX_ENTRY_BYTES:
            huge.append(f"{name} ({_mb(info.file_size)})")
        elif (info.file_size > RATIO_CHECK_MIN_BYTES
              and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1)):
            bombs.append(f"{name} ({_mb(info.compress_size)} -> {_mb(info.file_size)})")
        if name in entries:
            duplicates.append(name)
        entries[name] = info
    problems = []
    if links:
        problems.append(f"The archive contains symbolic links, which are refused: {_examples(links)}. "
                        f"Put the image files themselves in the archive.")
    if unsafe:
        problems.append(f"The archive contains entries with unsafe paths, which are refused: {_examples(unsafe)}. "
                        f"Re-create the archive from inside the folder that holds labels.csv and the images.")
    if encrypted:
        problems.append(f"The archive contains password-protected entries: {_examples(encrypted)}. "
                        f"Upload an archive without a password.")
    if huge:
        problems.append(f"These archive entries are larger than {_mb(MAX_ENTRY_BYTES)} each when unpacked: "
                        f"{_examples(huge)}. Use smaller files.")
    if bombs:
        problems.append(f"These archive entries unpack to more than {MAX_COMPRESSION_RATIO} times their "
                        f"compressed size, which looks like a zip bomb, so the archive was not unpacked: "
                        f"{_examples(bombs)}.")
    limit = MAX_UNCOMPRESSED_FACTOR * settings.MAX_UPLOAD_MB * 1024 * 1024
    if total > limit:
        problems.append(f"The archive would unpack to {_mb(total)}, more than the limit of {_mb(limit)} "
                        f"({MAX_UNCOMPRESSED_FACTOR} x MAX_UPLOAD_MB), so it was not unpacked. Use fewer or "
                        f"smaller images.")
    if duplicates:
        problems.append(f"The archive contains the same path more than once: {_examples(sorted(set(duplicates)))}. "
                        f"Re-create the archive so each file appears once.")
    if problems:
        raise DatasetValidationError(problems)
    return archive, entries


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """Entry bytes, never more than its declared size (+1 byte, to notice a lying header)."""
    try:
        with archive.open(info) as handle:
            data = handle.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        raise DatasetValidationError(
            f"{info.filename} could not be read from the archive ({exc}): the archive is damaged. "
            f"Re-create it and upload it again.") from None
    if len(data) != info.file_size:
        raise DatasetValidationError(
            f"{info.filename} does not match the size recorded in the archive: the archive is damaged. "
            f"Re-create it and upload it again.")
    return data


def _strip_top_folder(entries: dict[str, zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
    """A zip made by compressing a folder has everything under one top-level folder: drop it."""
    tops = {name.split("/", 1)[0] if "/" in name else None for name in entries}
    if len(tops) == 1 and None not in tops:
        prefix = f"{tops.pop()}/"
        return {name[len(prefix):]: info for name, info in entries.items()}
    return entries


def _find_meta(entries: dict[str, zipfile.ZipInfo], filename: str) -> str | None:
    return next((name for name in entries if name.lower() == filename), None)


@dataclass
class _LabelRows:
    filenames: list[str]
    labels: list[str]
    splits: list[str] | None
    row_numbers: list[int]


def _parse_labels_csv(data: bytes) -> _LabelRows:
    table = _read_csv(data, filename="labels.csv")
    header = [h.lower() for h in table.header]
    problems = _check_header(header, filename="labels.csv")
    if problems:
        raise DatasetValidationError(problems)
    missing = [c for c in ("filename", "label") if c not in header]
    if missing:
        problems.append(f"labels.csv has no {' or '.join(repr(m) for m in missing)} column (found: "
                        f"{', '.join(table.header)}). The first row must be the header filename,label "
                        f"(optionally ,split).")
    unknown = [h for h in table.header if h.lower() not in ("filename", "label", "split")]
    if unknown:
        problems.append(f"labels.csv has unknown column(s) {', '.join(repr(u) for u in unknown)}. It may only "
                        f"have the columns filename, label and (optionally) split; remove the others.")
    if problems:
        raise DatasetValidationError(problems)
    col = {h: header.index(h) for h in header}
    return _LabelRows(
        filenames=[PurePosixPath(r[col["filename"]].strip().replace("\\", "/")).as_posix() for r in table.rows],
        labels=[r[col["label"]].strip() for r in table.rows],
        splits=[r[col["split"]] for r in table.rows] if "split" in col else None,
        row_numbers=table.row_numbers)


def _parse_classes_txt(data: bytes) -> list[str]:
    names = [line.strip() for line in _decode_text(data, filename="classes.txt").splitlines()]
    names = [n for n in names if n]
    problems = _check_class_list(names, source="classes.txt")
    if problems:
        raise DatasetValidationError(problems)
    return names


def _check_listing(rows: _LabelRows, images: dict[str, zipfile.ZipInfo]) -> list[str]:
    problems = []
    rows_by_name: dict[str, list[int]] = defaultdict(list)
    for n, name in zip(rows.row_numbers, rows.filenames):
        rows_by_name[name].append(n)
    repeated = [f"'{name}' (rows {', '.join(map(str, ns))})" for name, ns in rows_by_name.items() if len(ns) > 1]
    if repeated:
        problems.append(f"labels.csv lists the same filename more than once: {_examples(repeated)}. "
                        f"Each image must have exactly one row.")
    blank = [n for n, name in zip(rows.row_numbers, rows.filenames) if name in ("", ".")]
    if blank:
        problems.append(f"labels.csv: the filename is empty in row(s) {_examples(blank)}.")
    by_base: dict[str, list[str]] = defaultdict(list)
    for path in images:
        by_base[PurePosixPath(path).name.lower()].append(path)
    missing = []
    for name, ns in rows_by_name.items():
        if name in images or name in ("", "."):
            continue
        guess = by_base.get(PurePosixPath(name).name.lower(), [])
        hint = f" (did you mean '{guess[0]}'?)" if len(guess) == 1 else ""
        missing.append(f"'{name}' (row {ns[0]}){hint}")
    if missing:
        problems.append(f"labels.csv lists {len(missing)} image(s) that are not in the archive: "
                        f"{_examples(missing)}. Filenames are paths relative to the folder holding "
                        f"labels.csv; add the images or remove their rows.")
    unlisted = sorted(set(images) - set(rows_by_name))
    if unlisted:
        problems.append(f"The archive contains {len(unlisted)} file(s) that labels.csv does not list: "
                        f"{_examples(unlisted)}. Add a row for each image or remove the files.")
    return problems


class _ImageProblem(Exception):
    pass


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Transparent pixels shown over white, as an image viewer or a web page would."""
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")


def _image_to_array(image: Image.Image) -> np.ndarray:
    """(1, H, W) for grayscale images or (3, H, W) for colour ones, float32 in [0, 1]."""
    mode = image.mode
    if mode == "F":
        raise _ImageProblem("is a floating-point image, which is not supported; save it as an 8- or 16-bit PNG")
    if mode.startswith("I;16"):
        return (np.asarray(image, dtype=np.float32) / 65535.0)[None]
    if mode == "I":  # how Pillow opens many 16-bit grayscale PNGs
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 65535:
            raise _ImageProblem("is a 32-bit integer image, which is not supported; save it as an 8- or 16-bit PNG")
        return (values.astype(np.float32) / 65535.0)[None]
    if mode in ("1", "L"):
        return (np.asarray(image.convert("L"), dtype=np.float32) / 255.0)[None]
    if mode in ("LA", "La"):
        return (np.asarray(_flatten_alpha(image).convert("L"), dtype=np.float32) / 255.0)[None]
    has_alpha = "A" in mode or "transparency" in image.info
    rgb = _flatten_alpha(image) if has_alpha else image.convert("RGB")
    values = np.asarray(rgb, dtype=np.float32) / 255.0
    if mode in ("P", "PA") and (values[..., 0] == values[..., 1]).all() and (values[..., 1] == values[..., 2]).all():
        return values[None, :, :, 0]  # a palette of grays is a grayscale image
    return values.transpose(2, 0, 1)


def _decode_image(data: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        # Pillow's decompression-bomb warning becomes an error: a backstop behind MAX_IMAGE_PIXELS.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise _ImageProblem(f"is {width}x{height} pixels, more than the limit of {MAX_IMAGE_PIXELS:,} "
                                        f"pixels per image; resize it")
                image.verify()
            with Image.open(io.BytesIO(data)) as image:
                if getattr(image, "n_frames", 1) > 1:
                    raise _ImageProblem(f"has {image.n_frames} frames (animation or multi-page file); "
                                        f"save a single frame")
                image.load()
                image = ImageOps.exif_transpose(image)  # the orientation a viewer shows
                return _image_to_array(image)
        except _ImageProblem:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _ImageProblem("has too many pixels (Pillow's decompression-bomb check); resize it") from None
        except UnidentifiedImageError:
            if data.startswith(_IMAGE_SIGNATURES):
                raise _ImageProblem("is damaged or truncated (its header cannot be read)") from None
            raise _ImageProblem("is not an image format that can be read (use PNG, JPEG, BMP, GIF, TIFF "
                                "or WebP)") from None
        except Exception as exc:  # crafted or damaged files fail in many ways inside decoders
            raise _ImageProblem(f"is damaged or truncated ({type(exc).__name__}: {exc})") from None


def _decode_all(archive: zipfile.ZipFile, images: dict[str, zipfile.ZipInfo],
                filenames: list[str]) -> np.ndarray:
    arrays: list[np.ndarray] = []
    bad: list[str] = []
    sizes: dict[tuple[int, int], list[str]] = defaultdict(list)
    decoded = 0
    for name in filenames:
        try:
            array = _decode_image(_read_entry(archive, images[name]))
        except _ImageProblem as exc:
            bad.append(f"{name} {exc}")
            continue
        decoded += array.size * 4 * (3 if array.shape[0] == 1 else 1)  # worst case: expanded to RGB
        if decoded > MAX_DECODED_BYTES:
            raise DatasetValidationError(
                f"The images would need more than {_mb(MAX_DECODED_BYTES)} of memory once decoded. Use fewer "
                f"or smaller images.")
        sizes[(array.shape[2], array.shape[1])].append(name)
        arrays.append(array)
    problems = []
    if bad:
        problems.append(f"{len(bad)} image(s) could not be used: {'; '.join(bad[:EXAMPLES])}"
                        f"{f' (and {len(bad) - EXAMPLES} more)' if len(bad) > EXAMPLES else ''}.")
    if len(sizes) > 1:
        described = "; ".join(f"{w}x{h}: {len(names)} image(s), e.g. {_examples(names, 3)}"
                              for (w, h), names in sorted(sizes.items(), key=lambda kv: -len(kv[1])))
        problems.append(f"The images have different sizes ({described}). Resize them all to the same "
                        f"width and height.")
    if problems:
        raise DatasetValidationError(problems)
    if any(a.shape[0] == 3 for a in arrays):
        # Mixed grayscale and colour: store everything as RGB so every item has the same shape.
        arrays = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in arrays]
    return np.stack(arrays).astype(np.float32, copy=False)


def dataset_import_images(*, name: str, archive: bytes | IO[bytes], description: str = "") -> Dataset:
    """Import a zip of images with labels.csv (filename,label[,split]) and optional classes.txt."""
    name = _check_name(name)
    data = _read_upload(archive, what="archive")
    zip_file, entries = _archive_entries(data)
    entries = _strip_top_folder(entries)
    labels_name = _find_meta(entries, "labels.csv")
    if labels_name is None:
        deeper = [n for n in entries if PurePosixPath(n).name.lower() == "labels.csv"]
        where = (f" It was found at {_examples(deeper, 2)}, but it must be at the top of the archive (or inside "
                 f"a single top-level folder)." if deeper else "")
        raise DatasetValidationError(
            f"The archive has no labels.csv.{where} Add a file labels.csv with the header filename,label and "
            f"one row per image (optionally a split column with train/test).")
    rows = _parse_labels_csv(_read_entry(zip_file, entries.pop(labels_name)))
    classes_name = _find_meta(entries, "classes.txt")
    given_classes = _parse_classes_txt(_read_entry(zip_file, entries.pop(classes_name))) if classes_name else None
    if not rows.filenames:
        raise DatasetValidationError("labels.csv has no rows: the dataset would be empty. Add one row per image.")
    problems = _check_listing(rows, entries)
    class_names, labels, label_problems = _labels_to_indices(
        rows.labels, rows.row_numbers, class_names=given_classes, filename="labels.csv",
        class_source="classes.txt")
    problems += label_problems
    splits = None
    if rows.splits is not None:
        splits, split_problems = _parse_splits(rows.splits, rows.row_numbers, filename="labels.csv")
        problems += split_problems
    if problems:
        raise DatasetValidationError(problems)
    arrays = _decode_all(zip_file, entries, rows.filenames)
    if splits is None:
        splits, note = _assign_splits(labels)
        description = _join_description(description, note)
    return _store(_Prepared(
        name=name, modality="image", source=Dataset.Source.UPLOAD, description=description.strip(),
        class_names=class_names, arrays=arrays, labels=labels, splits=splits, source_names=rows.filenames,
        content_sha256=hashlib.sha256(data).hexdigest(), value_range=[0.0, 1.0]))


# --------------------------------------------------------------------------- tabular

def _numeric_columns(table: _Table, columns: list[int], *, filename: str) -> tuple[np.ndarray, list[str]]:
    """Parse feature columns to float32 with pandas, reporting each bad cell's row, column and value."""
    frame = pd.DataFrame([[r[j] for j in columns] for r in table.rows], dtype=object)
    rows = np.asarray(table.row_numbers)
    out = np.empty((len(table.rows), len(columns)), dtype=np.float32)
    problems = []
    for k, j in enumerate(columns):
        column = table.header[j]
        text = frame[k].astype(str).str.strip()
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        lowered = text.str.lower()
        empty = (text == "").to_numpy()
        marker = lowered.isin(_MISSING_MARKERS).to_numpy()
        infinite = np.isinf(values) | (np.isfinite(values) & (np.abs(values) > _FLOAT32_MAX))
        wrong = np.isnan(values) & ~empty & ~marker
        if empty.any() or marker.any():
            cells = [f"row {n}" + (f" ('{v}')" if v else "") for n, v in zip(rows[empty | marker],
                                                                             text[empty | marker])]
            problems.append(f"{filename}, column '{column}': missing values in {_examples(cells)}. Empty cells "
                            f"and NaN are not allowed; fill them in or remove those rows.")
        if infinite.any():
            cells = [f"row {n} ('{v}')" for n, v in zip(rows[infinite], text[infinite])]
            problems.append(f"{filename}, column '{column}': infinite or too large values in {_examples(cells)}. "
                            f"Values must be finite numbers within the 32-bit float range.")
        if wrong.any():
            cells = [f"row {n}: '{v}'" for n, v in zip(rows[wrong], text[wrong])]
            hint = (" Use a dot as the decimal separator and no thousands separators."
                    if any(re.fullmatch(r"[+-]?[\d.]*\d,\d+", v) for v in text[wrong]) else "")
            problems.append(f"{filename}, column '{column}' must contain numbers, but has non-numeric values: "
                            f"{_examples(cells)}.{hint} Fix the values, or remove the column if it is not a "
                            f"feature.")
        with np.errstate(over="ignore"):  # out-of-range values were reported above
            out[:, k] = values
    return out, problems


def _parse_descriptions(data: bytes, feature_names: list[str], *, filename: str) -> tuple[dict, list[str]]:
    table = _read_csv(data, filename=filename)
    header = [h.lower() for h in table.header]
    problems = _check_header(header, filename=filename)
    missing = [c for c in ("feature", "description") if c not in header]
    if missing:
        problems.append(f"{filename} has no {' or '.join(repr(m) for m in missing)} column (found: "
                        f"{', '.join(table.header)}). Its header must be feature,description,unit.")
    unknown = [h for h in table.header if h.lower() not in ("feature", "description", "unit")]
    if unknown:
        problems.append(f"{filename} has unknown column(s) {', '.join(repr(u) for u in unknown)}; it may only "
                        f"have feature, description and unit.")
    if problems:
        return {}, problems
    col = {h: header.index(h) for h in header}
    result: dict[str, dict[str, str]] = {}
    for n, row in zip(table.row_numbers, table.rows):
        feature = row[col["feature"]].strip()
        if feature not in feature_names:
            problems.append(f"{filename} row {n} describes '{feature}', which is not a feature column of the "
                            f"data.{_did_you_mean(feature, feature_names)} Features: {_examples(feature_names, 20)}.")
        elif feature in result:
            problems.append(f"{filename} row {n} describes '{feature}' a second time; keep one row per feature.")
        else:
            result[feature] = {"description": row[col["description"]].strip(),
                               "unit": row[col["unit"]].strip() if "unit" in col else ""}
    # Keep the data's column order, which is the order people read them in.
    return {f: result[f] for f in feature_names if f in result}, problems


def dataset_import_tabular(*, name: str, csv_file: bytes | IO[bytes], label_column: str = "label",
                           descriptions: bytes | IO[bytes] | None = None, class_names: list[str] | None = None,
                           description: str = "") -> Dataset:
    """Import a CSV of numeric feature columns plus a label column (and optionally a split column)."""
    name = _check_name(name)
    filename = _display_name(csv_file, default="CSV file")
    data = _read_upload(csv_file, what="CSV file")
    description_bytes = None if descriptions is None else _read_upload(descriptions, what="descriptions file")
    if class_names is not None:
        class_names = [str(c).strip() for c in class_names]
        problems = _check_class_list(class_names, source="The class names")
        if problems:
            raise DatasetValidationError(problems)
    table = _read_csv(data, filename=filename)
    problems = _check_header(table.header, filename=filename)
    if problems:
        raise DatasetValidationError(problems)
    label_column = label_column.strip()
    if label_column not in table.header:
        raise DatasetValidationError(
            f"{filename} has no label column '{label_column}'.{_did_you_mean(label_column, table.header)} "
            f"Columns found: {_examples(table.header, 20)}. Name the column that holds each row's class "
            f"(--label-column in the command line).")
    label_j = table.header.index(label_column)
    split_j = table.header.index("split") if "split" in table.header and label_column != "split" else None
    feature_js = [j for j in range(len(table.header)) if j not in (label_j, split_j)]
    feature_names = [table.header[j] for j in feature_js]
    if not feature_js:
        raise DatasetValidationError(f"{filename} has no feature columns, only '{label_column}'"
                                     f"{' and split' if split_j is not None else ''}. Add numeric feature columns.")
    if not table.rows:
        raise DatasetValidationError(f"{filename} has a header but no data rows: the dataset would be empty.")
    features, problems = _numeric_columns(table, feature_js, filename=filename)
    class_names, labels, label_problems = _labels_to_indices(
        [r[label_j].strip() for r in table.rows], table.row_numbers, class_names=class_names,
        filename=filename, class_source="the given class names")
    problems += label_problems
    splits = None
    if split_j is not None:
        splits, split_problems = _parse_splits([r[split_j] for r in table.rows], table.row_numbers,
                                               filename=filename)
        problems += split_problems
    feature_descriptions: dict = {}
    if description_bytes is not None:
        feature_descriptions, description_problems = _parse_descriptions(
            description_bytes, feature_names, filename=_display_name(descriptions, default="descriptions file"))
        problems += description_problems
    if problems:
        raise DatasetValidationError(problems)
    if splits is None:
        splits, note = _assign_splits(labels)
        description = _join_description(description, note)
    value_range = [[float(lo), float(hi)] for lo, hi in zip(features.min(axis=0), features.max(axis=0))]
    return _store(_Prepared(
        name=name, modality="tabular", source=Dataset.Source.UPLOAD, description=description.strip(),
        class_names=class_names, arrays=features, labels=labels, splits=splits,
        source_names=[f"row {n}" for n in table.row_numbers],
        content_sha256=hashlib.sha256(data).hexdigest(),
        value_range=value_range, feature_names=feature_names, feature_descriptions=feature_descriptions))


# --------------------------------------------------------------------------- built-in demo data

def _content_hash(arrays: np.ndarray, labels: np.ndarray, meta: dict) -> str:
    digest = hashlib.sha256()
    digest.update(array_to_npy_bytes(arrays))
    digest.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    digest.update(json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()


def _builtin_digits() -> _Prepared:
    from explainers.demo_data import load_digits

    raw = load_digits()
    X, y = np.asarray(raw["X"], dtype=np.float32), np.asarray(raw["y"], dtype=np.int64)
    splits, note = _assign_splits(y)
    return _Prepared(
        name=BUILTIN_DATASETS["digits"], modality="image", source=Dataset.Source.BUILTIN,
        description=(f"{raw.get('source', 'scikit-learn load_digits')}. 8x8 grayscale images scaled to "
                     f"[0, 1].\n\n{note}"),
        class_names=list(raw["class_names"]), arrays=X, labels=y, splits=splits,
        source_names=[f"load_digits index {i}" for i in range(len(y))],
        content_sha256=_content_hash(X, y, {"class_names": raw["class_names"], "splits": splits}),
        value_range=[0.0, 1.0])


def _builtin_breast_cancer() -> _Prepared:
    from explainers.demo_data import load_breast_cancer

    raw = load_breast_cancer()
    X, y = np.asarray(raw["X"], dtype=np.float32), np.asarray(raw["y"], dtype=np.int64)
    names = list(raw["feature_names"])
    described = {n: {"description": d, "unit": u}
                 for n, d, u in zip(names, raw["feature_descriptions"], raw["feature_units"])}
    splits, note = _assign_splits(y)
    return _Prepared(
        name=BUILTIN_DATASETS["breast_cancer"], modality="tabular", source=Dataset.Source.BUILTIN,
        description=(f"{raw.get('source', 'scikit-learn load_breast_cancer')}. Measurements of cell nuclei "
                     f"in a digitized microscope image, in raw units: lengths in image pixels, texture in "
                     f"gray levels, shape scores unitless.\n\n{note}"),
        class_names=list(raw["class_names"]), arrays=X, labels=y, splits=splits,
        source_names=[f"load_breast_cancer index {i}" for i in range(len(y))],
        content_sha256=_content_hash(X, y, {"class_names": raw["class_names"], "features": described,
                                            "splits": splits}),
        value_range=[[float(lo), float(hi)] for lo, hi in zip(X.min(axis=0), X.max(axis=0))],
        feature_names=names, feature_descriptions=described)


BUILTIN_DATASETS: dict[str, str] = {
    "digits": "Handwritten digits (scikit-learn)",
    "breast_cancer": "Breast cancer diagnosis (scikit-learn)",
}
_BUILTIN_LOADERS: dict[str, Callable[[], _Prepared]] = {
    "digits": _builtin_digits,
    "breast_cancer": _builtin_breast_cancer,
}


def dataset_import_builtin(*, which: str) -> Dataset:
    """Import bundled demo data; idempotent: an identical existing import is returned untouched."""
    if which not in _BUILTIN_LOADERS:
        raise DatasetValidationError(f"Unknown built-in dataset '{which}'; choose one of: "
                                     f"{', '.join(BUILTIN_DATASETS)}.")
    prepared = _BUILTIN_LOADERS[which]()
    existing = Dataset.objects.filter(name=prepared.name).first()
    if existing is None:
        try:
            return _store(prepared)
        except DatasetValidationError:
            # Another process imported it between our check and our insert.
            existing = Dataset.objects.filter(name=prepared.name).first()
            if existing is None:
                raise
    if existing.content_sha256 != prepared.content_sha256:
        raise DatasetValidationError(
            f"A dataset named '{prepared.name}' already exists with different content (it was imported with "
            f"another version of the demo data). Rename or delete it before importing again.")
    return existing
