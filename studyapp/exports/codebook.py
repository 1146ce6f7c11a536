"""The codebook: every column of every export, rendered from the same Column objects the writers use."""
from __future__ import annotations

from django.utils.html import format_html, format_html_join

from studyapp.exports.columns import EXPORTS, MISSING, TYPES, export_columns
from studyapp.models import Study


def codebook_rows(*, study: Study | None) -> list[tuple[str, str, str, str, str, str]]:
    """(file, column, type, unit, meaning, allowed_values) for every column of every export."""
    return [
        (suffix, c.name, c.type, c.unit, c.meaning, c.allowed_values)
        for suffix, columns in export_columns(study=study).items()
        for c in columns
    ]


def codebook_document(*, study: Study | None) -> dict:
    """The codebook as JSON-able data: conventions, then files with their columns."""
    columns = export_columns(study=study)
    return {
        "study": study.slug if study is not None else None,
        "conventions": {"missing": MISSING, "types": TYPES, "encoding": "UTF-8, comma-separated, header row"},
        "files": [
            {"file": spec.suffix, "file_name": f"{study.slug}_{spec.suffix}" if study is not None else spec.suffix,
             "description": spec.description,
             "columns": [{"name": c.name, "type": c.type, "unit": c.unit, "meaning": c.meaning,
                          "allowed_values": list(c.allowed) if c.allowed else c.range} for c in columns[spec.suffix]]}
            for spec in EXPORTS.values()
        ],
    }


def codebook_html(*, study: Study | None) -> str:
    """A self-contained, escaped HTML rendering of the codebook."""
    document = codebook_document(study=study)
    sections = format_html_join(
        "\n", "<h2>{}</h2><p>{}</p><table><thead><tr><th>column</th><th>type</th><th>unit</th><th>meaning</th>"
              "<th>allowed values</th></tr></thead><tbody>{}</tbody></table>",
        ((f["file_name"], f["description"], format_html_join(
            "", "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((c["name"], c["type"], c["unit"], c["meaning"],
              " | ".join(c["allowed_values"]) if isinstance(c["allowed_values"], list) else c["allowed_values"])
             for c in f["columns"])))
         for f in document["files"]),
    )
    types = format_html_join("", "<li><code>{}</code>: {}</li>", TYPES.items())
    return format_html(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Codebook {}</title>"
        "<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}"
        "td,th{{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}}</style></head>"
        "<body><h1>Codebook: {}</h1><p>{}</p><ul>{}</ul>{}</body></html>",
        document["study"] or "", document["study"] or "all studies", MISSING, types, sections,
    )
