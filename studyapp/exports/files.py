"""One entry point per export file: ``export_response(study=..., kind=...)`` returns the HTTP response.

Views, the DRF API and the admin actions all call this, so every way of downloading gives the same
bytes. File names carry the study slug and the export name only (never arm names or class labels).
"""
from __future__ import annotations

import json
from itertools import chain

from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.utils.http import content_disposition_header

from studyapp.exports.codebook import codebook_document, codebook_html, codebook_rows
from studyapp.exports.columns import (CODEBOOK_COLUMNS, EXPORTS, HYPOTHESIS_COLUMNS, ITEM_COLUMNS, RESPONSE_COLUMNS,
                                      participant_columns)
from studyapp.exports.manifest import manifest_build
from studyapp.exports import pg_lines
from studyapp.exports.rows import (exclusion_flags, hypothesis_rows, item_rows, likert_items, participant_rows,
                                   response_rows)
from studyapp.exports.streaming import csv_header, csv_response, csv_text_response
from studyapp.models import Study

# kind -> file suffix of every download: the exports (columns.EXPORTS), each followed by the other
# renderings of its document ("codebook_json" and "codebook_html" of the codebook).
FILES: dict[str, str] = {kind: suffix for spec in EXPORTS.values()
                         for kind, suffix in ((spec.kind, spec.suffix), *spec.renderings)}
KINDS = tuple(FILES)


def export_filename(*, study: Study, kind: str) -> str:
    return f"{study.slug}_{FILES[kind]}"


def _attachment(response: HttpResponse, filename: str) -> HttpResponse:
    response["Content-Disposition"] = content_disposition_header(as_attachment=True, filename=filename)
    response["Cache-Control"] = "no-store"
    return response


def responses_csv(*, study: Study) -> StreamingHttpResponse:
    filename = export_filename(study=study, kind="responses")
    if pg_lines.available():
        # PostgreSQL formats the lines (same bytes, about twice the rows per second).
        flags = exclusion_flags(study=study)  # before streaming: a failure is an error, not a cut-off CSV
        blocks = chain([csv_header(RESPONSE_COLUMNS)], pg_lines.response_lines(study=study, flags=flags))
        return csv_text_response(filename=filename, blocks=blocks)
    return csv_response(filename=filename, columns=RESPONSE_COLUMNS, rows=response_rows(study=study))


def participants_csv(*, study: Study) -> StreamingHttpResponse:
    items = likert_items(study=study)
    return csv_response(filename=export_filename(study=study, kind="participants"),
                        columns=participant_columns(likert_items=items), rows=participant_rows(study=study, items=items))


def hypotheses_csv(*, study: Study) -> StreamingHttpResponse:
    return csv_response(filename=export_filename(study=study, kind="hypotheses"), columns=HYPOTHESIS_COLUMNS,
                        rows=hypothesis_rows(study=study))


def codebook_csv(*, study: Study) -> StreamingHttpResponse:
    return csv_response(filename=export_filename(study=study, kind="codebook"), columns=CODEBOOK_COLUMNS,
                        rows=codebook_rows(study=study))


def _json(*, data: dict, filename: str) -> HttpResponse:
    body = json.dumps(data, cls=DjangoJSONEncoder, indent=2, sort_keys=False, allow_nan=False)
    return _attachment(HttpResponse(body, content_type="application/json"), filename)


def export_response(*, study: Study, kind: str) -> HttpResponseBase:
    """The download for one export kind (see FILES). Raises KeyError for an unknown kind."""
    if kind == "responses":
        return responses_csv(study=study)
    if kind == "participants":
        return participants_csv(study=study)
    if kind == "hypotheses":
        return hypotheses_csv(study=study)
    if kind == "items":
        return csv_response(filename=export_filename(study=study, kind=kind), columns=ITEM_COLUMNS,
                            rows=item_rows(study=study))
    if kind == "codebook":
        return codebook_csv(study=study)
    if kind == "codebook_json":
        return _json(data=codebook_document(study=study), filename=export_filename(study=study, kind=kind))
    if kind == "codebook_html":
        # Rendered for reading in the browser: inline, not an attachment.
        response = HttpResponse(codebook_html(study=study), content_type="text/html; charset=utf-8")
        response["Cache-Control"] = "no-store"
        return response
    if kind == "manifest":
        return _json(data=manifest_build(study=study), filename=export_filename(study=study, kind=kind))
    raise KeyError(kind)
