from __future__ import annotations

from django.contrib import admin

from studyapp.admin.data import ReadOnlyAdmin
from studyapp.models import Participant, Response, Trial
from studyapp.selectors import studies_visible_to, visible_rows


def study_filter(path: str) -> type[admin.SimpleListFilter]:
    """A "By study" filter that offers only the studies the user may see (Django's would list every
    study's title). ``path``: the lookup from a row to its study."""

    class StudyFilter(admin.SimpleListFilter):
        title = "study"
        parameter_name = f"{path}__id__exact"

        def lookups(self, request, model_admin):
            return list(studies_visible_to(user=request.user).order_by("title").values_list("pk", "title"))

        def queryset(self, request, queryset):
            value = self.value()
            return queryset.filter(**{f"{path}_id": value}) if value and value.isdigit() else queryset

    return StudyFilter


class StudyRowsAdmin(ReadOnlyAdmin):
    """Rows that belong to a study: shown only to those who may see the study."""

    study_path = "study"

    def get_queryset(self, request):
        return visible_rows(super().get_queryset(request), user=request.user, study_path=self.study_path)


class TrialInline(admin.TabularInline):
    model = Trial
    extra = 0
    can_delete = False
    fields = ["position", "phase", "task", "stimulus", "edit", "options", "show_explanation", "show_model_output",
              "served_at", "answer", "correct"]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("stimulus__dataset", "edit", "response")

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="answer")
    def answer(self, obj: Trial):
        response = getattr(obj, "response", None)
        return "—" if response is None else response.answer

    @admin.display(description="correct", boolean=True)
    def correct(self, obj: Trial):
        response = getattr(obj, "response", None)
        return None if response is None else response.correct


@admin.register(Participant)
class ParticipantAdmin(StudyRowsAdmin):
    list_display = ["public_id", "study", "arm", "status", "step", "simulated", "source", "external_id", "started_at",
                    "completed_at"]
    list_filter = ["status", "simulated", "source", study_filter("study"), "arm__kind"]
    search_fields = ["external_id", "public_id"]
    list_select_related = ["study", "arm__study"]
    inlines = [TrialInline]


@admin.register(Response)
class ResponseAdmin(StudyRowsAdmin):
    study_path = "trial__participant__study"
    list_display = ["trial_position", "participant", "study", "answer", "correct", "confidence", "client_rt_ms",
                    "received_at"]
    list_filter = ["correct", "trial__phase", "trial__task", study_filter("trial__participant__study")]
    search_fields = ["trial__participant__external_id", "idempotency_key"]
    list_select_related = ["trial__participant__study"]

    @admin.display(description="position", ordering="trial__position")
    def trial_position(self, obj: Response) -> int:
        return obj.trial.position

    @admin.display(description="participant")
    def participant(self, obj: Response):
        return obj.trial.participant.public_id

    @admin.display(description="study")
    def study(self, obj: Response):
        return obj.trial.participant.study
