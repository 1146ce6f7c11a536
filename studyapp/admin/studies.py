from __future__ import annotations

from functools import partial

from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.http import FileResponse, Http404, HttpRequest, HttpResponseBadRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from studyapp.admin.arms import ArmInline, HypothesisInline
from studyapp.admin.form_view import form_view
from studyapp.admin.external import external_freeze_view, external_import_view
from studyapp.admin.forms import DesignWidget, DeviationForm, LaunchForm, SharingForm, StudyForm
from studyapp.api.authentication import session_participant_id, session_remember
from studyapp.design import design_form_schema
from studyapp.models import (AnalysisRun, Arm, PreregistrationDeviation, Study, StudyItem, append_only,
                             append_only_refusal)
from studyapp.exports.admin_actions import EXPORT_ACTIONS
from studyapp.reports.admin_links import report_link
from studyapp.selectors import study_for_user, visible_rows
from studyapp.selectors.gallery import gallery_image, study_gallery
from studyapp.selectors.participation import study_design, study_monitor
from studyapp.selectors.plans import plan_review
from studyapp.selectors.preparation import preparation_context
from studyapp.services.participants import (participant_preview_start, participants_delete_simulated,
                                            participants_release_abandoned)
from studyapp.services.plan_checks import plan_problems
from studyapp.services.studies import (EDITABLE_STATES, sanity_failures, study_back_to_draft, study_cancel_preparation,
                                       study_close, study_duplicate, study_launch, study_prepare, study_problems,
                                       study_retry_failed_units, study_set_ingest, spotted_placebos)


class AppendOnlyAdminMixin:
    """No delete, single or bulk, of the records that are append-only, for anyone (superusers too).

    The database refuses it anyway (triggers, studyapp/models/append_only.py); the admin says why
    before trying, hides the Delete button, and turns a refusal by the database (a race) into the
    same words instead of a server error. ``refusal(obj)`` gives the words, or None when deletable.
    """

    def refusal(self, obj) -> str | None:
        raise NotImplementedError

    def has_delete_permission(self, request, obj=None) -> bool:
        return (obj is None or self.refusal(obj) is None) and super().has_delete_permission(request, obj)

    def get_actions(self, request):
        # Django's "Delete selected" asks has_delete_permission(request) without the objects.
        actions = super().get_actions(request)
        if "delete_selected" in actions:
            actions["delete_selected"] = (delete_selected_unless_append_only, "delete_selected",
                                          actions["delete_selected"][2])
        return actions

    def delete_view(self, request, object_id, extra_context=None):
        obj = self.get_object(request, unquote(object_id))
        reason = self.refusal(obj) if obj is not None else None
        if reason is None:
            try:
                return super().delete_view(request, object_id, extra_context)
            except IntegrityError as exc:  # the database refused it: the record changed meanwhile
                reason = append_only_refusal(exc)
                if reason is None:
                    raise
        self.message_user(request, f"{obj} was not deleted. {reason}", messages.ERROR)
        return HttpResponseRedirect(reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
                                            args=[obj.pk]))


def delete_selected_unless_append_only(model_admin, request, queryset):
    """Django's "Delete selected", refused as a whole (with the reasons) when one of them is
    append-only: deleting the others quietly would look like success."""
    refused = [(obj, model_admin.refusal(obj)) for obj in queryset]
    refused = [(obj, reason) for obj, reason in refused if reason is not None]
    if refused:
        names = ", ".join(str(obj) for obj, _ in refused)
        reasons = " ".join(dict.fromkeys(reason for _, reason in refused))
        model_admin.message_user(request, f"Nothing was deleted: {names}. {reasons}", messages.ERROR)
        return None
    try:
        with transaction.atomic():  # the deletion log entries go with the deletion
            return django_delete_selected(model_admin, request, queryset)
    except IntegrityError as exc:
        reason = append_only_refusal(exc)
        if reason is None:
            raise
        model_admin.message_user(request, f"Nothing was deleted. {reason}", messages.ERROR)
        return None


class StudyItemInline(admin.TabularInline):
    """The study's item sample (read-only: it is drawn and recorded by preparation)."""

    model = StudyItem
    extra = 0
    can_delete = False
    fields = ["role", "position", "stimulus", "stratum", "edits", "answer_position"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("stimulus__dataset")


class DeviationInline(admin.TabularInline):
    """Dated, explained changes after launch (recorded by studyapp.services.preregistration)."""

    model = PreregistrationDeviation
    extra = 0
    can_delete = False
    fields = readonly_fields = ["recorded_at", "hypothesis_label", "field", "before", "after", "reason", "recorded_by"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    # Append-only (database triggers too): a wrong deviation is corrected by recording another.
    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


def _run_service(model_admin, request, queryset, service, verb: str, refused: str) -> None:
    for study in queryset:
        try:
            result = service(study=study)
        except ValidationError as exc:
            # Every problem at once, one message each: a researcher fixes them in one go.
            problems = exc.messages
            if len(problems) == 1:
                model_admin.message_user(request, f"{study}: {refused}: {problems[0]}", messages.ERROR)
                continue
            model_admin.message_user(request, f"{study}: {refused}; {len(problems)} things to fix:", messages.ERROR)
            for problem in problems:
                model_admin.message_user(request, problem, messages.ERROR)
        else:
            done = result if isinstance(result, Study) else study
            link = format_html('<a href="{}">{}</a>', reverse("admin:studyapp_study_change", args=[done.pk]), done)
            model_admin.message_user(request, format_html("{}: {}.", link, verb), messages.SUCCESS)


@admin.register(Study)
class StudyAdmin(AppendOnlyAdminMixin, admin.ModelAdmin):
    form = StudyForm
    list_display = ["title", "state", "model", "dataset", "n_arms", "n_participants", "n_completed", "participant_link",
                    "report", "monitor_link"]
    list_filter = ["state", "dataset__modality"]
    search_fields = ["title", "slug", "description"]
    list_select_related = ["model", "dataset"]
    prepopulated_fields = {"slug": ["title"]}
    actions = ["prepare", "retry_failed_units", "cancel_preparation", "launch", "close", "revert_to_draft", "duplicate",
               "delete_simulated", *EXPORT_ACTIONS]
    readonly_fields = ["state", "participant_link", "report", "planner", "launch_review", "monitor_link", "gallery_link", "public_id", "frozen_sha256", "launched_at", "closed_at",
                       "preparation_summary", "item_sample_summary", "record_deviation", "owner", "collaborators",
                       "sharing"]
    inlines = [ArmInline, HypothesisInline, DeviationInline, StudyItemInline]

    class Media:
        js = ["staff/preparation.js"]  # refreshes the preparation progress while preparing

    fieldsets = [
        (None, {"fields": ["title", "slug", "description", "state", "preparation_summary", "participant_link", "report",
                           "planner", "launch_review", "gallery_link", "monitor_link"]}),
        ("Model and data", {"fields": ["model", "dataset", "seed", "config", "target_per_arm"]}),
        ("Participant texts", {"fields": ["consent_text", "instructions", "debrief_text"]}),
        ("Completion codes", {"fields": ["completion_code", "screened_out_code", "failed_checks_code"]}),
        ("Pre-registration and provenance", {"fields": ["frozen_sha256", "launched_at", "closed_at",
                                                        "record_deviation", "public_id"]}),
        ("Item sample", {"fields": ["item_sample_summary"]}),
        ("Access", {"fields": ["owner", "collaborators", "sharing"]}),
    ]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "config":
            # The typed design as a form (its JSON Schema; validated by pydantic on Prepare and
            # after each save), instead of a JSON box.
            kwargs["widget"] = DesignWidget(schema=design_form_schema())
            kwargs.setdefault("help_text", "The study design: blocks of trials, checks, questionnaire and recruitment. "
                                           "Each setting says what it does; Prepare checks the whole design.")
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def get_queryset(self, request):
        # Only the user's own and shared studies (every change list, change page, action and
        # deletion goes through here). Counts in one query for the whole change list (no N+1).
        return visible_rows(super().get_queryset(request), user=request.user).annotate(
            _arms=Count("arms", distinct=True),
            _participants=Count("participants", filter=Q(participants__simulated=False), distinct=True),
            _completed=Count("participants", filter=Q(participants__status="completed", participants__simulated=False),
                             distinct=True))

    def refusal(self, obj) -> str | None:
        return append_only.STUDY_DELETE if obj.frozen_sha256 else None

    def has_change_permission(self, request, obj=None) -> bool:
        # A launched study is shown, not edited: its plan is frozen (deviations are recorded instead).
        return (obj is None or not obj.frozen_sha256) and super().has_change_permission(request, obj)

    def has_launch_permission(self, request) -> bool:
        """For the Launch and Close actions (``permissions=["launch"]``)."""
        return request.user.has_perm("studyapp.launch_study")

    def get_actions(self, request):
        actions = super().get_actions(request)
        # The export actions (studyapp.exports.admin_actions) ask only for "view": downloads need
        # their own permission.
        if not request.user.has_perm("studyapp.export_data"):
            for action in EXPORT_ACTIONS:
                actions.pop(action.__name__, None)
        return actions

    def save_model(self, request, obj, form, change):
        if not change and obj.owner_id is None:
            obj.owner = request.user  # a new study belongs to whoever creates it
        super().save_model(request, obj, form, change)

    def get_prepopulated_fields(self, request, obj=None):
        return self.prepopulated_fields if obj is None or obj.state in EDITABLE_STATES else {}

    # What does not apply to a study whose data were collected elsewhere: it is never prepared,
    # shown to participants or monitored live.
    EXTERNAL_HIDDEN_SECTIONS = ("Participant texts", "Completion codes", "Item sample")
    EXTERNAL_HIDDEN_FIELDS = ("preparation_summary", "gallery_link", "monitor_link")

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or obj.source != Study.Source.EXTERNAL:
            return fieldsets
        return [(name, {**options, "fields": [f for f in options["fields"] if f not in self.EXTERNAL_HIDDEN_FIELDS]})
                for name, options in fieldsets if name not in self.EXTERNAL_HIDDEN_SECTIONS]

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and obj.state not in EDITABLE_STATES:
            fields += [f.name for f in Study._meta.fields if f.editable and f.name not in fields]
        elif obj is not None and obj.source == Study.Source.EXTERNAL:
            # Data collected elsewhere: no model, its items and settings come from the imported file.
            fields += [f for f in ("model", "dataset", "config") if f not in fields]
        return fields

    @admin.display(description="arms", ordering="_arms")
    def n_arms(self, obj) -> int:
        return obj._arms

    @admin.display(description="participants", ordering="_participants")
    def n_participants(self, obj) -> int:
        return obj._participants

    @admin.display(description="completed", ordering="_completed")
    def n_completed(self, obj) -> int:
        return obj._completed

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        # The arm table needs the page's width: without the navigation sidebar it fits 1280 px
        # (the breadcrumbs lead to the other lists).
        return super().changeform_view(request, object_id, form_url,
                                       {**(extra_context or {}), "is_nav_sidebar_enabled": False})

    def get_urls(self):
        extra = [path("import-external/", self.admin_site.admin_view(external_import_view),
                      name="studyapp_study_import_external"),
                 path("<int:pk>/deviation/", self.admin_site.admin_view(self.deviation_view),
                      name="studyapp_study_deviation"),
                 path("<int:pk>/launch/", self.admin_site.admin_view(self.launch_review_view),
                      name="studyapp_study_launch_review"),
                 path("<int:pk>/monitor/", self.admin_site.admin_view(self.monitor_view),
                      name="studyapp_study_monitor"),
                 path("<int:pk>/gallery/", self.admin_site.admin_view(self.gallery_view),
                      name="studyapp_study_gallery"),
                 path("<int:pk>/preparation/", self.admin_site.admin_view(self.preparation_view),
                      name="studyapp_study_preparation"),
                 path("<int:pk>/preview/", self.admin_site.admin_view(self.preview_view),
                      name="studyapp_study_preview"),
                 path("<int:pk>/gallery/<slug:kind>/<int:obj>/", self.admin_site.admin_view(self.gallery_image_view),
                      name="studyapp_study_gallery_image"),
                 path("<int:pk>/sharing/", self.admin_site.admin_view(self.sharing_view),
                      name="studyapp_study_sharing")]
        return extra + super().get_urls()

    def deviation_view(self, request: HttpRequest, pk: int):
        """Record a deviation from the frozen plan (studyapp.services.preregistration)."""
        from studyapp.services.preregistration import hypothesis_update_after_launch, study_update_after_launch

        study = study_for_user(user=request.user, pk=pk, perm="studyapp.change_study")
        labels = list(study.hypotheses.order_by("label").values_list("label", flat=True))

        def submit(data):
            kwargs = {"field": data["field"], "value": data["value"], "reason": data["reason"], "user": request.user}
            if data["target"]:
                return hypothesis_update_after_launch(hypothesis=study.hypotheses.get(label=data["target"]), **kwargs)
            return study_update_after_launch(study=study, **kwargs)

        return form_view(self, request, submit_label="Record the deviation", form_class=partial(DeviationForm, hypothesis_labels=labels),
                          title=f"Record a deviation from the plan of {study}", submit=submit,
                          done_url=reverse("admin:studyapp_study_change", args=[study.pk]))

    def launch_review_view(self, request: HttpRequest, pk: int):
        """The plan as Launch freezes it (or as it was frozen), then Launch with a confirmation and,
        for a failed sanity check, an acknowledgement recorded with the plan."""
        study = study_for_user(user=request.user, pk=pk)
        if study.source == Study.Source.EXTERNAL:  # never launched: its plan is frozen after the import
            return external_freeze_view(self, request, study)
        launched = bool(study.frozen_sha256)
        failures = [] if launched else sanity_failures(study=study)
        spotted = [] if launched else spotted_placebos(study=study)
        problems = [] if launched else plan_problems(study=study)
        can_launch = (study.state == Study.State.READY and not problems
                      and request.user.has_perm("studyapp.launch_study"))
        form = LaunchForm(request.POST if request.method == "POST" else None, failures=failures, spotted=spotted)
        if request.method == "POST":
            if not can_launch:
                raise PermissionDenied
            if form.is_valid():
                try:
                    study_launch(study=study, acknowledge_sanity_failures=form.cleaned_data["acknowledge_sanity_failures"],
                                 acknowledge_spotted_placebos=form.cleaned_data["acknowledge_spotted_placebos"],
                                 by=request.user.get_username())
                except ValidationError as exc:
                    for message in exc.messages:
                        form.add_error(None, message)
                else:
                    self.message_user(request, f"{study} is live: its plan is frozen.", messages.SUCCESS)
                    return HttpResponseRedirect(reverse("admin:studyapp_study_launch_review", args=[study.pk]))
        context = {**self.admin_site.each_context(request), "opts": Study._meta, "study": study,
                   "title": f"The frozen plan of {study}" if launched else f"Launch review: {study}",
                   "review": plan_review(study=study), "problems": problems, "failures": failures, "spotted": spotted,
                   "form": form,
                   "can_launch": can_launch}
        return TemplateResponse(request, "admin/studyapp/launch_review.html", context)

    def monitor_view(self, request: HttpRequest, pk: int):
        """The live monitor: who is where, per arm, refreshed every 5 s; pause or resume new
        participants for the study or one arm."""
        study = study_for_user(user=request.user, pk=pk, perm="studyapp.launch_study" if request.method == "POST"
                               else "studyapp.view_results")
        if request.method == "POST":
            paused = request.POST.get("paused") == "1"
            arm = study.arms.filter(pk=request.POST.get("arm") or 0).first()
            try:
                study_set_ingest(study=study, paused=paused, arm=arm)
            except ValidationError as exc:
                self.message_user(request, " ".join(exc.messages), messages.ERROR)
            else:
                what = f"arm {arm.name}" if arm else "the study"
                self.message_user(request, f"New participants {'paused' if paused else 'resumed'} for {what}.",
                                  messages.SUCCESS)
            return HttpResponseRedirect(request.path)
        if study.state == Study.State.LIVE:
            # Slots of participants gone past the abandonment timeout are released now, not only
            # when the next person enrolls, so the counts shown are the counts assignment uses.
            participants_release_abandoned(study=study, design=study_design(study=study))
        context = {**self.admin_site.each_context(request), "opts": Study._meta, "study": study,
                   "title": f"Live monitor: {study}", "monitor": study_monitor(study=study)}
        template = "admin/studyapp/_monitor.html" if request.GET.get("fragment") else "admin/studyapp/monitor.html"
        response = TemplateResponse(request, template, context)
        response["Cache-Control"] = "no-store"
        return response

    def preparation_view(self, request: HttpRequest, pk: int):
        """The preparation's progress (a fragment the study and report pages refresh every 3 s);
        POST: "Retry failed units" or "Cancel preparation"."""
        study = study_for_user(user=request.user, pk=pk)
        can_change = request.user.has_perm("studyapp.change_study")
        if request.method == "POST":
            if not can_change:
                raise PermissionDenied
            service = {"retry": study_retry_failed_units, "cancel": study_cancel_preparation}.get(request.POST.get("do"))
            if service is None:
                return HttpResponseBadRequest("Say what to do: retry or cancel.")
            _run_service(self, request, Study.objects.filter(pk=study.pk), service,
                         "failed units sent again" if service is study_retry_failed_units else "preparation cancelled",
                         "not changed")
            return HttpResponseRedirect(reverse("admin:studyapp_study_change", args=[pk]))
        response = TemplateResponse(request, "admin/studyapp/_preparation.html",
                                    preparation_context(study=study, can_change=can_change))
        response["Cache-Control"] = "no-store"
        return response

    def gallery_view(self, request: HttpRequest, pk: int):
        """After Prepare: every arm's aid for the same sampled items, edits and sanity verdicts."""
        study = study_for_user(user=request.user, pk=pk)
        if study.source == Study.Source.EXTERNAL:
            self.message_user(request, f"{study} holds data collected elsewhere: there are no aids or items here to "
                                       "show side by side.", messages.INFO)
            return HttpResponseRedirect(reverse("admin:studyapp_study_change", args=[study.pk]))
        context = {**self.admin_site.each_context(request), "opts": Study._meta, "study": study,
                   "title": f"Arm gallery: {study}", "gallery": study_gallery(study=study)}
        return TemplateResponse(request, "admin/studyapp/gallery.html", context)

    def gallery_image_view(self, request: HttpRequest, pk: int, kind: str, obj: int):
        """Staff-only images of the gallery (not public media)."""
        study = study_for_user(user=request.user, pk=pk)
        image = gallery_image(study=study, kind=kind, pk=obj)
        if image is None:
            raise Http404("No such image in this study's item sample.")
        return FileResponse(image.open("rb"), content_type="image/png")

    def preview_view(self, request: HttpRequest, pk: int):
        """"Preview as participant": a staff walk through the real pages of a chosen arm."""
        study = study_for_user(user=request.user, pk=pk)
        can_preview = study.state in (Study.State.READY, Study.State.LIVE)
        if request.method == "POST":
            arm = get_object_or_404(Arm, pk=request.POST.get("arm") or 0, study=study)
            try:
                participant = participant_preview_start(
                    study=study, arm=arm, replaces=session_participant_id(request, study.public_id),
                    by=request.user.get_username())
            except ValidationError as exc:
                self.message_user(request, " ".join(exc.messages), messages.ERROR)
                return HttpResponseRedirect(request.path)
            session_remember(request, study.public_id, participant)
            return HttpResponseRedirect(reverse("study-session", args=[study.public_id]))
        context = {**self.admin_site.each_context(request), "opts": Study._meta, "study": study,
                   "title": f"Preview as participant: {study}", "can_preview": can_preview,
                   "arms": study.arms.order_by("position", "id")}
        return TemplateResponse(request, "admin/studyapp/preview.html", context)

    def sharing_view(self, request: HttpRequest, pk: int):
        """Who has access: the owner names collaborators; a superuser may also change the owner.
        Open in every state: a live or closed study is shared with a new analyst too."""
        study = study_for_user(user=request.user, pk=pk)
        superuser = request.user.is_superuser
        if not (superuser or study.owner_id == request.user.pk):
            raise PermissionDenied
        initial = {"owner": study.owner_id, "collaborators": list(study.collaborators.values_list("pk", flat=True))}

        def submit(data):
            with transaction.atomic():
                if superuser:
                    study.owner = data["owner"]
                    study.save(update_fields=["owner", "updated_at"])
                # The owner sees the study anyway; listing them as a collaborator too would keep them
                # in after a hand-over.
                study.collaborators.set([user for user in data["collaborators"] if user.pk != study.owner_id])
            return study

        return form_view(self, request, form_class=partial(SharingForm, can_change_owner=superuser, initial=initial),
                         title=f"Who has access to {study}", submit=submit, submit_label="Save who has access",
                         done_url=reverse("admin:studyapp_study_change", args=[study.pk]),
                         done_message=f"Access to {study} saved.")

    @admin.display(description="sharing")
    def sharing(self, obj) -> str:
        if obj is None or obj.pk is None:
            return "The study is yours once saved; then you can name collaborators."
        # The link stands alone (axe: a link inside text must not rely on colour alone).
        return format_html('<a href="{}">Change who has access</a><div class="help">The owner or a superuser '
                           'may change it.</div>', reverse("admin:studyapp_study_sharing", args=[obj.pk]))

    @admin.display(description="gallery")
    def gallery_link(self, obj) -> str:
        if obj is None or obj.pk is None or not obj.item_sample:
            return "After Prepare"
        return format_html('<a href="{}">Every arm side by side</a> · <a href="{}">Preview as participant</a>',
                           reverse("admin:studyapp_study_gallery", args=[obj.pk]),
                           reverse("admin:studyapp_study_preview", args=[obj.pk]))

    @admin.display(description="monitor")
    def monitor_link(self, obj) -> str:
        if obj is None or obj.pk is None or obj.state not in (Study.State.LIVE, Study.State.CLOSED):
            return "Once the study is live"
        return format_html('<a href="{}">Live monitor</a>', reverse("admin:studyapp_study_monitor", args=[obj.pk]))

    @admin.display(description="plan")
    def launch_review(self, obj) -> str:
        if obj is None or obj.pk is None:
            return "—"
        label = ("The frozen plan, readable" if obj.frozen_sha256 else "Review the plan and freeze it"
                 if obj.source == Study.Source.EXTERNAL else "Review the plan and launch")
        return format_html('<a href="{}">{}</a>', reverse("admin:studyapp_study_launch_review", args=[obj.pk]), label)

    @admin.display(description="deviations")
    def record_deviation(self, obj) -> str:
        if obj is None or obj.pk is None or obj.state not in (Study.State.LIVE, Study.State.CLOSED):
            return "Deviations can be recorded once the study is launched."
        return format_html('<a href="{}">Record a dated deviation from the frozen plan</a>',
                           reverse("admin:studyapp_study_deviation", args=[obj.pk]))

    @admin.display(description="planner")
    def planner(self, obj) -> str:
        if obj is None or obj.pk is None:
            return "After the first save"
        return format_html('<a href="{}?study={}">Sample size and power for this design</a>', reverse("report-planner"),
                           obj.pk)

    @admin.display(description="report")
    def report(self, obj) -> str:
        return "—" if obj is None or obj.pk is None else report_link(obj)

    @admin.display(description="preparation")
    def preparation_summary(self, obj) -> str:
        """Progress per step (refreshed while preparing), errors and sanity-check verdicts (the
        full reports are on the report page)."""
        if obj is None or obj.pk is None:
            return "not prepared yet"
        prep = obj.preparation or {}
        progress = render_to_string("admin/studyapp/_preparation.html", preparation_context(study=obj))
        lines = []
        for arm, n in (prep.get("explanations_created") or {}).items():
            lines.append(f"arm {arm}: {n} new explanations")
        for method, report in (prep.get("sanity") or {}).items():
            lines.append(f"sanity check {method}: {report.get('verdict')}")
        return progress + format_html_join("", "<div>{}</div>", ((line,) for line in lines))

    @admin.display(description="item sample")
    def item_sample_summary(self, obj) -> str:
        """The recorded draw: seed, pool, counts per role and stratum, and any stratum that ran short."""
        record = obj.item_sample or {}
        if not record:
            return "drawn at preparation"
        lines = [f"seed {record.get('seed')}, pool of {record.get('pool_size')} test items, "
                 f"model-error share {record.get('model_error_share')}"]
        for role, counts in (record.get("counts") or {}).items():
            lines.append(f"{role}: " + ", ".join(f"{stratum}: {n}" for stratum, n in counts.items()))
        for role, notes in (record.get("notes") or {}).items():
            lines += [f"{role}: {note}" for note in notes]
        return format_html_join("", "<div>{}</div>", ((line,) for line in lines))

    @admin.display(description="participant link")
    def participant_link(self, obj) -> str:
        if obj is None or obj.pk is None:
            return "—"
        if obj.source == Study.Source.EXTERNAL:
            return "None: the data were collected elsewhere"
        url = reverse("study-landing", args=[obj.public_id])
        return format_html('<a href="{}">{}</a>', url, url)

    @admin.action(description="Prepare selected studies (predict, compute explanations)", permissions=["change"])
    def prepare(self, request, queryset):
        _run_service(self, request, queryset, study_prepare, "preparation started", "not prepared")

    @admin.action(description="Launch: review the plan, confirm, freeze it and open the study", permissions=["launch"])
    def launch(self, request, queryset):
        """Launch is confirmed on the study's Launch review page (one study at a time)."""
        studies = list(queryset[:2])
        if len(studies) != 1:
            self.message_user(request, "Select one study to launch: each plan is reviewed and confirmed on its own.",
                              messages.WARNING)
            return None
        return HttpResponseRedirect(reverse("admin:studyapp_study_launch_review", args=[studies[0].pk]))

    @admin.action(description="Revert selected prepared studies to draft (to change them before launch)",
                  permissions=["change"])
    def revert_to_draft(self, request, queryset):
        _run_service(self, request, queryset, study_back_to_draft, "back to draft", "not reverted")

    @admin.action(description="Retry the failed preparation units of selected studies", permissions=["change"])
    def retry_failed_units(self, request, queryset):
        _run_service(self, request, queryset, study_retry_failed_units, "failed units sent again", "not retried")

    @admin.action(description="Cancel preparation of selected studies (back to draft; finished work is kept)",
                  permissions=["change"])
    def cancel_preparation(self, request, queryset):
        _run_service(self, request, queryset, study_cancel_preparation, "preparation cancelled", "not cancelled")

    @admin.action(description="Duplicate selected studies (a new draft with the same design, arms and hypotheses)",
                  permissions=["add"])
    def duplicate(self, request, queryset):
        # The copy is the new study of whoever made it (and shared with no one yet).
        _run_service(self, request, queryset, partial(study_duplicate, owner=request.user), "duplicated as a new draft",
                     "not duplicated")

    def save_related(self, request, form, formsets, change):
        """After each save of a draft (arms and hypotheses included): what still stands between it
        and Prepare, every problem at once. A draft may be incomplete; Prepare refuses it."""
        super().save_related(request, form, formsets, change)
        study = form.instance
        if study.state == Study.State.DRAFT:
            problems = study_problems(study=study)
            if problems:
                step = "its plan can be frozen" if study.source == Study.Source.EXTERNAL else "this study can be prepared"
                self.message_user(request, f"Saved. Before {step}, fix {len(problems)} "
                                           f"thing{'s' if len(problems) > 1 else ''}:", messages.WARNING)
                for problem in problems:
                    self.message_user(request, problem, messages.WARNING)

    @admin.action(description="Close selected studies", permissions=["launch"])
    def close(self, request, queryset):
        _run_service(self, request, queryset, study_close, "closed", "not closed")

    @admin.action(description="Delete the simulated participants of selected studies", permissions=["change"])
    def delete_simulated(self, request, queryset):
        for study in queryset:
            n = participants_delete_simulated(study=study)
            self.message_user(request, f"{study}: {n} simulated participants deleted.", messages.SUCCESS)


@admin.register(AnalysisRun)
class AnalysisRunAdmin(AppendOnlyAdminMixin, admin.ModelAdmin):
    """Runs are stored by the analysis service; confirmatory ones are append-only, exploratory
    ones may be deleted. None is edited."""

    list_display = ["__str__", "study", "kind", "number", "seed", "created_at", "plan_sha256"]
    list_filter = ["kind"]
    list_select_related = ["study"]
    search_fields = ["study__title"]
    exclude = ["results", "software"]
    readonly_fields = ["study", "kind", "number", "seed", "plan_sha256", "created_at"]

    def get_queryset(self, request):
        # "look k of n" in every row without a query per row.
        looks = (AnalysisRun.objects.filter(study=OuterRef("study"), kind=AnalysisRun.Kind.CONFIRMATORY)
                 .order_by().values("study").annotate(n=Count("pk")).values("n"))
        return visible_rows(super().get_queryset(request), user=request.user, study_path="study").annotate(
            _looks=Coalesce(Subquery(looks), 0))

    def refusal(self, obj) -> str | None:
        return append_only.RUN_DELETE if obj.kind == AnalysisRun.Kind.CONFIRMATORY else None

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
