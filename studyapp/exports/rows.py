"""Row sources of the exports (read side): raw values, in the order of the column specs.

Each function yields tuples whose positions match ``columns.py``; formatting (0/1, ISO-8601, empty
for missing) happens in the writer, by column type. The long response export reads through a
server-side cursor (``cursors.server_side_rows``: Django's chunked cursor, as
``QuerySet.iterator(chunk_size=...)`` uses): memory stays constant whatever the number of trials. Per-participant lookups (exclusions, Likert answers) are
O(participants), never O(trials).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator

from django.db.models import Count, OuterRef, Q, Subquery
from django.db.models.fields.json import KT

from studyapp.analysis.run_results import Effect, HypothesisResult, RunResults
from studyapp.exports.columns import HYPOTHESIS_COLUMNS, PHASES, likert_column_name
from studyapp.exports.cursors import server_side_rows, streamed
from studyapp.models import (AnalysisRun, ModelOutput, Participant, QuestionnaireAnswer, Response, Study, StudyItem,
                             Trial)
from studyapp.selectors import TRIAL_COLUMNS, trials_long_queryset
from studyapp.selectors.plans import plan_control_arm, study_plan

logger = logging.getLogger(__name__)

CHUNK_SIZE = 5_000
# Participants per FETCH of participants.csv: each one aggregates its trials first, so a small
# block brings the first row at once (a block of 5,000 took seconds).
PARTICIPANT_FETCH = 100
ATTENTION = Trial.Task.ATTENTION_CHECK.value
_TASK = TRIAL_COLUMNS.index("task")
_PARTICIPANT = TRIAL_COLUMNS.index("participant")
NOT_EVALUATED = ("", None)


def exclusion_flags(*, study: Study) -> dict[str, tuple[str, int]] | None:
    """str(public_id) -> (rule names joined by ';', excluded 0/1); None when the rules cannot be evaluated."""
    from studyapp.services.errors import ServiceError
    from studyapp.services.exclusions import participant_exclusions

    try:
        exclusions = participant_exclusions(study=study)
    except ServiceError as exc:
        # Malformed rules must not block the data download: the cells stay empty (= not evaluated)
        # and the manifest says why.
        logger.warning("Exclusions of study %s not evaluated: %s", study.pk, exc)
        return None
    return {str(pid): (";".join(rules), int(bool(rules))) for pid, rules in exclusions.items()}


def response_rows(*, study: Study, chunk_size: int | None = None) -> Iterator[tuple]:
    """One tuple per planned trial (RESPONSE_COLUMNS order), streamed from a server-side cursor.

    The exclusion flags are computed here, before streaming starts, so a failure is an error
    response and not a CSV cut off after its header; the trial rows are only read while streaming.
    """
    flags = exclusion_flags(study=study) or {}
    return _response_rows(study=study, flags=flags, chunk_size=chunk_size or CHUNK_SIZE)


def _response_rows(*, study: Study, flags: dict[str, tuple[str, int]], chunk_size: int) -> Iterator[tuple]:
    rows = server_side_rows(trials_long_queryset(study=study, answered_only=False), chunk_size=chunk_size)
    current, extra = None, NOT_EVALUATED
    for row in rows:
        participant = row[_PARTICIPANT]
        if participant != current:  # rows come ordered by participant: one lookup per participant
            current, extra = participant, flags.get(str(participant), NOT_EVALUATED)
        yield (*row, row[_TASK] == ATTENTION, *extra)


def likert_items(*, study: Study) -> list[str]:
    """Questionnaire items answered in the study, sorted (one participants.csv column each)."""
    return sorted(QuestionnaireAnswer.objects.filter(participant__study=study, participant__preview=False)
                  .values_list("item", flat=True).distinct())


def _likert_answers(*, study: Study) -> dict[int, dict[str, int]]:
    answers: dict[int, dict[str, int]] = defaultdict(dict)
    for participant_id, item, value in (QuestionnaireAnswer.objects.filter(participant__study=study, participant__preview=False)
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
    flags = exclusion_flags(study=study)  # before streaming: see response_rows
    likert = _likert_answers(study=study)
    return _participant_rows(study=study, items=items, flags=flags or {}, likert=likert)


def _participant_rows(*, study: Study, items: list[str], flags: dict, likert: dict) -> Iterator[tuple]:
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
    first_device = (Response.objects.filter(trial__participant=OuterRef("pk")).order_by("received_at", "pk")
                    .annotate(device=KT("client__device")).values("device")[:1])
    # The device subquery is annotated after the aggregates: in the same annotate() Django puts it in
    # the GROUP BY, and PostgreSQL then ran it once per trial instead of once per participant
    # (42 s for 2,000 participants).
    queryset = (Participant.objects.filter(study=study, preview=False).order_by("id")
                .values("id", "public_id", "arm__name", "arm__kind", "status", "source", "external_id", "simulated", "started_at",
                        "consented_at", "consent_version", "completed_at", "last_seen_at", "comprehension_attempts",
                        "instructions_ms")
                .annotate(**aggregates).annotate(device=Subquery(first_device)))
    for p in streamed(queryset, chunk_size=min(CHUNK_SIZE, PARTICIPANT_FETCH)):
        imported = p["source"] == Participant.Source.EXTERNAL
        duration = ((p["completed_at"] - p["started_at"]).total_seconds()
                    if p["completed_at"] and p["started_at"] and not imported else None)
        accuracy = {phase: _accuracy(p[f"c_{phase}"], p[f"n_{phase}"]) for phase in PHASES}
        pre, post = accuracy.get("pre_test"), accuracy.get("post_test")
        answers = likert.get(p["id"], {})
        rules, excluded = flags.get(str(p["public_id"]), NOT_EVALUATED)
        yield (
            study.slug, p["public_id"], p["arm__name"], p["arm__kind"], p["status"], p["source"],
            p["external_id"] if imported else None, p["simulated"],
            p["started_at"],
            p["consented_at"], p["consent_version"], p["completed_at"], p["last_seen_at"], duration,
            p["comprehension_attempts"], p["instructions_ms"], p["device"], p["n_trials"], p["n_answered"], p["n_attention_checks"], p["n_attention_failed"],
            *(v for phase in PHASES for v in (p[f"n_{phase}"], accuracy[phase])),
            post - pre if pre is not None and post is not None else None,
            *(answers.get(item) for item in items),
            rules, excluded,
        )


# -- items --------------------------------------------------------------------------------------

def item_rows(*, study: Study) -> Iterator[tuple]:
    """The item sample with each item's truth and the model's output on it."""
    outputs = dict(ModelOutput.objects.filter(model=study.model, stimulus__study_items__study=study)
                   .values_list("stimulus_id", "predicted"))
    for item in (StudyItem.objects.filter(study=study).select_related("stimulus").order_by("role", "position")
                 .iterator(chunk_size=CHUNK_SIZE)):
        yield (study.slug, item.role, item.position, item.stimulus_id, item.stimulus.index, item.stratum,
               item.stimulus.label, outputs.get(item.stimulus_id), ";".join(str(e) for e in item.edits) or None,
               item.answer_position)


# -- hypotheses ---------------------------------------------------------------------------------
# Each row is built by column name and ordered by HYPOTHESIS_COLUMNS (columns.py), the one place
# that says which columns the file has and in which order.

_HYPOTHESIS_NAMES = tuple(c.name for c in HYPOTHESIS_COLUMNS)


def _row(values: dict) -> tuple:
    """``values`` in HYPOTHESIS_COLUMNS order; a column without a value, or a value without a column, raises."""
    if len(values) != len(_HYPOTHESIS_NAMES):
        raise KeyError(f"hypotheses.csv row and columns differ: {sorted(set(values) ^ set(_HYPOTHESIS_NAMES))}")
    return tuple(values[name] for name in _HYPOTHESIS_NAMES)


def _plan_values(h: HypothesisResult, *, control: str | None) -> dict:
    comparator = h.comparator
    if h.comparison == "arm_vs_control" and not comparator:
        comparator = control  # "the control arm when empty": say which
    if h.comparison == "arm_vs_chance":
        comparator = None
    return {"statement": h.statement, "comparison": h.comparison, "arm": h.arm, "comparator": comparator,
            "outcome": h.outcome, "likert_item": h.likert_item, "direction": h.direction,
            "equivalence_margin": h.equivalence_margin, "test": h.test, "alpha": h.alpha, "family": h.family,
            "correction": h.correction, "planned_n_per_arm": h.planned_n_per_arm}


def _result_values(h: HypothesisResult, *, arm: str | None, comparator: str | None) -> dict:
    """The results of one hypothesis of a run (empty cells for a hypothesis the run did not analyse)."""
    difference = h.test_result("difference")
    effect = difference.effect if isinstance(difference.effect, Effect) else Effect()
    arm_stats, comparator_stats = h.describe(arm), h.describe(comparator)
    cohens_d = h.effect("cohens_d")
    return {
        "test_method": difference.method or None, "n_arm": arm_stats.n, "n_comparator": comparator_stats.n,
        "mean_arm": arm_stats.mean, "mean_comparator": comparator_stats.mean, "statistic": difference.statistic,
        "df": difference.df, "p_value": h.p_value, "p_adjusted": h.p_adjusted, "p_equivalence": h.p_equivalence,
        "p_equivalence_adjusted": h.p_equivalence_adjusted, "decision": h.verdict.verdict,
        "decision_reason": h.verdict.reason or None, "effect_name": effect.name or None, "effect_estimate": effect.estimate,
        "effect_ci_low": effect.ci_low, "effect_ci_high": effect.ci_high,
        "cohens_d": cohens_d.estimate if cohens_d is not None else None, "error": h.error,
    }


def _run_values(run: AnalysisRun | None, study: Study) -> dict:
    if run is None:
        return dict.fromkeys(("analysis_run", "analysis_run_kind", "analysis_run_at", "analysis_seed", "plan_matches"))
    return {"analysis_run": run.pk, "analysis_run_kind": run.kind, "analysis_run_at": run.created_at,
            "analysis_seed": run.seed, "plan_matches": bool(study.frozen_sha256) and run.plan_sha256 == study.frozen_sha256}


def latest_run(*, study: Study, kind: str) -> AnalysisRun | None:
    return AnalysisRun.objects.filter(study=study, kind=kind).order_by("-created_at", "-id").first()


def _run_entries(run: AnalysisRun | None) -> list[HypothesisResult]:
    if run is None:
        return []
    return [h for h in RunResults.from_dict(run.results).hypotheses or () if isinstance(h, HypothesisResult)]


def _hypothesis_row(study: Study, h: HypothesisResult, *, analysis: str, preregistered: bool, control: str | None,
                    run: AnalysisRun | None, result: HypothesisResult | None) -> tuple:
    plan = _plan_values(h, control=control)
    return _row({"study": study.slug, "label": h.label, "analysis": analysis, "preregistered": preregistered, **plan,
                 **_run_values(run if result is not None else None, study),
                 **_result_values(result or HypothesisResult(), arm=plan["arm"], comparator=plan["comparator"])})


def hypothesis_rows(*, study: Study) -> Iterator[tuple]:
    """The plan's hypotheses with the latest confirmatory run's results, then the latest exploratory run's.

    A row is ``confirmatory`` only when the hypothesis is in the frozen plan AND its numbers come
    from a confirmatory run; the exploratory run's rows (other hypotheses, other exclusion rules,
    the amended plan ...) are ``exploratory``, even when they reuse a pre-registered label.
    """
    plan = study_plan(study=study)  # before launch, the current (not yet pre-registered) plan
    control = plan_control_arm(plan)
    preregistered = study.frozen_config is not None
    # A planned hypothesis reads as a result without numbers: the same fields, one reader.
    planned = [HypothesisResult.from_dict(h) for h in plan.get("hypotheses") or []]
    planned_labels = {h.label for h in planned}
    confirmatory_run = latest_run(study=study, kind=AnalysisRun.Kind.CONFIRMATORY)
    by_label = {e.label: e for e in _run_entries(confirmatory_run)}
    for hypothesis in planned:
        result = by_label.get(hypothesis.label)
        analysis = "confirmatory" if preregistered and result is not None else "exploratory"
        yield _hypothesis_row(study, hypothesis, analysis=analysis, preregistered=preregistered, control=control,
                              run=confirmatory_run, result=result)
    exploratory_run = latest_run(study=study, kind=AnalysisRun.Kind.EXPLORATORY)
    unplanned = [(confirmatory_run, e) for label, e in by_label.items() if label not in planned_labels]
    unplanned += [(exploratory_run, e) for e in _run_entries(exploratory_run)]
    for run, entry in unplanned:
        yield _hypothesis_row(study, entry, analysis="exploratory", control=control, run=run, result=entry,
                              preregistered=preregistered and entry.label in planned_labels)
