"""Read-side queries (HackSoft styleguide: selectors read, services write)."""
from __future__ import annotations

import uuid

from django.db.models import F, FilteredRelation, Q, QuerySet
from django.db.models.functions import Coalesce

from studyapp.models import Study, Trial


def study_get_by_public_id(*, public_id: uuid.UUID) -> Study | None:
    return Study.objects.filter(public_id=public_id).first()


# Columns of the long format, in order: one row per planned trial. Shared by the analysis (as a
# DataFrame) and the CSV export (streamed), so both always describe the same data.
TRIAL_COLUMNS = (
    "study", "participant", "participant_status", "arm", "arm_kind", "position", "phase", "task",
    "stimulus", "stimulus_index", "edit", "truth", "model_output", "expected_answer", "show_explanation",
    "show_model_output", "response", "correct", "confidence", "client_rt_ms", "server_rt_ms",
    "client_sent_at", "received_at", "idempotency_key",
)


def trials_long_queryset(*, study: Study, answered_only: bool = False) -> QuerySet:
    """Every trial of a study with its context and answer, as ``values()`` rows in TRIAL_COLUMNS.

    One SQL query of joins, ordered by participant then position, so callers can stream it with
    ``.iterator(chunk_size=...)``. ``model_output`` is the model's prediction on what the trial
    showed: the edit when there is one, else the stimulus. The outputs are LEFT JOINs restricted
    to the study's model (FilteredRelation), not correlated subqueries: PostgreSQL re-ran those
    once per trial row when the output table was small.
    """
    queryset = Trial.objects.filter(participant__study=study).annotate(
        stimulus_output=FilteredRelation("stimulus__outputs", condition=Q(stimulus__outputs__model_id=study.model_id)),
        edit_output=FilteredRelation("edit__outputs", condition=Q(edit__outputs__model_id=study.model_id)),
    )
    if answered_only:
        queryset = queryset.filter(response__isnull=False)
    return (
        queryset
        .annotate(
            study_slug=F("participant__study__slug"),
            participant_public_id=F("participant__public_id"),
            participant_status=F("participant__status"),
            arm_name=F("participant__arm__name"),
            arm_kind=F("participant__arm__kind"),
            stimulus_index=F("stimulus__index"),
            edit_position=F("edit__position"),
            truth=F("stimulus__label"),
            model_output=Coalesce(F("edit_output__predicted"), F("stimulus_output__predicted")),
            answer=F("response__answer"),
            correct=F("response__correct"),
            confidence=F("response__confidence"),
            client_rt_ms=F("response__client_rt_ms"),
            server_rt_ms=F("response__server_rt_ms"),
            client_sent_at=F("response__client_sent_at"),
            received_at=F("response__received_at"),
            idempotency_key=F("response__idempotency_key"),
        )
        .order_by("participant_id", "position")
        .values_list(
            "study_slug", "participant_public_id", "participant_status", "arm_name", "arm_kind", "position", "phase",
            "task", "stimulus_id", "stimulus_index", "edit_position", "truth", "model_output", "expected_answer",
            "show_explanation", "show_model_output", "answer", "correct", "confidence", "client_rt_ms",
            "server_rt_ms", "client_sent_at", "received_at", "idempotency_key",
        )
    )


def trials_long_frame(*, study: Study, answered_only: bool = True):
    """The long format as a pandas DataFrame (columns TRIAL_COLUMNS), for the analysis."""
    import pandas as pd

    rows = trials_long_queryset(study=study, answered_only=answered_only).iterator(chunk_size=20_000)
    return pd.DataFrame.from_records(rows, columns=list(TRIAL_COLUMNS))
