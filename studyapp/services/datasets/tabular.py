"""Importing a CSV of numeric feature columns, a label column and optionally a split column."""
from __future__ import annotations

import hashlib
import re
from typing import IO

import numpy as np
import pandas as pd

from studyapp.models import Dataset
from studyapp.services.datasets.common import (DatasetValidationError, Table, check_fixed_columns, check_header,
                                               did_you_mean, display_name, examples, read_csv, read_upload)
from studyapp.services.datasets.labels import check_class_list, labels_to_indices, parse_splits, split_items
from studyapp.services.datasets.store import Prepared, check_name, feature_ranges, store

_MISSING_MARKERS = {"nan", "-nan", "+nan", "na", "n/a", "null", "none", "-", "?"}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _numeric_columns(table: Table, columns: list[int], *, filename: str) -> tuple[np.ndarray, list[str]]:
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
            problems.append(f"{filename}, column '{column}': missing values in {examples(cells)}. Empty cells "
                            f"and NaN are not allowed; fill them in or remove those rows.")
        if infinite.any():
            cells = [f"row {n} ('{v}')" for n, v in zip(rows[infinite], text[infinite])]
            problems.append(f"{filename}, column '{column}': infinite or too large values in {examples(cells)}. "
                            f"Values must be finite numbers within the 32-bit float range.")
        if wrong.any():
            cells = [f"row {n}: '{v}'" for n, v in zip(rows[wrong], text[wrong])]
            hint = (" Use a dot as the decimal separator and no thousands separators."
                    if any(re.fullmatch(r"[+-]?[\d.]*\d,\d+", v) for v in text[wrong]) else "")
            problems.append(f"{filename}, column '{column}' must contain numbers, but has non-numeric values: "
                            f"{examples(cells)}.{hint} Fix the values, or remove the column if it is not a "
                            f"feature.")
        with np.errstate(over="ignore"):  # out-of-range values were reported above
            out[:, k] = values
    return out, problems


def _parse_descriptions(data: bytes, feature_names: list[str], *, filename: str) -> tuple[dict, list[str]]:
    table = read_csv(data, filename=filename)
    col, problems = check_fixed_columns(
        table, filename=filename, required=("feature", "description"), optional=("unit",),
        missing_hint="Its header must be feature,description,unit.",
        unknown_hint="; it may only have feature, description and unit.")
    if problems:
        return {}, problems
    result: dict[str, dict[str, str]] = {}
    for n, row in zip(table.row_numbers, table.rows):
        feature = row[col["feature"]].strip()
        if feature not in feature_names:
            problems.append(f"{filename} row {n} describes '{feature}', which is not a feature column of the "
                            f"data.{did_you_mean(feature, feature_names)} Features: {examples(feature_names, 20)}.")
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
    name = check_name(name)
    filename = display_name(csv_file, default="CSV file")
    data = read_upload(csv_file, what="CSV file")
    description_bytes = None if descriptions is None else read_upload(descriptions, what="descriptions file")
    if class_names is not None:
        class_names = [str(c).strip() for c in class_names]
        problems = check_class_list(class_names, source="The class names")
        if problems:
            raise DatasetValidationError(problems)
    table = read_csv(data, filename=filename)
    problems = check_header(table.header, filename=filename)
    if problems:
        raise DatasetValidationError(problems)
    label_column = label_column.strip()
    if label_column not in table.header:
        raise DatasetValidationError(
            f"{filename} has no label column '{label_column}'.{did_you_mean(label_column, table.header)} "
            f"Columns found: {examples(table.header, 20)}. Name the column that holds each row's class "
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
    class_names, labels, label_problems = labels_to_indices(
        [r[label_j].strip() for r in table.rows], table.row_numbers, class_names=class_names,
        filename=filename, class_source="the given class names")
    problems += label_problems
    file_splits, split_problems = parse_splits(
        None if split_j is None else [r[split_j] for r in table.rows], table.row_numbers, filename=filename)
    problems += split_problems
    feature_descriptions: dict = {}
    if description_bytes is not None:
        feature_descriptions, description_problems = _parse_descriptions(
            description_bytes, feature_names, filename=display_name(descriptions, default="descriptions file"))
        problems += description_problems
    if problems:
        raise DatasetValidationError(problems)
    splits, split_info = split_items(labels, from_file=file_splits)
    return store(Prepared(
        name=name, modality="tabular", source=Dataset.Source.UPLOAD, description=description,
        class_names=class_names, arrays=features, labels=labels, splits=splits, split_info=split_info,
        source_names=[f"row {n}" for n in table.row_numbers], content_sha256=hashlib.sha256(data).hexdigest(),
        value_range=feature_ranges(features), feature_names=feature_names,
        feature_descriptions=feature_descriptions))
