"""What every kind of import shares: the error, the limits, ``.npy`` blobs, reading uploads and CSV text,
and the helpers that make messages say what is wrong, where, and what to do."""
from __future__ import annotations

import csv
import difflib
import io
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO

import numpy as np
from django.conf import settings

from studyapp.models import Stimulus
from studyapp.services.errors import ServiceError

# Limits on untrusted archives. Deployments and tests adjust them here, on this module: the code reads
# them as ``common.NAME`` when it runs (the package re-exports copies, for reading only).
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


def npy_array(blob) -> np.ndarray:
    """An array stored as a ``.npy`` blob (model inputs, attributions), pickles refused."""
    return np.load(io.BytesIO(bytes(blob)), allow_pickle=False)


def stimulus_array(stimulus: Stimulus) -> np.ndarray:
    """The model input of a stimulus (or an edit), decoded from its ``.npy`` blob."""
    return npy_array(stimulus.data)


def stimuli_arrays(stimuli: list[Stimulus], *, input_shape) -> tuple[np.ndarray, np.ndarray]:
    """Stacked model inputs (N, *input_shape) and labels (N,) of ``stimuli``; empty arrays for none."""
    if not stimuli:
        return np.empty((0, *input_shape), dtype=np.float32), np.empty((0,), dtype=np.int64)
    return (np.stack([stimulus_array(s) for s in stimuli]),
            np.array([s.label for s in stimuli], dtype=np.int64))


# --------------------------------------------------------------------------- message helpers

def examples(items: list, limit: int = EXAMPLES, *, sep: str = ", ") -> str:
    """The first ``limit`` items and how many more there are."""
    shown = sep.join(str(i) for i in items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def mb(n_bytes: int) -> str:
    return f"{n_bytes / (1024 * 1024):.1f} MB"


def did_you_mean(wanted: str, options: Iterable[str]) -> str:
    options = list(options)
    close = [o for o in options if o.lower() == wanted.lower()]
    close += [o for o in difflib.get_close_matches(wanted, options, n=3, cutoff=0.6) if o not in close]
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


# --------------------------------------------------------------------------- reading uploads

def read_upload(source: bytes | IO[bytes], *, what: str) -> bytes:
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


def display_name(source: object, *, default: str) -> str:
    """The uploaded file's own name (without folders) for messages, when it has one."""
    name = getattr(source, "name", None)
    if not isinstance(name, str) or not name.strip():
        return default
    return PurePosixPath(name.replace("\\", "/")).name


ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def decode_text(data: bytes, *, filename: str) -> str:
    if data.startswith(ZIP_MAGIC):
        raise DatasetValidationError(
            f"{filename} is a zip archive, not a CSV table. For images (a zip with labels.csv), choose the kind "
            "'images'; for a table, upload the .csv file itself.")
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


# --------------------------------------------------------------------------- CSV

@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    row_numbers: list[int]       # spreadsheet row of each data row (header = row 1)


def read_csv(data: bytes, *, filename: str) -> Table:
    """Parse CSV text strictly: every row must have as many fields as the header."""
    text = decode_text(data, filename=filename)
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
        listed = examples([f"row {n} has {k}" for n, k in bad])
        raise DatasetValidationError(
            f"{filename}: the header has {len(header)} columns but {len(bad)} row(s) have a different "
            f"number of fields: {listed}. Check for a missing or stray comma, or a comma inside a value "
            f"that should be quoted.")
    return Table(header=header, rows=rows, row_numbers=numbers)


def check_header(header: list[str], *, filename: str) -> list[str]:
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


def check_fixed_columns(table: Table, *, filename: str, required: tuple[str, ...], optional: tuple[str, ...],
                        missing_hint: str, unknown_hint: str) -> tuple[dict[str, int], list[str]]:
    """({column: position}, problems) for a small file whose column names (any case) are fixed."""
    header = [h.lower() for h in table.header]
    problems = check_header(header, filename=filename)
    missing = [c for c in required if c not in header]
    if missing:
        problems.append(f"{filename} has no {' or '.join(repr(m) for m in missing)} column (found: "
                        f"{', '.join(table.header)}). {missing_hint}")
    unknown = [h for h in table.header if h.lower() not in required + optional]
    if unknown:
        problems.append(f"{filename} has unknown column(s) {', '.join(repr(u) for u in unknown)}{unknown_hint}")
    return {h: header.index(h) for h in header}, problems
