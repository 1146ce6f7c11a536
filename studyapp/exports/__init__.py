"""Tidy exports for analysts: responses (long), participants (wide), hypotheses + results, a codebook
generated from the same column spec the writers use, and a provenance manifest.

Public API (keyword-only):

- ``files.export_response(study=, kind=)`` -> the HTTP response for one kind (``files.KINDS``)
- ``rows.response_rows / participant_rows / hypothesis_rows(study=)`` -> raw row tuples
- ``streaming.csv_lines(columns=, rows=)`` -> CSV text blocks, formatted by column type
- ``cursors.server_side_rows(queryset, chunk_size=)`` -> a values_list queryset's rows from a
  server-side cursor, uuid/timestamptz as text (PostgreSQL; ``.iterator()`` elsewhere)
- ``cursors.streamed(queryset, chunk_size=)`` -> ``.iterator()`` that streams from the first row:
  in a transaction (no WITH HOLD copy of the result) and planned without sorting every row
- ``admin_actions.EXPORT_ACTIONS`` -> admin actions for StudyAdmin (one selected study)
- ``codebook.codebook_rows / codebook_document / codebook_html(study=)``
- ``manifest.manifest_build(study=)`` -> provenance dict
- ``columns.export_columns(study=)`` -> the declarative column spec of every file
"""
