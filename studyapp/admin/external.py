"""Studies whose data were collected elsewhere: the upload page and the Freeze page.

* ``/admin/studyapp/study/import-external/``: a long-format CSV (the columns are documented in
  ``studyapp.services.external_import``) becomes a draft study with its arms and participants
  (``external_study_import``). Needs "add study", like the study add page.
* The plan page of an imported study (``StudyAdmin.launch_review_view`` hands it here): the plan
  as Freeze would freeze it, what stands in its way, and Freeze (``study_freeze_external``), which
  needs "launch study" like Launch.

Thin: authorize, parse the form, call the service, say what happened.
"""
from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from studyapp.models import Study
from studyapp.selectors.plans import plan_review
from studyapp.services.external_import import (COUNTERFACTUAL_TASKS, MAX_COLUMNS, MAX_ROWS, arm_names_parse,
                                               external_plan_problems, external_study_import)
from studyapp.services.studies import study_freeze_external


class ExternalImportForm(forms.Form):
    title = forms.CharField(max_length=200)
    slug = forms.SlugField(max_length=80, required=False, help_text="Leave empty to make one from the title.")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False,
                                  help_text="For experimenters only: where and when the data were collected.")
    data_file = forms.FileField(label="Data file (CSV)", help_text=f"UTF-8, one row per trial, at most "
                                f"{MAX_ROWS:,} rows and {MAX_COLUMNS} columns (the columns are listed below).")
    control = forms.CharField(max_length=80, required=False, label="Control condition",
                              help_text="The condition (as written in the file) whose participants saw no aid: "
                                        "hypotheses compare the other arms with it. Leave empty when there is none.")
    arm_names = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False,
                                help_text="Optional: one line per condition, code = name (for example "
                                          "2 = natural images). Unnamed conditions keep their code as name.")
    n_options = forms.IntegerField(min_value=2, max_value=32_767, required=False, label="Options per trial",
                                   help_text="For rows without n_options: how many options each trial offered "
                                             "(2 for a yes/no choice). It sets the chance level.")
    exclusion_rules = forms.JSONField(required=False, initial=dict,
                                      help_text='Optional, frozen with the plan, e.g. {"straightlining_max_run": 12} '
                                                "(the rules that need times or attention checks do not apply to "
                                                "data collected elsewhere).")

    def clean_data_file(self):
        upload = self.cleaned_data["data_file"]
        limit = settings.MAX_UPLOAD_MB * 1024 * 1024
        if upload.size > limit:
            raise forms.ValidationError(f"The file is {upload.size / (1024 * 1024):.1f} MB; the limit is "
                                        f"{settings.MAX_UPLOAD_MB} MB (setting MAX_UPLOAD_MB).")
        return upload

    def clean_arm_names(self) -> dict[str, str]:
        try:
            return arm_names_parse(self.cleaned_data.get("arm_names") or "")
        except ValidationError as exc:
            raise forms.ValidationError(exc.messages) from None

    def clean_exclusion_rules(self) -> dict:
        rules = self.cleaned_data.get("exclusion_rules") or {}
        if not isinstance(rules, dict):
            raise forms.ValidationError('Write the rules as an object, for example {"straightlining_max_run": 12}.')
        return rules


def _admin_context(request: HttpRequest, title: str) -> dict:
    return {**admin.site.each_context(request), "title": title, "opts": Study._meta}


def external_import_view(request: HttpRequest):
    """The upload page: a valid POST imports the file and opens the new study's page."""
    if not request.user.has_perm("studyapp.add_study"):
        raise PermissionDenied
    form = ExternalImportForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        upload = data["data_file"]
        try:
            study = external_study_import(
                file=upload, file_name=upload.name, title=data["title"], slug=data["slug"],
                description=data["description"], control=data["control"], arm_names=data["arm_names"],
                default_options=data["n_options"], exclusion_rules=data["exclusion_rules"], owner=request.user)
        except ValidationError as exc:
            for message in exc.messages:
                form.add_error(None, message)
        else:
            record = study.external_import
            arms = ", ".join(f"{a.name} ({a.participants.count()})" for a in study.arms.order_by("position"))
            messages.success(request, f"Imported {record.n_rows:,} rows of {record.file_name} (SHA-256 "
                                      f"{record.file_sha256}): {record.n_participants} participants in arms {arms}; "
                                      f"{record.n_items} items. Add the hypotheses, then freeze the plan.")
            if record.ignored_columns:
                messages.info(request, f"Columns not read: {', '.join(record.ignored_columns)}.")
            if not record.settings.get("answers_from_file"):
                messages.warning(request, "The file has no response column: each stored answer is whether it was "
                                          "right (1) or wrong (0).")
            return HttpResponseRedirect(reverse("admin:studyapp_study_change", args=[study.pk]))
    context = {**_admin_context(request, "Import a study whose data were collected elsewhere"), "form": form,
               "max_rows": MAX_ROWS, "max_columns": MAX_COLUMNS, "counterfactual_tasks": COUNTERFACTUAL_TASKS}
    return TemplateResponse(request, "admin/studyapp/external_import.html", context)


class FreezeForm(forms.Form):
    confirm = forms.BooleanField(label="I have read this plan. Freezing it records it with its SHA-256 and the time; "
                                       "after that it changes only by dated deviations.")


def external_freeze_view(model_admin: admin.ModelAdmin, request: HttpRequest, study: Study):
    """The plan of an imported study as Freeze freezes it (or as it was frozen), then Freeze."""
    frozen = bool(study.frozen_sha256)
    problems = [] if frozen else external_plan_problems(study=study)
    can_freeze = (study.state == Study.State.DRAFT and not problems
                  and request.user.has_perm("studyapp.launch_study"))
    form = FreezeForm(request.POST if request.method == "POST" else None)
    if request.method == "POST":
        if not can_freeze:
            raise PermissionDenied
        if form.is_valid():
            try:
                study_freeze_external(study=study)
            except ValidationError as exc:
                for message in exc.messages:
                    form.add_error(None, message)
            else:
                model_admin.message_user(request, f"The plan of {study} is frozen; run the analysis from its report.",
                                         messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:studyapp_study_launch_review", args=[study.pk]))
    context = {**_admin_context(request, f"The frozen plan of {study}" if frozen else f"Freeze the plan: {study}"),
               "study": study, "review": plan_review(study=study), "problems": problems, "form": form,
               "can_freeze": can_freeze, "record": getattr(study, "external_import", None)}
    return TemplateResponse(request, "admin/studyapp/external_freeze.html", context)
