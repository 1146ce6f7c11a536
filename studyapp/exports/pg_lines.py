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

from collections.abc import Iterator, Sequence

from django.db import connections

from studyapp.exports.columns import RESPONSE_COLUMNS, Column
from studyapp.models import Study, Trial
from studyapp.selectors import COLUMN_SOURCES, TRIAL_COLUMNS, trials_long_queryset

FETCH_ROWS = 10_000


def available(*, using: str = "default") -> bool:
    """PostgreSQL with server-side cursors (a named cursor streams the lines)."""
    connection = connections[using]
    return connection.vendor == "postgresql" and not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")


def _quoted(expression: str) -> str:
    text = f"({expression})::text"
    return (f"CASE WHEN {text} ~ '[\",\\r\\n]' THEN '\"' || replace({text}, '\"', '\"\"') || '\"' "
            f"ELSE {text} END")


def _cell(column: Column, expression: str) -> str:
    """SQL giving the CSV cell text of ``expression`` (never NULL: missing is '')."""
    if column.type == "boolean":
        return f"CASE WHEN {expression} IS NULL THEN '' WHEN {expression} THEN '1' ELSE '0' END"
    if column.type == "datetime":
        return f"""COALESCE(to_char(({expression}) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), '')"""
    if column.type in ("integer", "uuid"):
        return f"COALESCE(({expression})::text, '')"
    if column.type in ("string", "categorical"):
        return f"COALESCE({_quoted(expression)}, '')"
    raise ValueError(f"column {column.name!r}: type {column.type!r} has no SQL formatting")


def _line_sql(columns: Sequence[Column]) -> str:
    by_name = {c.name: c for c in columns}
    cells = [_cell(by_name[name], f't."{COLUMN_SOURCES[name]}"') for name in TRIAL_COLUMNS]
    cells.append(_cell(by_name["attention_check"], f"t.\"task\" = '{Trial.Task.ATTENTION_CHECK.value}'"))
    cells.append(_cell(by_name["exclusion_rules"], "f.rules"))
    cells.append("COALESCE(f.excluded, '')")
    return " || ',' || ".join(cells)


def response_lines(*, study: Study, flags: dict[str, tuple[str, int]] | None) -> Iterator[str]:
    """CSV text blocks (no header) of responses.csv, formatted by PostgreSQL.

    ``flags``: str(public_id) -> (rules joined by ';', excluded 0/1), as ``rows.exclusion_flags``
    gives; None or missing participants leave both cells empty (not evaluated).
    """
    names = [c.name for c in RESPONSE_COLUMNS]
    expected = [*TRIAL_COLUMNS, "attention_check", "exclusion_rules", "excluded"]
    if names != expected:  # the spec and this SQL must describe the same file
        raise ValueError(f"responses.csv columns changed: {names} != {expected}")
    queryset = trials_long_queryset(study=study, answered_only=False, order_key=True)
    inner, params = queryset.query.sql_with_params()
    flags = flags or {}
    # A join may reorder rows: order again on the selector's keys (participant, position).
    sql = (f"SELECT {_line_sql(RESPONSE_COLUMNS)} FROM ({inner}) AS t "
           "LEFT JOIN unnest(%s::text[], %s::text[], %s::text[]) AS f(pid, rules, excluded) "
           "ON f.pid = t.\"participant_public_id\"::text "
           "ORDER BY t.\"participant_id\", t.\"position\"")
    args = (*params, list(flags), [rules for rules, _ in flags.values()],
            [str(excluded) for _, excluded in flags.values()])
    connection = connections[queryset.db]
    with connection.chunked_cursor() as cursor:
        cursor.execute(sql, args)
        while rows := cursor.fetchmany(FETCH_ROWS):
            yield "\n".join(row[0] for row in rows) + "\n"
