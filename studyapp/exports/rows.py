"""Row sources of the exports (read side): raw values, in the order of the column specs.

Each function yields tuples whose positions match ``columns.py``; formatting (0/1, ISO-8601, empty
for missing) happens in the writer, by column type. The long response export reads through
``QuerySet.iterator(chunk_size=...)``, which on PostgreSQL is a server-side cursor: memory stays
constant whatever the number of trials. Per-participant lookups (exclusions, Likert answers) are
O(participants), never O(trials).
"""
from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator

from django.db.models import Count, Q

from studyapp.exports.columns import HYPOTHESIS_COLUMNS, PHASES, likert_column_name
from studyapp.models import AnalysisRun, Hypothesis, Participant, QuestionnaireAnswer, Study, Trial
from studyapp.selectors import TRIAL_COLUMNS, trials_long_queryset

logger = logging.getLogger(__name__)

CHUNK_SIZE = 5_000
ATTENTION = Trial.Task.ATTENTION_CHECK.value
_TASK = TRIAL_COLUMNS.index("task")
_PARTICIPANT = TRIAL_COLUMNS.index("participant")
NOT_EVALUATED = ("", None)


def exclusion_flags(*, study: Study) -> dict[uuid.UUID, tuple[str, int]] | None:
    """public_id -> (rule names joined by ';', excluded 0/1); None when the rules cannot be evaluated."""
    from studyapp.services.errors import ServiceError
    from studyapp.services.exclusions import participant_exclusions

    try:
        exclusions = participant_exclusions(study=study)
    except ServiceError as exc:
        # Malformed rules must not block the data download: the cells stay empty (= not evaluated)
        # and the manifest says why.
        logger.warning("Exclusions of study %s not evaluated: %s", study.pk, exc)
        return None
    return {pid: (";".join(rules), int(bool(rules))) for pid, rules in exclusions.items()}


def response_rows(*, study: Study, chunk_size: int | None = None) -> Iterator[tuple]:
    """One tuple per planned trial (RESPONSE_COLUMNS order), streamed from a server-side cursor."""
    chunk_size = chunk_size or CHUNK_SIZE
    flags = exclusion_flags(study=study) or {}
    rows = trials_long_queryset(study=study, answered_only=False).iterator(chunk_size=chunk_size)
    current, extra = None, NOT_EVALUATED
    for row in rows:
        participant = row[_PARTICIPANT]
        if participant != current:  # rows come ordered by participant: one lookup per participant
            current, extra = participant, flags.get(participant, NOT_EVALUATED)
        yield (*row, row[_TASK] == ATTENTION, *extra)


def likert_items(*, study: Study) -> list[str]:
    """Questionnaire items answered in the study, sorted (one participants.csv column each)."""
    return sorted(QuestionnaireAnswer.objects.filter(participant__study=study)
                  .values_list("item", flat=True).distinct())


def _likert_answers(*, study: Study) -> dict[int, dict[str, int]]:
    answers: dict[int, dict[str, int]] = defaultdict(dict)
    for participant_id, item, value in (QuestionnaireAnswer.objects.filter(participant__study=study)
                                        .values_list("participant_id", "item", "value").iterator(chunk_size=CHUNK_SIZE)):
        answers[participant_id][item] = value
    return answers


def _accuracy(n_correct: int, n_scored: int) -> float | None:
    return n_correct / n_scored if n_scored else None


def participant_rows(*, study: Study, items: list[str] | None = None) -> Iterator[tuple]:
    """One tuple per participant (participant_columns order): one aggregate query over the trials."""
    items = likert_items(study=study) if items is None else items
    if len({likert_column_name(i) for i in items}) != len(items):
        raise ValueError("two questionnaire items map to the same column name")
    flags = exclusion_flags(study=study)
    likert = _likert_answers(study=study)
    answered = Q(trials__response__isnull=False)
    scored = answered & ~Q(trials__task=ATTENTION) & Q(trials__response__correct__isnull=False)
    aggregates = {
        "n_trials": Count("trials"),
        "n_answered": Count("trials", filter=answered),
        "n_attention_checks": Count("trials", filter=answered & Q(trials__task=ATTENTION)),
        "n_attention_failed": Count("trials", filter=answered & Q(trials__task=ATTENTION)
                                    & Q(trials__response__correct=False)),
    }
    for phase in PHASES:
        aggregates[f"n_{phase}"] = Count("trials", filter=scored & Q(trials__phase=phase))
        aggregates[f"c_{phase}"] = Count("trials", filter=scored & Q(trials__phase=phase)
                                         & Q(trials__response__correct=True))
    queryset = (Participant.objects.filter(study=study).order_by("id")
                .values("id", "public_id", "arm__name", "arm__kind", "status", "source", "started_at",
                        "consented_at", "completed_at", "last_seen_at", "comprehension_attempts", "instructions_ms")
                .annotate(**aggregates))
    for p in queryset.iterator(chunk_size=CHUNK_SIZE):
        duration = ((p["completed_at"] - p["started_at"]).total_seconds()
                    if p["completed_at"] and p["started_at"] else None)
        accuracy = {phase: _accuracy(p[f"c_{phase}"], p[f"n_{phase}"]) for phase in PHASES}
        pre, post = accuracy.get("pre_test"), accuracy.get("post_test")
        answers = likert.get(p["id"], {})
        rules, excluded = (flags or {}).get(p["public_id"], NOT_EVALUATED)
        yield (
            study.slug, p["public_id"], p["arm__name"], p["arm__kind"], p["status"], p["source"], p["started_at"],
            p["consented_at"], p["completed_at"], p["last_seen_at"], duration, p["comprehension_attempts"],
            p["instructions_ms"], p["n_trials"], p["n_answered"], p["n_attention_checks"], p["n_attention_failed"],
            *(v for phase in PHASES for v in (p[f"n_{phase}"], accuracy[phase])),
            post - pre if pre is not None and post is not None else None,
            *(answers.get(item) for item in items),
            rules, excluded,
        )


# -- hypotheses ---------------------------------------------------------------------------------

_PLAN_FIELDS = ("statement", "comparison", "arm", "comparator", "outcome", "likert_item", "direction",
                "equivalence_margin", "test", "alpha", "family", "correction", "planned_n_per_arm")


def _plan_hypotheses(*, study: Study) -> list[dict]:
    """The frozen plan's hypotheses; before launch, the current (not yet pre-registered) ones."""
    if study.frozen_config is not None:
        return list(study.frozen_config.get("hypotheses") or [])
    return [
        {"label": h.label, "statement": h.statement, "comparison": h.comparison, "arm": h.arm.name,
         "comparator": h.comparator.name if h.comparator_id else None, "outcome": h.outcome,
         "likert_item": h.likert_item, "direction": h.direction, "equivalence_margin": h.equivalence_margin,
         "test": h.test, "alpha": h.alpha, "family": h.family, "correction": h.correction,
         "planned_n_per_arm": h.planned_n_per_arm}
        for h in Hypothesis.objects.filter(study=study).select_related("arm", "comparator").order_by("label")
    ]


def _first(entry: dict, *keys: str):
    for key in keys:
        if entry.get(key) is not None:
            return entry[key]
    return None


def _entries(section) -> list[dict]:
    """A results section as a list of dicts with a 'label' (accepts a list or a label-keyed dict)."""
    if isinstance(section, dict):
        return [{"label": label, **value} for label, value in section.items() if isinstance(value, dict)]
    if isinstance(section, list):
        return [e for e in section if isinstance(e, dict)]
    return []


def run_results(run: AnalysisRun | None) -> tuple[dict[str, dict], list[dict]]:
    """(confirmatory results by label, exploratory entries) of an AnalysisRun's results JSON."""
    if run is None:
        return {}, []
    results = run.results or {}
    confirmatory = {str(e.get("label")): e for e in _entries(results.get("hypotheses", results.get("confirmatory")))}
    return confirmatory, _entries(results.get("exploratory"))


def _result_values(entry: dict | None) -> tuple:
    """statistic ... effect_ci_high, from one result entry (tolerant of nesting under 'result')."""
    if not entry:
        return (None,) * 12
    nested = entry.get("result") if isinstance(entry.get("result"), dict) else {}
    merged = {**nested, **{k: v for k, v in entry.items() if v is not None}}
    effect = merged.get("effect") if isinstance(merged.get("effect"), dict) else {}
    n = merged.get("n") if isinstance(merged.get("n"), dict) else {}
    n_values = list(n.values())
    decision = merged.get("decision")
    if isinstance(decision, dict):
        decision = _first(decision, "verdict", "text", "decision", "summary")
    return (
        _first(merged, "n_arm") if "n_arm" in merged else (n_values[0] if n_values else None),
        _first(merged, "n_comparator") if "n_comparator" in merged else (n_values[1] if len(n_values) > 1 else None),
        _first(merged, "statistic"),
        _first(merged, "df"),
        _first(merged, "p_value", "p"),
        _first(merged, "p_adjusted", "adjusted_p_value", "p_value_adjusted", "p_adj"),
        _first(merged, "reject", "rejected"),
        decision,
        _first(effect, "name"),
        _first(effect, "estimate"),
        _first(effect, "ci_low"),
        _first(effect, "ci_high"),
    )


def _run_values(run: AnalysisRun | None, study: Study) -> tuple:
    if run is None:
        return (None,) * 5
    return (run.pk, run.kind, run.created_at, run.seed,
            bool(study.frozen_sha256) and run.plan_sha256 == study.frozen_sha256)


def latest_run(*, study: Study, kind: str) -> AnalysisRun | None:
    return AnalysisRun.objects.filter(study=study, kind=kind).order_by("-created_at", "-id").first()


def hypothesis_rows(*, study: Study) -> Iterator[tuple]:
    """The plan's hypotheses with the latest confirmatory run's results, then exploratory results.

    A row is ``confirmatory`` only when the hypothesis is pre-registered AND its numbers come from a
    confirmatory run; everything else (analyses outside the plan, exploratory runs) is ``exploratory``.
    """
    confirmatory_run = latest_run(study=study, kind=AnalysisRun.Kind.CONFIRMATORY)
    exploratory_run = latest_run(study=study, kind=AnalysisRun.Kind.EXPLORATORY)
    by_label, extra = run_results(confirmatory_run)
    preregistered = study.frozen_config is not None
    planned = _plan_hypotheses(study=study)
    planned_labels = {h["label"] for h in planned}
    for hypothesis in planned:
        result = by_label.get(hypothesis["label"])
        analysis = "confirmatory" if preregistered and confirmatory_run is not None else "exploratory"
        yield (study.slug, hypothesis["label"], analysis, preregistered,
               *(hypothesis.get(f) for f in _PLAN_FIELDS),
               *_run_values(confirmatory_run if result else None, study), *_result_values(result))
    unplanned = [(confirmatory_run, e) for label, e in by_label.items() if label not in planned_labels]
    unplanned += [(confirmatory_run, e) for e in extra]
    if exploratory_run is not None:
        exploratory_by_label, exploratory_extra = run_results(exploratory_run)
        unplanned += [(exploratory_run, e) for e in [*exploratory_by_label.values(), *exploratory_extra]]
    for run, entry in unplanned:
        yield (study.slug, entry.get("label"), "exploratory", False,
               *(entry.get(f) for f in _PLAN_FIELDS), *_run_values(run, study), *_result_values(entry))


assert len(_PLAN_FIELDS) + 4 + 5 + 12 == len(HYPOTHESIS_COLUMNS)
