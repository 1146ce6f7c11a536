"""Rows of a ``values_list`` queryset from a server-side cursor, with uuid and timestamptz as text.

``QuerySet.iterator(chunk_size=...)`` on PostgreSQL opens Django's named ("chunked") cursor and
FETCHes ``chunk_size`` rows at a time: constant memory. For a CSV export it then wastes most of its
time: psycopg2 turns every uuid into a ``uuid.UUID`` and every timestamptz into an aware
``datetime`` (through Django's tzinfo factory), only for the writer to turn them back into text.
Measured on 1,000,000 trial rows that is ~8 s of ~13 s of client time. So this module opens the
very same chunked cursor (``connection.chunked_cursor()``, so execute wrappers and query logging
still apply), runs the very same SQL (the queryset's own compiler), but registers typecasters on
that one cursor only: uuid arrives as its canonical text, timestamptz as ISO-8601 UTC text
(``2025-03-01T09:00:01.123456Z``, the export's format). Nothing leaks to other cursors.

Elsewhere (SQLite, psycopg 3, ``DISABLE_SERVER_SIDE_CURSORS``) it is plain ``.iterator()``, and
values are Python objects; the writers' formatters accept both spellings.

Time to the first row: every export query runs inside a transaction (``streaming_transaction``).
Outside one, Django declares its named cursors WITH HOLD (they must outlive the autocommitted
DECLARE), and PostgreSQL then computes and stores the WHOLE result before the first FETCH returns:
on a million trials that was most of the 8.7 s before the first row. And the query is planned
without sorts (``streaming_plan``): the long format is ordered by participant and position, which
the trial index gives, so rows can leave as soon as they are joined instead of after a sort of
every row.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from operator import itemgetter

from django.db import connections, transaction
from django.db.models import QuerySet

from studyapp.exports.columns import iso_utc

UUID_OID, TIMESTAMPTZ_OID = 2950, 1184  # built-in PostgreSQL type OIDs (stable)


def timestamptz_as_iso(value: str | None, cursor=None) -> str | None:
    """PostgreSQL's text output of a timestamptz (ISO DateStyle, UTC session: Django sets it) -> ISO Z."""
    if value is None:
        return None
    if value.endswith("+00") and len(value) >= 22 and value[10] == " ":
        clock = value[11:-3]  # HH:MM:SS or HH:MM:SS.f{1,6} (PostgreSQL drops trailing zeros)
        return f"{value[:10]}T{clock + '.000000' if len(clock) == 8 else clock.ljust(15, '0')}Z"
    # Another offset or an unusual value: parse it properly (raises on a non-ISO DateStyle).
    return iso_utc(datetime.fromisoformat(value))


def _casters():
    from psycopg2.extensions import new_type

    return (new_type((UUID_OID,), "EXPORT_UUID_AS_TEXT", lambda value, cursor: value),
            new_type((TIMESTAMPTZ_OID,), "EXPORT_TIMESTAMPTZ_AS_ISO", timestamptz_as_iso))


def _text_cursor_available(connection) -> bool:
    if connection.vendor != "postgresql" or connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS"):
        return False
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    return not is_psycopg3


@contextmanager
def streaming_transaction(*, using: str = "default") -> Iterator[None]:
    """A transaction around an export's reads, so that named cursors stream (no WITH HOLD copy).

    Read-only, so leaving it early (the client went away) just ends it.
    """
    with transaction.atomic(using=using):
        yield


@contextmanager
def streaming_plan(*, using: str = "default") -> Iterator[None]:
    """PostgreSQL plans what is declared inside without sorting, where it can, and without JIT.

    ``enable_sort = off`` only makes a sort look expensive: a query that cannot avoid one still
    runs. JIT compilation (seconds at a million rows' estimated cost) would also delay the first
    row. Both settings are transaction-local and restored on leaving; a cursor keeps the plan it
    was declared with. Call inside ``streaming_transaction``.
    """
    connection = connections[using]
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_sort = off; SET LOCAL jit = off")
    try:
        yield
    finally:
        if not connection.needs_rollback:
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL enable_sort TO DEFAULT; SET LOCAL jit TO DEFAULT")


def streamed(queryset: QuerySet, *, chunk_size: int) -> Iterator:
    """``queryset.iterator(chunk_size=...)`` inside a streaming transaction, planned to stream."""
    with streaming_transaction(using=queryset.db):
        rows = queryset.iterator(chunk_size=chunk_size)
        try:
            with streaming_plan(using=queryset.db):  # the iterator declares its cursor on the first row
                first = next(rows, None)
            if first is None:
                return
            yield first
            yield from rows
        finally:
            # Close the cursor inside the transaction: a reader that stops early (a client that went
            # away) would otherwise close it after the rollback, an error that aborts an outer
            # transaction.
            rows.close()


def server_side_rows(queryset: QuerySet, *, chunk_size: int) -> Iterator[tuple]:
    """The tuples ``queryset.iterator(chunk_size=...)`` would give, faster, in constant memory."""
    connection = connections[queryset.db]
    if not _text_cursor_available(connection):
        yield from streamed(queryset, chunk_size=chunk_size)
        return
    from psycopg2.extensions import register_type

    sql, params = queryset.query.get_compiler(using=queryset.db).as_sql()
    fields = list(queryset._fields)  # values_list() names, in the order the caller expects
    with streaming_transaction(using=queryset.db), connection.chunked_cursor() as cursor:
        for caster in _casters():
            register_type(caster, cursor.cursor)  # this cursor only
        with streaming_plan(using=queryset.db):
            cursor.execute(sql, params)  # a named cursor only DECLAREs; the description comes with a FETCH
        rows = cursor.fetchmany(chunk_size)
        names = [column.name for column in cursor.description]
        # Django's SELECT lists plain fields before annotations; values_list() reorders, so do we.
        order = [names.index(name) for name in fields]
        reorder = None if order == list(range(len(names))) else itemgetter(*order)
        while rows:
            yield from (map(reorder, rows) if reorder else rows)
            rows = cursor.fetchmany(chunk_size)
