"""The long format as a pandas DataFrame, read fast, with the same dtypes on every database.

Two readers of what ``trials_long_queryset`` selects:

* ``copy`` (PostgreSQL with psycopg2): ``COPY (SELECT ...) TO STDOUT WITH (FORMAT csv)`` into a
  pipe that ``pandas.read_csv`` parses in C, with a dtype per column, while the rows arrive. The
  columns that are the same for every trial of a participant, a stimulus or an edit (arm, truth,
  model output, ...) are not in the COPY: it carries the keys, and those columns are read once
  per key (``Dimensions``) and spread over the rows by integer positions. No Python object is
  made per row: text columns are read as categoricals (a few distinct values each), so even the
  participant UUIDs are built once per participant. The rows come unordered (PostgreSQL would
  sort a million of them on disk) and are sorted here, by participant then position.
* ``cursor`` (any database, SQLite included): a cursor read ``fetchmany`` block by block of the
  selector's one query of joins, each block turned column by column into the same dtypes.

Both give the same frame, column for column, dtype for dtype, row for row (a test compares
them on PostgreSQL). The dtypes are fixed by ``COLUMN_KINDS``, never inferred from the data, so
a column does not change type because one study happens to have no missing value in it:

=============  ==========================================================================
kind           dtype
=============  ==========================================================================
``int``        ``int64`` (never missing)
``Int64``      pandas' nullable ``Int64`` (missing is ``<NA>``)
``bool``       ``bool`` (never missing)
``boolean``    pandas' nullable ``boolean``
``str``        ``str`` (missing is NaN)
``uuid``       ``object`` of ``uuid.UUID`` (missing is None); ``uuid_text=True``: ``str``
``datetime``   ``datetime64[us, UTC]`` (missing is NaT)
=============  ==========================================================================
"""
from __future__ import annotations

import io
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from django.core.exceptions import EmptyResultSet
from django.db import connections, transaction

# Column -> kind (see the module docstring). Answer columns are nullable even where the response
# table's are not: with answered_only=False an unanswered trial has no response row. ``truth`` is
# missing for the items of a study whose data were collected elsewhere (their truth is unknown).
COLUMN_KINDS = {
    "study": "str", "participant": "uuid", "participant_status": "str", "simulated": "bool",
    "arm": "str", "arm_kind": "str", "position": "int", "phase": "str", "task": "str",
    "stimulus": "int", "stimulus_index": "int", "edit": "Int64", "truth": "Int64", "model_output": "Int64",
    "expected_answer": "Int64", "n_options": "Int64", "show_explanation": "bool", "show_model_output": "bool",
    "response": "Int64", "correct": "boolean", "confidence": "Int64", "client_rt_ms": "Int64",
    "server_rt_ms": "Int64", "client_sent_at": "datetime", "received_at": "datetime", "idempotency_key": "uuid",
    "focus_losses": "Int64", "device": "str",
}
METHODS = ("copy", "cursor")
FETCH_ROWS = 100_000
DATETIME = "datetime64[us, UTC]"


def copy_available(*, using: str = "default") -> bool:
    """PostgreSQL through psycopg2 (``copy_expert``); psycopg 3 and SQLite read through a cursor."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return False
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    return not is_psycopg3


@dataclass(frozen=True)
class Dimensions:
    """Columns the COPY reader reads once per key instead of once per row.

    ``rows_for(columns)``: the unordered ``values_list`` query of those long-format ``columns``
    followed by the ``keys`` fields (non-null integers, except that a key may be null: read as -1).
    ``resolve(keys, columns)``: for the wanted ``columns`` among ``columns`` (this object's),
    column -> (positions, values) with row i's value ``values[positions[i]]`` (-1: missing), from
    ``keys`` (key -> int64 array per row). The reader sorts the rows by the first key, then
    ``position``: the order of the selector's query.
    """
    columns: frozenset[str]
    keys: tuple[str, ...]
    rows_for: Callable
    resolve: Callable


def long_frame(*, queryset_for, columns: tuple[str, ...], method: str | None = None,
               dimensions: Dimensions, uuid_text: bool = False, categorical: bool = False,
               using: str = "default") -> pd.DataFrame:
    """The frame of ``columns``; ``queryset_for(columns)`` gives the selector's ordered queryset (the
    cursor reader's), ``dimensions`` what the COPY reader reads instead (``Dimensions``).

    ``method``: "copy", "cursor", or None for the fastest this database offers. ``categorical``:
    text columns (and UUIDs as text, with ``uuid_text``) as pandas categoricals with sorted
    categories, the same from both readers: COPY reads them as categoricals anyway, and every
    later groupby or isin works on integer codes instead of hashing each row's text.
    """
    unknown = [c for c in columns if c not in COLUMN_KINDS]
    if unknown:
        raise ValueError(f"unknown long-format columns: {unknown}")
    if method is None:
        method = "copy" if copy_available(using=using) else "cursor"
    if method == "copy":
        if not copy_available(using=using):
            raise ValueError("the COPY reader needs PostgreSQL through psycopg2; use method='cursor'")
        frame = _by_keyed_copy(dimensions, columns, uuid_text=uuid_text, categorical=categorical, using=using)
    elif method == "cursor":
        frame = _by_cursor(queryset_for(columns), columns, uuid_text=uuid_text, using=using)
    else:
        raise ValueError(f"method must be one of {METHODS} or None, got {method!r}")
    if categorical:
        for column in _text_columns(columns, uuid_text=uuid_text):
            frame[column] = _sorted_categories(frame[column])
    return frame


def _text_columns(columns, *, uuid_text: bool) -> list[str]:
    return [c for c in columns if COLUMN_KINDS[c] == "str" or (uuid_text and COLUMN_KINDS[c] == "uuid")]


def _sorted_categories(values: pd.Series) -> pd.Series:
    """A categorical with exactly the values present as its categories, sorted, as ``str``."""
    if not isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype("category")
    codes = values.cat.codes.to_numpy()
    used = np.bincount(codes[codes >= 0], minlength=len(values.cat.categories)) > 0
    if not used.all():  # (bincount: a counting pass, where remove_unused_categories sorts every code)
        values = values.cat.remove_unused_categories()
    categories = pd.Index(sorted(values.cat.categories.astype(str)), dtype="str")
    return values.cat.rename_categories(values.cat.categories.astype("str")).cat.reorder_categories(categories)


# ---------------------------------------------------------------- COPY (PostgreSQL)

# Text cells get a one-character prefix in SQL, stripped again in pandas: COPY writes NULL as \N,
# and without the prefix a text value that is literally "\N" would come back as missing.
_PREFIX = "."


def _copy_cell(kind: str, column: str) -> str:
    value = f't."{column}"'
    if kind == "str":
        return f"'{_PREFIX}' || ({value})::text"
    if kind == "uuid":
        return f"({value})::text"
    if kind in ("bool", "boolean"):
        return f"({value})::int"
    if kind == "datetime":  # microseconds since the epoch: exact (EXTRACT gives numeric)
        return f"(EXTRACT(EPOCH FROM {value}) * 1000000)::bigint"
    return value


_READ_DTYPE = {"int": "int64", "Int64": "Int64", "bool": "int8", "boolean": "Int8", "str": "category",
               "uuid": "category", "datetime": "Int64"}


def _copy_csv(sql: str, params, *, names: list[str], dtype: dict, using: str) -> pd.DataFrame:
    """``COPY (sql) TO STDOUT`` (CSV, NULL as \\N) parsed by ``pandas.read_csv`` while it arrives.

    The COPY runs in a thread that writes into a pipe, the parser reads the other end: PostgreSQL
    formats and sends rows while pandas parses the earlier ones (both release the GIL while they
    wait or parse), instead of parsing only after the last row arrived (on 1,000,000 rows the wait
    for PostgreSQL and the parsing overlap: 0.6 s less). The thread uses the connection's own
    psycopg2 cursor, so the COPY sees this transaction, and nothing else uses the connection until
    it has finished. When the parser stops early (an error), closing the pipe makes the thread's
    next write fail; psycopg2 then ends the COPY and the connection stays usable (tested). An
    error of the COPY is raised here, as Django's exception for it.
    """
    with connections[using].cursor() as cursor:
        raw = cursor.cursor  # psycopg2's own cursor: Django's wrappers belong to this thread
        statement = f"COPY ({raw.mogrify(sql, params).decode()}) TO STDOUT WITH (FORMAT csv, NULL '\\N')"
        read_end, write_end = os.pipe()
        reader, writer = os.fdopen(read_end, "rb"), os.fdopen(write_end, "wb", buffering=1 << 20)
        failed: list[BaseException] = []

        def copy() -> None:
            try:
                raw.copy_expert(statement, writer)
            except BaseException as exc:  # raised in the caller's thread below
                failed.append(exc)
            finally:
                writer.close()

        thread = threading.Thread(target=copy, name="copy-reader", daemon=True)
        thread.start()
        try:
            frame = pd.read_csv(reader, header=None, names=names, engine="c", keep_default_na=False,
                                na_values=["\\N"], dtype=dtype)
        except pd.errors.EmptyDataError:  # no rows at all
            frame = None
        finally:
            reader.close()
            thread.join()
    if failed:
        with connections[using].wrap_database_errors:  # as Django's own: DataError, OperationalError, ...
            raise failed[0]
    if frame is None:
        frame = pd.DataFrame({name: pd.Series([], dtype=dtype.get(name, "int64")) for name in names})
    return frame


def _typed(raw: pd.DataFrame, columns, *, uuid_text: bool, categorical: bool) -> pd.DataFrame:
    """The COPY reader's columns in their kinds' dtypes (text still categorical when ``categorical``)."""
    frame = pd.DataFrame(index=pd.RangeIndex(len(raw)))
    kept = set(_text_columns(columns, uuid_text=uuid_text)) if categorical else set()
    for column in columns:
        if column in kept:  # already categorical: only the text prefix comes off (long_frame sorts)
            frame[column] = _unprefixed(raw[column]) if COLUMN_KINDS[column] == "str" else raw[column]
        else:
            frame[column] = _from_copy(raw[column], COLUMN_KINDS[column], uuid_text=uuid_text)
    return frame


def _by_keyed_copy(dimensions: Dimensions, columns, *, uuid_text: bool, categorical: bool,
                   using: str) -> pd.DataFrame:
    """The rows by COPY without their dimension columns, sorted here; those columns from
    ``dimensions.resolve``, once per key (see ``Dimensions``)."""
    from studyapp.selectors import COLUMN_SOURCES

    keys = dimensions.keys
    by_key = {c: COLUMN_SOURCES[c] for c in columns if COLUMN_SOURCES[c] in keys}  # e.g. stimulus: its id
    selected = [c for c in columns if c not in dimensions.columns and c not in by_key]
    if "position" not in selected:  # the second sort key
        selected.append("position")
    sql, params = dimensions.rows_for(tuple(selected)).query.sql_with_params()
    cells = [_copy_cell(COLUMN_KINDS[c], COLUMN_SOURCES[c]) for c in selected]
    cells += [f'COALESCE(t."{key}", -1)' for key in keys]
    names = [*selected, *keys]
    dtype = {**{c: _READ_DTYPE[COLUMN_KINDS[c]] for c in selected}, **{key: "int64" for key in keys}}
    raw = _copy_csv(f"SELECT {', '.join(cells)} FROM ({sql}) AS t", params, names=names, dtype=dtype, using=using)
    first, position = raw[keys[0]].to_numpy(), raw["position"].to_numpy()
    if not _sorted(first, position):  # often sorted already: trials are made in that order
        raw = raw.take(np.lexsort((position, first))).reset_index(drop=True)
    key_values = {key: raw[key].to_numpy() for key in keys}
    resolved = dimensions.resolve(key_values, [c for c in columns if c in dimensions.columns])
    read = _typed(raw, [c for c in selected if c in columns], uuid_text=uuid_text, categorical=categorical)
    frame = pd.DataFrame(index=pd.RangeIndex(len(raw)))
    for column in columns:
        if column in by_key:
            frame[column] = _from_values(key_values[by_key[column]], COLUMN_KINDS[column], uuid_text=uuid_text)
        elif column in resolved:
            positions, values = resolved[column]
            frame[column] = _from_dictionary(positions, values, COLUMN_KINDS[column], uuid_text=uuid_text,
                                             categorical=categorical)
        else:
            frame[column] = read[column]
    return frame


def _sorted(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether the pairs (first, second) are in ascending order (a linear pass, not a sort)."""
    step = np.diff(first)
    return bool(np.all((step > 0) | ((step == 0) & (np.diff(second) >= 0))))


def _from_dictionary(positions: np.ndarray, values: list, kind: str, *, uuid_text: bool, categorical: bool):
    """A column given as ``values[positions]`` (-1: missing), typed per ``kind`` as the readers do,
    built once per value: text as codes into its distinct values, never a string per row."""
    if kind == "uuid" and not uuid_text:
        return _uuid_column(positions, np.asarray(values, dtype=object), uuid_text=False)
    if kind == "uuid":  # as text: a categorical like the other text columns
        values = [None if v is None else str(v if isinstance(v, uuid.UUID) else uuid.UUID(str(v))) for v in values]
        kind = "str"
    if kind == "str":
        codes, uniques = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=True)
        row_codes = np.where(positions >= 0, codes[positions] if len(codes) else -1, -1)
        text = pd.Categorical.from_codes(row_codes, categories=pd.Index(uniques.astype(str), dtype="str"))
        text = pd.Series(text)
        return text if categorical else text.astype("str")
    if kind == "int":
        if np.any(positions < 0):
            raise ValueError("a column that is never missing has a row without a value")
        return np.asarray(values, dtype=np.int64)[positions]
    if kind in ("bool", "boolean"):
        if kind == "bool" and np.any(positions < 0):
            raise ValueError("a column that is never missing has a row without a value")
        small = pd.array(values, dtype="boolean")
        return np.asarray(small, dtype=bool)[positions] if kind == "bool" else small.take(positions, allow_fill=True)
    if kind == "Int64":
        return pd.array(values, dtype="Int64").take(positions, allow_fill=True)
    raise ValueError(f"column kind {kind!r} cannot be read once per key")


def _unprefixed(values: pd.Series) -> pd.Series:
    """A text column read by COPY (a categorical) without the prefix ``_copy_cell`` put on its values."""
    return values.cat.rename_categories([c[len(_PREFIX):] for c in values.cat.categories])


def _from_copy(values: pd.Series, kind: str, *, uuid_text: bool):
    if kind == "str":
        return _unprefixed(values).astype("str")
    if kind == "uuid":
        return _uuid_column(values.cat.codes.to_numpy(), values.cat.categories, uuid_text=uuid_text)
    if kind == "bool":
        return values.astype(bool)
    if kind == "boolean":
        return values.astype("boolean")
    if kind == "datetime":
        return pd.to_datetime(values, unit="us", utc=True).astype(DATETIME)
    return values


def positions_in(lookup_keys: list[int], keys: np.ndarray) -> np.ndarray:
    """For each of ``keys``, its index in ``lookup_keys``; -1 where it is not there (or is -1).

    A direct table over the keys' range when that range is small (database ids of one study
    mostly are: one array lookup per row), else a binary search."""
    if not lookup_keys or not len(keys):
        return np.full(len(keys), -1, dtype=np.int64)
    known = np.asarray(lookup_keys, dtype=np.int64)
    low, high = int(min(known.min(), keys.min())), int(max(known.max(), keys.max()))
    if high - low <= 8 * (len(known) + len(keys)):
        table = np.full(high - low + 1, -1, dtype=np.int64)
        table[known - low] = np.arange(len(known))
        return table[keys - low]
    order = np.argsort(known, kind="stable")
    at = np.minimum(np.searchsorted(known[order], keys), len(known) - 1)
    found = known[order][at] == keys
    return np.where(found, order[at], -1)


# ---------------------------------------------------------------- cursor (any database)


def _by_cursor(queryset, columns, *, uuid_text: bool, using: str) -> pd.DataFrame:
    """Rows in blocks from a cursor (server-side on PostgreSQL), each block typed column by column.

    Raw cursor values, not the ORM's converters (which cost more than the query on a million
    rows): the kinds below accept what PostgreSQL and SQLite return (UUID objects or hex text,
    aware datetimes or ISO text, booleans or 0/1).
    """
    sql, params = queryset.query.sql_with_params()
    blocks = []
    connection = connections[using]
    # Inside a transaction the named cursor streams; outside one PostgreSQL would first copy the
    # whole result (WITH HOLD) before the first block.
    with transaction.atomic(using=using), connection.chunked_cursor() as cursor:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(FETCH_ROWS):
            blocks.append(_block(rows, columns, uuid_text=uuid_text))
    if not blocks:
        return _block([], columns, uuid_text=uuid_text)
    return pd.concat(blocks, ignore_index=True) if len(blocks) > 1 else blocks[0]


def _block(rows: list[tuple], columns, *, uuid_text: bool) -> pd.DataFrame:
    values = list(zip(*rows)) if rows else [()] * len(columns)
    frame = pd.DataFrame(index=pd.RangeIndex(len(rows)))
    for column, cells in zip(columns, values):
        frame[column] = _from_values(np.array(cells, dtype=object), COLUMN_KINDS[column], uuid_text=uuid_text)
    return frame


def _from_values(cells: np.ndarray, kind: str, *, uuid_text: bool):
    if kind == "int":
        return cells.astype(np.int64)
    if kind == "Int64":
        return pd.array(cells, dtype="Int64")
    if kind == "bool":
        return cells.astype(bool)
    if kind == "boolean":
        return pd.array(cells, dtype="boolean")
    if kind == "str":
        return pd.Series(cells, dtype="object").astype("str").array
    if kind == "uuid":
        codes, uniques = pd.factorize(cells)
        return _uuid_column(codes, uniques, uuid_text=uuid_text)
    if kind == "datetime":
        return pd.to_datetime(pd.Series(cells, dtype="object"), utc=True, format="ISO8601").astype(DATETIME).array
    raise ValueError(f"unknown column kind {kind!r}")


def _uuid_column(codes: np.ndarray, uniques, *, uuid_text: bool):
    """UUIDs from factorized values (code -1 = missing), built once per distinct value."""
    parsed = [u if isinstance(u, uuid.UUID) else uuid.UUID(str(u)) for u in uniques.tolist()]
    if uuid_text:
        table = np.array([str(u) for u in parsed] + [None], dtype=object)
        return pd.array(table[codes], dtype="str")
    table = np.empty(len(parsed) + 1, dtype=object)
    table[:len(parsed)] = parsed
    return table[codes]  # code -1 picks the trailing None


# ---------------------------------------------------------------- integer matrices


def int_matrix(queryset, *, width: int, method: str | None = None, using: str = "default") -> np.ndarray:
    """The rows of a ``values_list`` query whose ``width`` columns are non-null integers, in the
    query's order, as one ``(rows, width)`` int64 array: by COPY parsed in C on PostgreSQL (no Python
    tuple per row), by a cursor in blocks elsewhere (``method`` as in ``long_frame``)."""
    try:
        sql, params = queryset.query.sql_with_params()
    except EmptyResultSet:  # e.g. ``.none()``: no SQL to run
        return np.empty((0, width), dtype=np.int64)
    connection = connections[using]
    if method is None:
        method = "copy" if copy_available(using=using) else "cursor"
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} or None, got {method!r}")
    if method == "copy":
        buffer = io.BytesIO()
        with connection.cursor() as cursor:
            inner = cursor.cursor.mogrify(sql, params).decode()  # COPY takes no parameters
            cursor.copy_expert(f"COPY ({inner}) TO STDOUT", buffer)
        if not buffer.getbuffer().nbytes:
            return np.empty((0, width), dtype=np.int64)
        buffer.seek(0)
        return pd.read_csv(buffer, sep="\t", header=None, dtype="int64", engine="c").to_numpy().reshape(-1, width)
    blocks = []
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        while block := cursor.fetchmany(FETCH_ROWS):
            blocks.append(np.array(block, dtype=np.int64).reshape(-1, width))
    return np.concatenate(blocks) if blocks else np.empty((0, width), dtype=np.int64)
