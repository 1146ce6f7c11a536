"""responses.csv on PostgreSQL: the database formats each row as one CSV line.

The Python path (``rows.response_rows`` + ``streaming.csv_lines``) tops out near 70,000 rows/s:
most of its time is spent turning database values into Python objects and back into text. Here
PostgreSQL formats every cell by the column's declared type (the same ``Column`` specs the
codebook is rendered from) and the server-side cursor returns one ready line per trial, streamed
in blocks: constant memory, and the same bytes as the Python path (a test compares them).

Formats, as ``columns.py`` defines them: booleans 0/1; missing as an empty cell; timestamps
ISO-8601 UTC with microseconds and ``Z``; UUIDs in canonical text; text quoted like Python's
``csv.writer`` (QUOTE_MINIMAL: only cells holding a comma, a double quote, CR or LF, with quotes
doubled).
"""
from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence

from django.db import connections

from studyapp.exports.columns import RESPONSE_COLUMNS, Column
from studyapp.exports.cursors import streaming_plan, streaming_transaction
from studyapp.exports.streaming import Echo
from studyapp.models import Study, Trial
from studyapp.selectors import COLUMN_SOURCES, TRIAL_COLUMNS, trials_long_queryset

FETCH_ROWS = 10_000


def available(*, using: str = "default") -> bool:
    """PostgreSQL with server-side cursors (a named cursor streams the lines)."""
    connection = connections[using]
    return connection.vendor == "postgresql" and not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")


def _quoted(expression: str) -> str:
    # strpos, not a regular expression: several times cheaper on a million cells.
    text = f"({expression})::text"
    special = " OR ".join(f"strpos({text}, {char}) > 0" for char in ("','", "'\"'", "chr(10)", "chr(13)"))
    return f"CASE WHEN {special} THEN '\"' || replace({text}, '\"', '\"\"') || '\"' ELSE {text} END"


def _cell(column: Column, expression: str) -> str:
    """SQL giving the CSV cell text of ``expression`` (never NULL: missing is '')."""
    if column.type == "boolean":
        return f"CASE WHEN {expression} IS NULL THEN '' WHEN {expression} THEN '1' ELSE '0' END"
    if column.type == "datetime":
        return f"""COALESCE(to_char(({expression}) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), '')"""
    if column.type in ("integer", "uuid"):
        return f"COALESCE(({expression})::text, '')"
    if column.type == "categorical":
        # Allowed values are fixed identifiers (database check constraints): nothing to quote.
        return f"COALESCE(({expression})::text, '')"
    if column.type == "string":
        return f"COALESCE({_quoted(expression)}, '')"
    raise ValueError(f"column {column.name!r}: type {column.type!r} has no SQL formatting")


def _line_sql(columns: Sequence[Column]) -> str:
    """The trial cells and the attention-check flag; the exclusion cells are appended in Python."""
    by_name = {c.name: c for c in columns}
    cells = [_cell(by_name[name], f't."{COLUMN_SOURCES[name]}"') for name in TRIAL_COLUMNS]
    cells.append(_cell(by_name["attention_check"], f"t.\"task\" = '{Trial.Task.ATTENTION_CHECK.value}'"))
    return " || ',' || ".join(cells)


def _flag_cells(flags: dict[str, tuple[str, int]], pid: str) -> str:
    """",rules,excluded" for one participant, quoted by csv.writer like every other cell."""
    rules, excluded = flags.get(pid, ("", None))
    return "," + csv.writer(Echo(), lineterminator="").writerow([rules, excluded])


def response_lines(*, study: Study, flags: dict[str, tuple[str, int]] | None) -> Iterator[str]:
    """CSV text blocks (no header) of responses.csv, formatted by PostgreSQL.

    ``flags``: str(public_id) -> (rules joined by ';', excluded 0/1), as ``rows.exclusion_flags``
    gives; None or missing participants leave both cells empty (not evaluated). They are appended
    here, once per participant: joining them in SQL would make PostgreSQL re-sort a million
    formatted lines before sending the first one. The outer ORDER BY repeats the selector's, which
    PostgreSQL satisfies from the subquery's order without sorting again: lines stream at once.
    """
    names = [c.name for c in RESPONSE_COLUMNS]
    expected = [*TRIAL_COLUMNS, "attention_check", "exclusion_rules", "excluded"]
    if names != expected:  # the spec and this SQL must describe the same file
        raise ValueError(f"responses.csv columns changed: {names} != {expected}")
    queryset = trials_long_queryset(study=study, answered_only=False, order_key=True)
    inner, params = queryset.query.sql_with_params()
    sql = (f"SELECT t.\"participant_public_id\"::text, {_line_sql(RESPONSE_COLUMNS)} FROM ({inner}) AS t "
           "ORDER BY t.\"participant_id\", t.\"position\"")
    flags = flags or {}
    current, suffix = None, ""
    # In a transaction and planned without sorting, lines leave as soon as they are joined
    # (``cursors`` says why); a sort of every line used to come first.
    with streaming_transaction(using=queryset.db), connections[queryset.db].chunked_cursor() as cursor:
        with streaming_plan(using=queryset.db):
            cursor.execute(sql, params)
        while rows := cursor.fetchmany(FETCH_ROWS):
            lines = []
            for pid, line in rows:
                if pid != current:  # rows come ordered by participant: one lookup each
                    current, suffix = pid, _flag_cells(flags, pid)
                lines.append(line + suffix)
            yield "\n".join(lines) + "\n"
