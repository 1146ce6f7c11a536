"""Streaming CSV in constant memory (Django's "Streaming large CSV files" recipe).

``csv.writer`` writes into a pseudo-buffer whose ``write`` just returns the line, so nothing
accumulates; lines are joined into blocks of ``BLOCK_ROWS`` before being yielded so the server
sends a few large chunks instead of one tiny chunk per row.
"""
from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence

from django.http import StreamingHttpResponse
from django.utils.http import content_disposition_header

from studyapp.exports.columns import Column, formatters

BLOCK_ROWS = 1_000


class Echo:
    """An object implementing just the write method of the file-like interface."""

    def write(self, value: str) -> str:
        return value


def csv_lines(*, columns: Sequence[Column], rows: Iterable[Sequence], block_rows: int | None = None) -> Iterator[str]:
    """Header then rows, formatted by column type, as CSV text blocks."""
    block_rows = block_rows or BLOCK_ROWS
    writer = csv.writer(Echo(), lineterminator="\n")
    width = len(columns)
    convert = formatters(columns)
    yield writer.writerow([c.name for c in columns])
    block: list[str] = []
    for row in rows:
        if len(row) != width:
            raise ValueError(f"row has {len(row)} values for {width} columns")
        if convert:
            row = list(row)
            for index, fmt in convert:
                row[index] = fmt(row[index])
        block.append(writer.writerow(row))
        if len(block) >= block_rows:
            yield "".join(block)
            block = []
    if block:
        yield "".join(block)


def csv_response(*, filename: str, columns: Sequence[Column], rows: Iterable[Sequence]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(csv_lines(columns=columns, rows=rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = content_disposition_header(as_attachment=True, filename=filename)
    # An export reflects the database at the time of the request; never serve a cached copy.
    response["Cache-Control"] = "no-store"
    return response
