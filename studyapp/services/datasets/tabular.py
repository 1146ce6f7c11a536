"""Importing a CSV of numeric feature columns, a label column and optionally a split column.

The work is bounded before it starts: the feature count is read from the header's raw bytes (setting
MAX_DATASET_FEATURES) before any row is parsed, and rows are parsed and converted to float32 a chunk
at a time, stopping at the first row past MAX_TABULAR_ROWS or MAX_TABULAR_VALUES (rows x features),
so a CSV is never held as one Python string per cell.
"""
from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO

import numpy as np
import pandas as pd
from django.conf import settings

from studyapp.models import Dataset
from studyapp.services.datasets import common
from studyapp.services.datasets.common import (DatasetValidationError, Progress, UploadCheck, check_extension,
                                               check_fixed_columns, check_header, csv_header_width, csv_records,
                                               did_you_mean, display_name, examples, field_count_problem, line_count,
                                               no_progress, quoted, read_csv, read_upload)
from studyapp.services.datasets.labels import check_class_list, labels_to_indices, parse_splits, split_items
from studyapp.services.datasets.store import Prepared, check_name, feature_ranges, store

_MISSING_MARKERS = ["nan", "-nan", "+nan", "na", "n/a", "null", "none", "-", "?"]
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_DECIMAL_COMMA = r"[+-]?[\d.]*\d,\d+"
_KINDS = ("missing", "infinite", "wrong")


def max_features() -> int:
    """The most feature columns a CSV may have (setting MAX_DATASET_FEATURES)."""
    return int(getattr(settings, "MAX_DATASET_FEATURES", common.DEFAULT_MAX_FEATURES))


@dataclass
class _CellProblems:
    """Bad cells per feature column and kind, collected over chunks: counts, and the first few cells."""

    n_columns: int
    counts: dict[str, np.ndarray] = field(init=False)
    cells: dict[str, dict[int, list[str]]] = field(init=False)
    decimal_comma: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.counts = {kind: np.zeros(self.n_columns, dtype=np.int64) for kind in _KINDS}
        self.cells = {kind: {} for kind in _KINDS}
        self.decimal_comma = np.zeros(self.n_columns, dtype=bool)

    def add(self, kind: str, mask: np.ndarray, text: np.ndarray, rows: np.ndarray) -> None:
        """Record the cells where ``mask`` (rows x columns) is set; ``text`` holds the cells as read."""
        counts = mask.sum(axis=0)
        self.counts[kind] += counts
        kept = self.cells[kind]
        # Cells are quoted only for the columns the messages describe one by one: the first EXAMPLES
        # columns with a problem (a column that is among them at the end was among them all along).
        shown = np.flatnonzero(sum(self.counts.values()))[:common.EXAMPLES]
        for k in shown[counts[shown] > 0]:
            cells = kept.setdefault(int(k), [])
            for i in np.flatnonzero(mask[:, k])[:common.EXAMPLES - len(cells)]:
                value = quoted(text[i, k].strip())
                if kind == "wrong":
                    cells.append(f"row {rows[i]}: '{value}'")
                else:
                    cells.append(f"row {rows[i]}" + (f" ('{value}')" if value else ""))

    @property
    def any(self) -> bool:
        return any(c.any() for c in self.counts.values())

    def messages(self, feature_names: list[str], *, filename: str) -> list[str]:
        bad = np.flatnonzero(sum(self.counts.values()))
        problems = []
        for k in bad[:common.EXAMPLES]:
            problems += self._column_messages(int(k), f"{filename}, column '{quoted(feature_names[k])}'")
        if len(bad) > common.EXAMPLES:
            rest = [f"'{quoted(feature_names[k])}'" for k in bad[common.EXAMPLES:2 * common.EXAMPLES]]
            problems.append(f"{filename}: {len(bad) - common.EXAMPLES:,} more columns have missing, infinite or "
                            f"non-numeric values: {examples(rest, total=len(bad) - common.EXAMPLES)}. Every "
                            f"feature column must hold a finite number in every row.")
        return problems

    def _column_messages(self, k: int, where: str) -> list[str]:
        problems = []
        if self.counts["missing"][k]:
            problems.append(f"{where}: missing values in {self._listed('missing', k)}. Empty cells and NaN are "
                            f"not allowed; fill them in or remove those rows.")
        if self.counts["infinite"][k]:
            problems.append(f"{where}: infinite or too large values in {self._listed('infinite', k)}. Values "
                            f"must be finite numbers within the 32-bit float range.")
        if self.counts["wrong"][k]:
            hint = " Use a dot as the decimal separator and no thousands separators." if self.decimal_comma[k] else ""
            problems.append(f"{where} must contain numbers, but has non-numeric values: {self._listed('wrong', k)}."
                            f"{hint} Fix the values, or remove the column if it is not a feature.")
        return problems

    def _listed(self, kind: str, k: int) -> str:
        return examples(self.cells[kind].get(k, []), total=int(self.counts[kind][k]))


def _numeric_block(rows: list[list[str]], row_numbers: list[int], columns: list[int],
                   problems: _CellProblems) -> np.ndarray:
    """One chunk of rows as float32 (rows x features), checked for every column at once with pandas."""
    cells = np.empty((len(rows), len(rows[0])), dtype=object)
    cells[:] = rows
    text = cells[:, columns]
    shape = text.shape
    # to_numeric skips the spaces around a number itself; only the cells that are no number are
    # stripped and looked at as text, to say what is wrong with them.
    values = pd.to_numeric(pd.Series(text.ravel()), errors="coerce").to_numpy(dtype=np.float64).reshape(shape)
    failed = np.isnan(values)
    unread = pd.Series(text[failed]).str.strip()
    missing, wrong = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    missing[failed] = ((unread == "") | unread.str.lower().isin(_MISSING_MARKERS)).to_numpy()
    wrong[failed] = ~missing[failed]
    infinite = np.isinf(values) | (np.isfinite(values) & (np.abs(values) > _FLOAT32_MAX))
    numbers = np.asarray(row_numbers)
    problems.add("missing", missing, text, numbers)
    problems.add("infinite", infinite, text, numbers)
    if wrong.any():
        problems.add("wrong", wrong, text, numbers)
        decimal = np.zeros(shape, dtype=bool)
        decimal[wrong] = unread[~missing[failed]].str.fullmatch(_DECIMAL_COMMA).to_numpy(dtype=bool)
        problems.decimal_comma |= decimal.any(axis=0)
    with np.errstate(over="ignore"):  # out-of-range values are reported above
        return values.astype(np.float32)


@dataclass
class _Parsed:
    feature_names: list[str]
    features: np.ndarray
    labels: list[str]
    splits: list[str] | None
    row_numbers: list[int]
    problems: list[str]        # bad cells: reported together with the label and split problems


@dataclass
class _Header:
    names: list[str]
    label_j: int
    split_j: int | None
    feature_js: list[int]
    records: Iterator[tuple[int, list[str]]]    # the data rows, not parsed yet


def _read_header(data: bytes, *, filename: str, label_column: str) -> _Header:
    """The header row, checked: the feature count (before any field is parsed), names, the label column."""
    limit = max_features()
    # Checked from the raw header bytes: a million-column CSV once took 438 s to parse and check.
    if csv_header_width(data, stop_after=limit + 2) > limit + 2:
        raise DatasetValidationError(
            f"{filename} has more than {limit:,} feature columns; at most {limit:,} are allowed (setting "
            f"MAX_DATASET_FEATURES). Remove columns the model does not use, or ask the administrator to raise "
            f"the limit.")
    records = csv_records(data, filename=filename, max_columns=limit + 2)
    first = next(records, None)
    if first is None:
        raise DatasetValidationError(f"{filename} is empty: it needs a header row and one row per item.")
    header = [f.strip() for f in first[1]]
    problems = check_header(header, filename=filename)
    if problems:
        raise DatasetValidationError(problems)
    if label_column not in header:
        raise DatasetValidationError(
            f"{filename} has no label column '{quoted(label_column)}'.{did_you_mean(label_column, header)} "
            f"Columns found: {examples([quoted(h) for h in header[:20]], 20, total=len(header))}. Name the column "
            f"that holds each row's class (--label-column in the command line).")
    label_j = header.index(label_column)
    split_j = header.index("split") if "split" in header and label_column != "split" else None
    feature_js = [j for j in range(len(header)) if j not in (label_j, split_j)]
    if not feature_js:
        raise DatasetValidationError(f"{filename} has no feature columns, only '{quoted(label_column)}'"
                                     f"{' and split' if split_j is not None else ''}. Add numeric feature columns.")
    if len(feature_js) > limit:
        raise DatasetValidationError(
            f"{filename} has {len(feature_js):,} feature columns; at most {limit:,} are allowed (setting "
            f"MAX_DATASET_FEATURES). Remove columns the model does not use, or ask the administrator to raise "
            f"the limit.")
    return _Header(names=header, label_j=label_j, split_j=split_j, feature_js=feature_js, records=records)


def _read_table(data: bytes, *, filename: str, label_column: str, progress: Progress = no_progress) -> _Parsed:
    head = _read_header(data, filename=filename, label_column=label_column)
    header, label_j, split_j, feature_js, records = head.names, head.label_j, head.split_j, head.feature_js, head.records
    # Rows are counted in lines, which a quoted value spanning lines makes an overestimate; the last report
    # says all were read.
    n_lines = line_count(data) + 1
    progress("reading rows", 0, n_lines)
    max_rows = min(common.MAX_TABULAR_ROWS, common.MAX_TABULAR_VALUES // len(feature_js))
    blocks, labels, splits, numbers = [], [], [], []
    cell_problems = _CellProblems(len(feature_js))
    bad_rows: list[tuple[int, int]] = []
    n_bad = n_read = 0
    chunk_rows = max(1, common.TABULAR_CHUNK_VALUES // len(header))
    while chunk := list(itertools.islice(records, chunk_rows)):
        n_read += len(chunk)
        progress("reading rows", min(chunk[-1][0], n_lines), n_lines)
        if n_read > max_rows:
            raise _too_many_rows(filename=filename, n_features=len(feature_js), max_rows=max_rows)
        good = [(n, r) for n, r in chunk if len(r) == len(header)]
        if len(good) < len(chunk):
            wrong = [(n, len(r)) for n, r in chunk if len(r) != len(header)]
            n_bad += len(wrong)
            bad_rows += wrong[:common.EXAMPLES - len(bad_rows)]
        if not good or n_bad:
            continue  # refused below; reading on only counts the rows with a wrong number of fields
        rows = [r for _, r in good]
        row_numbers = [n for n, _ in good]
        blocks.append(_numeric_block(rows, row_numbers, feature_js, cell_problems))
        labels += [r[label_j].strip() for r in rows]
        if split_j is not None:
            splits += [r[split_j] for r in rows]
        numbers += row_numbers
    if n_bad:
        raise DatasetValidationError(field_count_problem(filename=filename, n_columns=len(header), bad=bad_rows,
                                                         n_bad=n_bad))
    if not numbers:
        raise DatasetValidationError(f"{filename} has a header but no data rows: the dataset would be empty.")
    progress("reading rows", n_lines, n_lines)
    feature_names = [header[j] for j in feature_js]
    return _Parsed(feature_names=feature_names, features=np.concatenate(blocks), labels=labels,
                   splits=splits if split_j is not None else None, row_numbers=numbers,
                   problems=cell_problems.messages(feature_names, filename=filename) if cell_problems.any else [])


def _too_many_rows(*, filename: str, n_features: int, max_rows: int) -> DatasetValidationError:
    return DatasetValidationError(
        f"{filename} has more than {max_rows:,} rows. With {n_features:,} feature column(s) that is the most one "
        f"import takes (at most {common.MAX_TABULAR_ROWS:,} rows and {common.MAX_TABULAR_VALUES:,} values, rows "
        f"x features). Import a sample of the rows: a study shows participants a few hundred items at most.")


def _parse_descriptions(data: bytes, feature_names: list[str], *, filename: str) -> tuple[dict, list[str]]:
    table = read_csv(data, filename=filename, max_columns=20)
    col, problems = check_fixed_columns(
        table, filename=filename, required=("feature", "description"), optional=("unit",),
        missing_hint="Its header must be feature,description,unit.",
        unknown_hint="; it may only have feature, description and unit.")
    if problems:
        return {}, problems
    known = set(feature_names)
    result: dict[str, dict[str, str]] = {}
    unknown: list[tuple[int, str]] = []
    for n, row in zip(table.row_numbers, table.rows):
        feature = row[col["feature"]].strip()
        if feature not in known:
            unknown.append((n, feature))
        elif feature in result:
            problems.append(f"{filename} row {n} describes '{quoted(feature)}' a second time; keep one row per "
                            f"feature.")
        else:
            result[feature] = {"description": row[col["description"]].strip(),
                               "unit": row[col["unit"]].strip() if "unit" in col else ""}
    listed = examples([quoted(f) for f in feature_names[:20]], 20, total=len(feature_names))
    for n, feature in unknown[:common.EXAMPLES]:
        problems.append(f"{filename} row {n} describes '{quoted(feature)}', which is not a feature column of the "
                        f"data.{did_you_mean(feature, feature_names)} Features: {listed}.")
    if len(unknown) > common.EXAMPLES:
        rest = [f"'{quoted(f)}' (row {n})" for n, f in unknown[common.EXAMPLES:2 * common.EXAMPLES]]
        problems.append(f"{filename} describes {len(unknown) - common.EXAMPLES:,} more features that are not "
                        f"columns of the data: {examples(rest, total=len(unknown) - common.EXAMPLES)}.")
    # Keep the data's column order, which is the order people read them in.
    return {f: result[f] for f in feature_names if f in result}, problems


@dataclass
class _Inputs:
    filename: str
    data: bytes
    descriptions_name: str
    descriptions: bytes | None
    class_names: list[str] | None


def _inputs(csv_file: bytes | IO[bytes], descriptions: bytes | IO[bytes] | None,
            class_names: list[str] | None) -> _Inputs:
    filename = display_name(csv_file, default="CSV file")
    data = read_upload(csv_file, what="CSV file" if filename == "CSV file" else f"CSV file {filename}")
    descriptions_name = display_name(descriptions, default="descriptions file")
    description_bytes = None if descriptions is None else read_upload(
        descriptions, what=descriptions_name if descriptions_name == "descriptions file"
        else f"descriptions file {descriptions_name}")
    if class_names is not None:
        class_names = [str(c).strip() for c in class_names]
        problems = check_class_list(class_names, source="The class names")
        if problems:
            raise DatasetValidationError(problems)
    return _Inputs(filename=filename, data=data, descriptions_name=descriptions_name, descriptions=description_bytes,
                   class_names=class_names)


def tabular_upload_check(*, csv_file: bytes | IO[bytes], label_column: str = "label",
                         descriptions: bytes | IO[bytes] | None = None,
                         class_names: list[str] | None = None) -> UploadCheck:
    """The checks of :func:`dataset_import_tabular` that cost little whatever the file's size, so that a
    request can refuse at once what the import would refuse: the size, the encoding, the header (feature
    count from its bytes, names, the label column), the class names given, and the descriptions file
    against the header's features. No data row is parsed. Raises DatasetValidationError."""
    check_extension(display_name(csv_file, default="CSV file"), kind="tabular")
    given = _inputs(csv_file, descriptions, class_names)
    head = _read_header(given.data, filename=given.filename, label_column=label_column.strip())
    if given.descriptions is not None:
        features = [head.names[j] for j in head.feature_js]
        _, problems = _parse_descriptions(given.descriptions, features, filename=given.descriptions_name)
        if problems:
            raise DatasetValidationError(problems)
    return UploadCheck(filename=given.filename, n_bytes=len(given.data), n_items=line_count(given.data))


def dataset_import_tabular(*, name: str, csv_file: bytes | IO[bytes], label_column: str = "label",
                           descriptions: bytes | IO[bytes] | None = None, class_names: list[str] | None = None,
                           description: str = "", progress: Progress = no_progress,
                           finish: Callable[[Dataset], None] | None = None) -> Dataset:
    """Import a CSV of numeric feature columns plus a label column (and optionally a split column).

    ``progress`` hears what the import is doing; ``finish`` runs inside the transaction that writes the
    dataset (see :func:`studyapp.services.datasets.store.store`)."""
    name = check_name(name)
    given = _inputs(csv_file, descriptions, class_names)
    filename, data, class_names = given.filename, given.data, given.class_names
    descriptions_name, description_bytes = given.descriptions_name, given.descriptions
    table = _read_table(data, filename=filename, label_column=label_column.strip(), progress=progress)
    progress("checking labels", 0, 0)
    problems = table.problems
    class_names, labels, label_problems = labels_to_indices(
        table.labels, table.row_numbers, class_names=class_names, filename=filename,
        class_source="the given class names")
    problems += label_problems
    file_splits, split_problems = parse_splits(table.splits, table.row_numbers, filename=filename)
    problems += split_problems
    feature_descriptions: dict = {}
    if description_bytes is not None:
        feature_descriptions, description_problems = _parse_descriptions(
            description_bytes, table.feature_names, filename=descriptions_name)
        problems += description_problems
    if problems:
        raise DatasetValidationError(problems)
    splits, split_info = split_items(labels, from_file=file_splits)
    features = table.features
    return store(Prepared(
        name=name, modality="tabular", source=Dataset.Source.UPLOAD, description=description,
        class_names=class_names, arrays=features, labels=labels, splits=splits, split_info=split_info,
        source_names=[f"row {n}" for n in table.row_numbers], content_sha256=hashlib.sha256(data).hexdigest(),
        value_range=feature_ranges(features), feature_names=table.feature_names,
        feature_descriptions=feature_descriptions), progress=progress, finish=finish)
