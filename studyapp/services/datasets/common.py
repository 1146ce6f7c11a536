"""What every kind of import shares: the error, the limits, ``.npy`` blobs, reading uploads and CSV text,
and the helpers that make messages say what is wrong, where, and what to do."""
from __future__ import annotations

import csv
import difflib
import io
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
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
# An image is the model's input as it is (nothing is resized), and a study shows it on a screen a few hundred
# pixels wide and explains it pixel by pixel: 1024x1024 is already far more than either needs (a 4096x4096
# image costs 200 MB as float32 and gigabytes of activations in every explanation).
MAX_IMAGE_PIXELS = 1024 * 1024               # per image; far below Pillow's own bomb limit
# The float32 model inputs of all images together: what the database stores. While importing, the images
# are held in their compact 8/16-bit form (a quarter or half of this) and each is converted to float32
# only when it is written, so an import holds at most the upload, half this budget, one image's transient
# copies and one bulk insert of BULK_BATCH_BYTES (see images.DecodedImages and store.py).
MAX_DECODED_BYTES = 1024 ** 3
MAX_TABULAR_ROWS = 100_000                   # items of a CSV, as MAX_ARCHIVE_ENTRIES bounds images
MAX_TABULAR_VALUES = 10_000_000              # rows x feature columns of a CSV: 40 MB as float32
DEFAULT_MAX_FEATURES = 10_000                # when the MAX_DATASET_FEATURES setting is not set
MAX_CLASSES = 10_000
TABULAR_CHUNK_VALUES = 100_000               # CSV cells converted to numbers at a time (~130 bytes each)
SPLIT_SEED = 0
TEST_FRACTION = 0.2
BULK_BATCH = 500
BULK_BATCH_BYTES = 32 * 1024 * 1024          # .npy bytes of one bulk insert (large images: fewer rows)
EXAMPLES = 5                                 # how many offending items a message lists
MAX_MESSAGES = 12                            # messages shown for one upload, then "and N more problems"
MAX_MESSAGE_CHARS = 2_000                    # one message, whatever it quotes
MAX_QUOTED_CHARS = 60                        # one value from the upload quoted in a message


# progress(phase, done, total): what an import is doing, in words ("reading rows"), and how far it is. The
# worker's job records the latest call (studyapp.services.dataset_imports); it must be cheap to call often.
Progress = Callable[[str, int, int], None]


def no_progress(phase: str, done: int, total: int) -> None:
    """The progress of an import nobody watches (the request, the command line)."""


def line_count(data: bytes) -> int:
    """Line ends (\n, or \r alone as old Macs wrote them), counted at memchr speed."""
    return max(data.count(b"\n"), data.count(b"\r"))


@dataclass(frozen=True)
class UploadCheck:
    """What the cheap checks of an upload found: enough to say where it should be imported."""

    filename: str
    n_bytes: int
    n_items: int                 # at most this many items: the CSV's lines, or the archive's entries


class DatasetValidationError(ServiceError):
    """An upload that cannot become a dataset; ``messages`` lists every problem found."""

    def __init__(self, messages: str | Iterable[str]) -> None:
        super().__init__(_bounded([messages] if isinstance(messages, str) else list(messages)))


def _bounded(messages: list[str]) -> list[str]:
    """At most MAX_MESSAGES messages of at most MAX_MESSAGE_CHARS each: a hostile upload can produce a
    problem per row or per column, and an admin page listing them all would be hundreds of megabytes."""
    limit = MAX_MESSAGE_CHARS
    shown = [m if len(m) <= limit else m[:limit - 1] + "…" for m in messages[:MAX_MESSAGES]]
    if len(messages) > MAX_MESSAGES:
        shown.append(f"... and {len(messages) - MAX_MESSAGES:,} more problem(s). Fix the ones above and upload "
                     f"again to see the rest.")
    return shown


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

def examples(items: list, limit: int = EXAMPLES, *, sep: str = ", ", total: int | None = None) -> str:
    """The first ``limit`` items and how many more there are (of ``total`` when only the first were kept)."""
    hidden = (len(items) if total is None else total) - min(limit, len(items))
    shown = sep.join(str(i) for i in items[:limit])
    return shown + (f" (and {hidden:,} more)" if hidden > 0 else "")


def quoted(value: object) -> str:
    """A value from the upload, shortened to MAX_QUOTED_CHARS, for quoting in a message."""
    text = str(value)
    return text if len(text) <= MAX_QUOTED_CHARS else text[:MAX_QUOTED_CHARS - 1] + "…"


def mb(n_bytes: int) -> str:
    """Bytes in MB, as every message says them (1 MB = 1024 x 1024 bytes, as MAX_UPLOAD_MB counts)."""
    return f"{n_bytes / (1024 * 1024):.1f} MB"


def did_you_mean(wanted: str, options: Iterable[str]) -> str:
    # difflib's cost grows with the product of the lengths: long values from an upload are no typos anyway.
    options = [o for o in options if len(o) <= 2 * MAX_QUOTED_CHARS]
    if len(wanted) > 2 * MAX_QUOTED_CHARS:
        return ""
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


_WORKBOOKS = (".xlsx", ".xlsm", ".xls", ".ods", ".numbers")
_OTHER_ARCHIVES = (".rar", ".7z", ".tar", ".gz", ".tgz", ".bz2", ".xz")


def check_extension(filename: str, *, kind: str) -> None:
    """Refuse, by its name, a file the import cannot read, saying what to upload instead. Other names are
    left to the content checks, which know better than a name (a table saved as .txt is fine)."""
    suffix = PurePosixPath(filename.lower()).suffix
    if kind == "tabular" and suffix in _WORKBOOKS:
        raise DatasetValidationError(
            f"{filename} is a spreadsheet workbook ({suffix}), not a CSV file. Save the sheet as CSV (in Excel: "
            f"File > Save As > 'CSV UTF-8 (Comma delimited)') and upload the .csv file.")
    if kind == "images" and suffix in _OTHER_ARCHIVES:
        raise DatasetValidationError(
            f"{filename} is a {suffix} archive; only .zip archives can be read. Put the images and labels.csv "
            f"in a .zip (your system's 'Compress' command makes one) and upload that.")


ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_BOM = b"\xef\xbb\xbf"


def check_text(data: bytes, *, filename: str) -> None:
    """Refuse, by their first bytes, uploads that are not UTF-8 text at all (a zip, UTF-16)."""
    if data.startswith(ZIP_MAGIC):
        raise DatasetValidationError(
            f"{filename} is a zip archive, not a CSV table. For images (a zip with labels.csv), choose the kind "
            "'images'; for a table, upload the .csv file itself.")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DatasetValidationError(
            f"{filename} is saved as UTF-16. Save it as UTF-8 instead (in Excel: File > Save As > "
            f"'CSV UTF-8 (Comma delimited)').")


def _not_utf8(data: bytes, exc: UnicodeDecodeError, *, line: int, filename: str) -> DatasetValidationError:
    return DatasetValidationError(
        f"{filename} is not valid UTF-8 text (byte 0x{data[exc.start]:02x} on line {line} cannot be "
        f"decoded; it was probably saved as Latin-1/Windows-1252). Save it as UTF-8 (in Excel: File > "
        f"Save As > 'CSV UTF-8 (Comma delimited)'); UTF-8 with a byte-order mark is fine too.")


def decode_text(data: bytes, *, filename: str) -> str:
    """The whole text of a small file (classes.txt); CSV is read line by line with :func:`csv_records`."""
    check_text(data, filename=filename)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _not_utf8(data, exc, line=data.count(b"\n", 0, exc.start) + 1, filename=filename) from None


# --------------------------------------------------------------------------- CSV

# Physical lines as csv's universal newlines split them (\r\n, \r or \n), so row numbers stay the same.
_LINE = re.compile(rb"[^\r\n]*(?:\r\n?|\n)|[^\r\n]+")


def _decoded_lines(data: bytes, *, filename: str) -> Iterator[tuple[int, str]]:
    # One line at a time: the decoded text of a whole upload can take four times its size in memory
    # (one non-Latin character makes Python store every character in 4 bytes), and so would io.StringIO.
    start = len(_BOM) if data.startswith(_BOM) else 0
    for number, match in enumerate(_LINE.finditer(data, start), start=1):
        line = match.group()
        try:
            yield number, line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _not_utf8(line, exc, line=number, filename=filename) from None


MAX_RECORD_LINES = 1_000     # lines one quoted CSV value may span


def csv_records(data: bytes, *, filename: str, max_columns: int) -> Iterator[tuple[int, list[str]]]:
    """(spreadsheet row, fields) of each non-blank CSV record, parsed strictly and lazily.

    csv builds a whole record before handing it over, so a record's size is bounded before it is
    parsed: a line with far more commas than ``max_columns`` (4x, plus room for commas quoted inside
    values) or a quoted value spanning more than MAX_RECORD_LINES lines is refused.
    """
    check_text(data, filename=filename)
    max_commas = 4 * max_columns + 100
    record_start = 0

    def lines() -> Iterator[str]:
        for number, line in _decoded_lines(data, filename=filename):
            if line.count(",") > max_commas:
                raise DatasetValidationError(
                    f"{filename} row {number} has more than {max_commas:,} commas, far more fields than the "
                    f"{max_columns:,} columns allowed. Check that the file is a table with one row per item.")
            if number - record_start > MAX_RECORD_LINES:
                raise DatasetValidationError(
                    f"{filename} row {record_start + 1} starts a quoted value that runs over more than "
                    f"{MAX_RECORD_LINES:,} lines. Check for an unclosed quote (\").")
            yield line

    reader = csv.reader(lines())
    try:
        for fields in reader:
            record_start = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue  # blank lines (often a trailing one) carry nothing
            yield reader.line_num, fields
    except csv.Error as exc:
        raise DatasetValidationError(
            f"{filename} row {reader.line_num} cannot be read as CSV ({exc}). Check for an unclosed "
            f"quote (\") or a very long value.") from None


_BLANK_LINES = re.compile(rb"(?:\xef\xbb\xbf)?(?:[ \t]*(?:\r\n?|\n))*")
_HEADER_WINDOW = 64 * 1024


def csv_header_width(data: bytes, *, stop_after: int) -> int:
    """The number of fields in the header row, read from the raw bytes without parsing any field.

    Commas count where an even number of quotes precede them in the record (RFC 4180 quoting; a stray
    quote inside an unquoted field can make the count a little off, which only decides whether the
    exact check after parsing is the one that refuses). Counting stops past ``stop_after``, so a
    header of a million columns costs a few windows of numpy work, not a million Python strings.
    """
    start = _BLANK_LINES.match(data).end()
    fields, quoted = 1, 0
    for offset in range(start, len(data), _HEADER_WINDOW):
        window = np.frombuffer(data, dtype=np.uint8, count=min(_HEADER_WINDOW, len(data) - offset), offset=offset)
        quotes = np.cumsum(window == ord('"'), dtype=np.int32)
        outside = (quotes + quoted) % 2 == 0
        ends = np.flatnonzero(outside & ((window == ord("\n")) | (window == ord("\r"))))
        stop = int(ends[0]) if len(ends) else len(window)
        fields += int(np.count_nonzero((window[:stop] == ord(",")) & outside[:stop]))
        if len(ends) or fields > stop_after:
            break
        quoted = (quoted + int(quotes[-1])) % 2
    return fields


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    row_numbers: list[int]       # spreadsheet row of each data row (header = row 1)


def field_count_problem(*, filename: str, n_columns: int, bad: list[tuple[int, int]], n_bad: int) -> str:
    listed = examples([f"row {n} has {k}" for n, k in bad], total=n_bad)
    return (f"{filename}: the header has {n_columns:,} columns but {n_bad:,} row(s) have a different number of "
            f"fields: {listed}. Check for a missing or stray comma, or a comma inside a value that should be "
            f"quoted.")


def read_csv(data: bytes, *, filename: str, max_columns: int) -> Table:
    """Parse a small CSV file (labels.csv, descriptions) strictly: every row as many fields as the header,
    which may have at most ``max_columns`` columns (checked before any field is parsed)."""
    if csv_header_width(data, stop_after=max_columns) > max_columns:
        raise DatasetValidationError(f"{filename} has more than {max_columns:,} columns in its header row, more "
                                     f"than it may have. Check that it is the right file.")
    records = csv_records(data, filename=filename, max_columns=max_columns)
    first = next(records, None)
    if first is None:
        raise DatasetValidationError(f"{filename} is empty: it needs a header row and one row per item.")
    header = [f.strip() for f in first[1]]
    rows: list[list[str]] = []
    numbers: list[int] = []
    for number, fields in records:
        rows.append(fields)
        numbers.append(number)
    bad = [(n, len(r)) for n, r in zip(numbers, rows) if len(r) != len(header)]
    if bad:
        raise DatasetValidationError(field_count_problem(filename=filename, n_columns=len(header), bad=bad[:EXAMPLES],
                                                         n_bad=len(bad)))
    return Table(header=header, rows=rows, row_numbers=numbers)


def check_header(header: list[str], *, filename: str) -> list[str]:
    problems = []
    unnamed = [str(i + 1) for i, h in enumerate(header) if not h]
    if unnamed:
        problems.append(f"{filename}: column(s) {examples(unnamed, 20)} have no name in the header row. "
                        f"Name every column or delete the empty ones.")
    positions: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(header):
        if h:
            positions[h].append(i + 1)
    repeated = [(name, where) for name, where in positions.items() if len(where) > 1]
    for name, where in repeated[:EXAMPLES]:
        problems.append(f"{filename}: the column name '{quoted(name)}' appears {len(where)} times (columns "
                        f"{examples(where, 20)}). Column names must be unique; rename or remove the duplicates.")
    if len(repeated) > EXAMPLES:
        problems.append(f"{filename}: {len(repeated) - EXAMPLES:,} more column names appear more than once: "
                        f"{examples([quoted(n) for n, _ in repeated[EXAMPLES:]])}.")
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
