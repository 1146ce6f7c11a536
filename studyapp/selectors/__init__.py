"""Read-side queries (HackSoft styleguide: selectors read, services write)."""
from __future__ import annotations

import uuid

from django.db.models import F, FilteredRelation, Q, QuerySet
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Coalesce

from explainers.canonical import canonical_sha256
from studyapp.models import Edit, Study, Trial


def study_get_by_public_id(*, public_id: uuid.UUID) -> Study | None:
    return Study.objects.filter(public_id=public_id).first()


# Columns of the long format, in order, and the queryset field behind each: one row per planned
# trial. Shared by the analysis (as a DataFrame) and the CSV export (streamed), so both always
# describe the same data.
COLUMN_SOURCES = {
    "study": "study_slug", "participant": "participant_public_id", "participant_status": "participant_status",
    "simulated": "participant_simulated",
    "arm": "arm_name", "arm_kind": "arm_kind", "position": "position", "phase": "phase", "task": "task",
    "stimulus": "stimulus_id", "stimulus_index": "stimulus_index", "edit": "edit_position", "truth": "truth",
    "model_output": "model_output", "expected_answer": "expected_answer", "n_options": "n_options",
    "show_explanation": "show_explanation", "show_model_output": "show_model_output", "response": "answer",
    "correct": "correct", "confidence": "confidence", "client_rt_ms": "client_rt_ms", "server_rt_ms": "server_rt_ms",
    "client_sent_at": "client_sent_at", "received_at": "received_at", "idempotency_key": "idempotency_key",
    "focus_losses": "focus_losses", "device": "device",
}
TRIAL_COLUMNS = tuple(COLUMN_SOURCES)
# What the analysis reads: no timestamps or keys, which are costly to fetch a million times.
# show_model_output: the straight-lining exclusion rule reads it from the analysis' own frame.
ANALYSIS_COLUMNS = ("participant", "arm", "position", "phase", "task", "stimulus", "edit", "truth", "model_output",
                    "expected_answer", "n_options", "response", "correct", "confidence", "show_model_output")


def _annotations(study: Study) -> dict:
    """Source name -> expression, for the long-format columns that are not fields of the trial."""
    return {
        "study_slug": F("participant__study__slug"),
        "participant_public_id": F("participant__public_id"),
        "participant_status": F("participant__status"),
        "participant_simulated": F("participant__simulated"),
        "arm_name": F("participant__arm__name"),
        "arm_kind": F("participant__arm__kind"),
        "stimulus_index": F("stimulus__index"),
        "edit_position": F("edit__position"),
        "truth": F("stimulus__label"),
        "model_output": Coalesce(F("edit_output__predicted"), F("stimulus_output__predicted")),
        "answer": F("response__answer"),
        "correct": F("response__correct"),
        "confidence": F("response__confidence"),
        "client_rt_ms": F("response__client_rt_ms"),
        "server_rt_ms": F("response__server_rt_ms"),
        "client_sent_at": F("response__client_sent_at"),
        "received_at": F("response__received_at"),
        "idempotency_key": F("response__idempotency_key"),
        "focus_losses": F("response__focus_losses"),
        "device": KeyTextTransform("device", "response__client"),
    }


def trials_long_queryset(*, study: Study, answered_only: bool = False,
                         columns: tuple[str, ...] = TRIAL_COLUMNS, order_key: bool = False,
                         extra_fields: tuple[str, ...] = ()) -> QuerySet:
    """Every trial of a study with its context and answer, as ``values_list`` rows of ``columns``.

    ``order_key`` appends ``participant_id`` (the first sort key) to each row, for SQL that wraps
    this query and must keep its order; ``extra_fields`` appends those fields of the trial.

    One SQL query of joins, ordered by participant then position, so callers can stream it with
    ``.iterator(chunk_size=...)``; it joins only the tables that ``columns`` need.
    ``model_output`` is the model's prediction on what the trial showed: the edit when there is
    one, else the stimulus. The outputs are LEFT JOINs restricted to the study's model
    (FilteredRelation), not correlated subqueries: PostgreSQL re-ran those once per trial row
    when the output table was small.
    """
    queryset = Trial.objects.filter(participant__study=study, participant__preview=False).annotate(
        stimulus_output=FilteredRelation("stimulus__outputs", condition=Q(stimulus__outputs__model_id=study.model_id)),
        edit_output=FilteredRelation("edit__outputs", condition=Q(edit__outputs__model_id=study.model_id)),
    )
    if answered_only:
        queryset = queryset.filter(response__isnull=False)
    sources = [COLUMN_SOURCES[c] for c in columns]
    annotations = _annotations(study)
    return (
        queryset
        .annotate(**{name: annotations[name] for name in sources if name in annotations})
        .order_by("participant_id", "position")
        .values_list(*sources, *(["participant_id"] if order_key else []), *extra_fields)
    )


# Columns that are the same for every trial of one participant, stimulus or edit: the COPY reader
# reads them once per key (``trial_dimensions``) instead of once per trial row. On 1,000,000
# trials this halves PostgreSQL's work: the rows need no join to the arm, stimulus, edit or
# output tables, and carry integers instead of 36-character participant ids.
_PARTICIPANT_FIELDS = {"study": "study__slug", "participant": "public_id", "participant_status": "status",
                       "simulated": "simulated", "arm": "arm__name", "arm_kind": "arm__kind"}
_STIMULUS_FIELDS = {"stimulus_index": "index", "truth": "label"}
DIMENSION_COLUMNS = frozenset({*_PARTICIPANT_FIELDS, *_STIMULUS_FIELDS, "edit", "model_output"})
TRIAL_KEYS = ("participant_id", "stimulus_id", "edit_id")


def trial_dimensions(*, study: Study, keys: dict, columns: list[str]) -> dict:
    """column -> (positions, values) for the ``DIMENSION_COLUMNS`` among ``columns``: row i's value
    is ``values[positions[i]]``, missing where the position is -1. ``keys``: each row's
    ``TRIAL_KEYS`` as int64 arrays, -1 for no edit. Same values as ``trials_long_queryset``'s joins."""
    import numpy as np
    import pandas as pd

    from studyapp.models import ModelOutput, Participant, Stimulus
    from studyapp.selectors.frames import positions_in as _positions

    found: dict = {}
    wanted = [c for c in columns if c in _PARTICIPANT_FIELDS]
    if wanted:
        rows = list(Participant.objects.filter(study=study, preview=False)
                    .values_list("id", *(_PARTICIPANT_FIELDS[c] for c in wanted)))
        at = _positions([r[0] for r in rows], keys["participant_id"])
        for i, column in enumerate(wanted, start=1):
            found[column] = (at, [r[i] for r in rows])
    stimuli = sorted(pd.unique(keys["stimulus_id"]).tolist())
    edits = sorted(e for e in pd.unique(keys["edit_id"]).tolist() if e >= 0)
    wanted = [c for c in columns if c in _STIMULUS_FIELDS]
    if wanted:
        rows = list(Stimulus.objects.filter(pk__in=stimuli).values_list("id", *(_STIMULUS_FIELDS[c] for c in wanted)))
        at = _positions([r[0] for r in rows], keys["stimulus_id"])
        for i, column in enumerate(wanted, start=1):
            found[column] = (at, [r[i] for r in rows])
    if "edit" in columns:
        rows = list(Edit.objects.filter(pk__in=edits).values_list("id", "position"))
        found["edit"] = (_positions([r[0] for r in rows], keys["edit_id"]), [r[1] for r in rows])
    if "model_output" in columns:
        # The edit's output when the trial showed an edit and the model has one, else the stimulus'.
        outputs = ModelOutput.objects.filter(model_id=study.model_id) if study.model_id else ModelOutput.objects.none()
        of_edits = list(outputs.filter(edit_id__in=edits).values_list("edit_id", "predicted"))
        of_stimuli = list(outputs.filter(stimulus_id__in=stimuli).values_list("stimulus_id", "predicted"))
        by_edit = _positions([r[0] for r in of_edits], keys["edit_id"])
        by_stimulus = _positions([r[0] for r in of_stimuli], keys["stimulus_id"])
        at = np.where(by_edit >= 0, by_edit, np.where(by_stimulus >= 0, by_stimulus + len(of_edits), -1))
        found["model_output"] = (at, [r[1] for r in of_edits] + [r[1] for r in of_stimuli])
    return found


def trials_long_frame(*, study: Study, answered_only: bool = True, columns: tuple[str, ...] = TRIAL_COLUMNS,
                      method: str | None = None, uuid_text: bool = False, categorical: bool = False):
    """The long format as a pandas DataFrame of ``columns``, for the analysis.

    Same rows and order as ``trials_long_queryset``, with fixed dtypes per column
    (``studyapp.selectors.frames.COLUMN_KINDS``). ``method``: "copy" (PostgreSQL: COPY into
    ``pandas.read_csv``, several times faster than a cursor), "cursor" (any database), or None
    for the fastest available; both give the same frame. ``uuid_text``: UUID columns as canonical
    text instead of ``uuid.UUID`` objects, which hash in C (a groupby or isin over a million
    rows spends seconds hashing ``uuid.UUID`` objects). ``categorical``: text columns as
    categoricals (``studyapp.selectors.frames.long_frame``).
    """
    from studyapp.selectors.frames import Dimensions, long_frame

    def queryset_for(selected: tuple[str, ...]) -> QuerySet:
        return trials_long_queryset(study=study, answered_only=answered_only, columns=selected)

    def rows_for(selected: tuple[str, ...]) -> QuerySet:
        # Unordered: the reader sorts the rows itself (PostgreSQL would sort a million rows on disk).
        return trials_long_queryset(study=study, answered_only=answered_only, columns=selected,
                                    extra_fields=TRIAL_KEYS).order_by()

    dimensions = Dimensions(columns=DIMENSION_COLUMNS, keys=TRIAL_KEYS, rows_for=rows_for,
                            resolve=lambda keys, wanted: trial_dimensions(study=study, keys=keys, columns=wanted))
    return long_frame(queryset_for=queryset_for, columns=tuple(columns), method=method, uuid_text=uuid_text,
                      categorical=categorical, dimensions=dimensions)


def external_plan_model(*, study: Study) -> dict:
    """The plan's "model" entry of a study whose data were collected elsewhere: there is no model,
    and ``class_names`` are the options of its forward trials ("option 1".."option k", from the
    file's n_options; empty when it has no forward test trials), whose count sets the chance level
    of forward accuracy in the analysis. Same keys as a model's entry, so readers of a plan need
    no special case."""
    return {"name": None, "architecture": None, "weights_sha256": None, "hyperparameters": {},
            "class_names": list(study.dataset.class_names or [])}


# ---------------------------------------------------------------- edits
# Here, not in services.edits, so that the analysis can count a study's edits without PyTorch.

DEFAULT_EDITS = {"image": {"grid": [4, 4], "fill": "mean"}, "tabular": {"quantiles": [0.1, 0.5, 0.9]}}


def edit_settings(*, study) -> dict:
    """The study's edit settings (config["edits"]) over the defaults for its modality (none for the
    items of a study whose data were collected elsewhere: its edits were made there)."""
    modality = study.dataset.modality
    chosen = {k: v for k, v in ((study.config or {}).get("edits") or {}).items() if v is not None}
    return {**DEFAULT_EDITS.get(modality, {}), **chosen}


def edit_settings_key(*, study) -> str:
    """The key of the study's edits: SHA-256 of its canonical edit settings."""
    return canonical_sha256(edit_settings(study=study))


def study_edits(*, study, stimuli):
    """The study's candidate edits of ``stimuli`` (those made under its settings)."""
    return Edit.objects.filter(stimulus__in=stimuli, settings_sha256=edit_settings_key(study=study))


# ---------------------------------------------------------------- access
# Every staff view asks these: a study belongs to its owner and collaborators (superusers see
# every study), and a staff user without the model or custom permission a view needs is refused.


def visible_rows(queryset: QuerySet, *, user, study_path: str = "") -> QuerySet:
    """``queryset`` narrowed to the rows whose study ``user`` may see. ``study_path``: the lookup
    from a row to its study ("study", "trial__participant__study"; "" for studies themselves)."""
    if not (user.is_active and user.is_staff):
        return queryset.none()
    if user.is_superuser:
        return queryset
    prefix = f"{study_path}__" if study_path else ""
    # A subquery rather than a join on collaborators: a join would repeat rows (and inflate the
    # admin's counts) once per collaborator.
    shared = Study.collaborators.through.objects.filter(user_id=user.pk).values("study_id")
    return queryset.filter(Q(**{f"{prefix}owner_id": user.pk}) | Q(**{f"{study_path or 'pk'}__in": shared}))


def studies_visible_to(*, user) -> QuerySet:
    """The studies ``user`` may see: all for a superuser, else those they own or collaborate on
    (a study without an owner, created before owners existed, is seen by superusers only)."""
    return visible_rows(Study.objects.all(), user=user)


def study_for_user(*, user, pk, perm: str | tuple[str, ...] | None = "studyapp.view_study") -> Study:
    """The study ``pk`` if ``user`` has ``perm`` (all of them, when several) and may see it.

    Raises PermissionDenied (403) for a missing permission, before looking the study up, so a
    user without the permission cannot learn which studies exist; Http404 for a study that does
    not exist or is not theirs (the same answer for both, for the same reason).
    """
    from django.core.exceptions import PermissionDenied
    from django.http import Http404

    perms = (perm,) if isinstance(perm, str) else tuple(perm or ())
    if not (user.is_active and user.is_staff) or not user.has_perms(perms):
        raise PermissionDenied
    study = studies_visible_to(user=user).filter(pk=pk).first()
    if study is None:
        raise Http404("No such study, or it is not shared with you: ask its owner to add you as a collaborator.")
    return study
