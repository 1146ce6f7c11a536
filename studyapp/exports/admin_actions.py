"""Admin actions for StudyAdmin: download an export of ONE selected study.

Wire them in with ``actions = [..., export_responses_csv, ...]`` (functions, not method names).
Each one refuses a selection of zero or several studies with a message instead of guessing.
"""
from __future__ import annotations

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponseBase

from studyapp.exports.files import export_response


def _single_study_export(modeladmin, request: HttpRequest, queryset, *, kind: str) -> HttpResponseBase | None:
    studies = list(queryset[:2])
    if len(studies) != 1:
        modeladmin.message_user(request, "Select exactly one study to export.", messages.WARNING)
        return None
    return export_response(study=studies[0], kind=kind)


@admin.action(description="Export responses (long CSV) of the selected study", permissions=["view"])
def export_responses_csv(modeladmin, request, queryset):
    return _single_study_export(modeladmin, request, queryset, kind="responses")


@admin.action(description="Export participants (wide CSV) of the selected study", permissions=["view"])
def export_participants_csv(modeladmin, request, queryset):
    return _single_study_export(modeladmin, request, queryset, kind="participants")


@admin.action(description="Export hypotheses and results (CSV) of the selected study", permissions=["view"])
def export_hypotheses_csv(modeladmin, request, queryset):
    return _single_study_export(modeladmin, request, queryset, kind="hypotheses")


@admin.action(description="Export the codebook (CSV) of the selected study", permissions=["view"])
def export_codebook_csv(modeladmin, request, queryset):
    return _single_study_export(modeladmin, request, queryset, kind="codebook")


@admin.action(description="Export the provenance manifest (JSON) of the selected study", permissions=["view"])
def export_manifest_json(modeladmin, request, queryset):
    return _single_study_export(modeladmin, request, queryset, kind="manifest")


EXPORT_ACTIONS = (export_responses_csv, export_participants_csv, export_hypotheses_csv, export_codebook_csv,
                  export_manifest_json)
