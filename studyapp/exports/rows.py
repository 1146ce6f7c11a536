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

from studyapp.exports.columns import HYPOTHESIS_COLUMNS, PHASES, likert_column_name
from studyapp.exports.cursors import server_side_rows, streamed
from studyapp.models import (AnalysisRun, ModelOutput, Participant, QuestionnaireAnswer, Response, Study, StudyItem,
                             Trial)
from studyapp.selectors import TRIAL_COLUMNS, trials_long_queryset

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
                .values("id", "public_id", "arm__name", "arm__kind", "status", "source", "simulated", "started_at",
                        "consented_at", "consent_version", "completed_at", "last_seen_at", "comprehension_attempts",
                        "instructions_ms")
                .annotate(**aggregates).annotate(device=Subquery(first_device)))
    for p in streamed(queryset, chunk_size=min(CHUNK_SIZE, PARTICIPANT_FETCH)):
        duration = ((p["completed_at"] - p["started_at"]).total_seconds()
                    if p["completed_at"] and p["started_at"] else None)
        accuracy = {phase: _accuracy(p[f"c_{phase}"], p[f"n_{phase}"]) for phase in PHASES}
        pre, post = accuracy.get("pre_test"), accuracy.get("post_test")
        answers = likert.get(p["id"], {})
        rules, excluded = flags.get(str(p["public_id"]), NOT_EVALUATED)
        yield (
            study.slug, p["public_id"], p["arm__name"], p["arm__kind"], p["status"], p["source"], p["simulated"],
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

_PLAN_FIELDS = ("statement", "comparison", "arm", "comparator", "outcome", "likert_item", "direction",
                "equivalence_margin", "test", "alpha", "family", "correction", "planned_n_per_arm")
_N_RESULT = 19


def _plan(*, study: Study) -> dict:
    """The frozen plan; before launch, the current (not yet pre-registered) plan."""
    if study.frozen_config is not None:
        return study.frozen_config
    from studyapp.selectors.plans import study_plan_document

    return study_plan_document(study=study)


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _hypothesis_fields(entry: dict, *, control: str | None) -> tuple:
    values = {f: entry.get(f) for f in _PLAN_FIELDS}
    if values["comparison"] == "arm_vs_control" and not values["comparator"]:
        values["comparator"] = control  # "the control arm when empty": say which
    if values["comparison"] == "arm_vs_chance":
        values["comparator"] = None
    return tuple(values[f] for f in _PLAN_FIELDS)


def _result_values(entry: dict | None, *, arm: str | None, comparator: str | None) -> tuple:
    """test_method ... error from one entry of AnalysisRun.results["hypotheses"]
    (shape written by studyapp.services.analysis.study_analyze)."""
    if not entry:
        return (None,) * _N_RESULT
    tests = _dict(entry.get("tests"))
    difference = _dict(tests.get("difference"))
    effect = _dict(difference.get("effect"))
    descriptives = _dict(entry.get("descriptives"))
    arm_stats, comparator_stats = _dict(descriptives.get(arm)), _dict(descriptives.get(comparator))
    decision = _dict(entry.get("decision"))
    return (
        difference.get("method"), arm_stats.get("n"), comparator_stats.get("n"), arm_stats.get("mean"),
        comparator_stats.get("mean"), difference.get("statistic"), difference.get("df"), entry.get("p_value"),
        entry.get("p_adjusted"), entry.get("p_equivalence"), entry.get("p_equivalence_adjusted"),
        decision.get("verdict"), decision.get("reason"), effect.get("name"), effect.get("estimate"),
        effect.get("ci_low"), effect.get("ci_high"), _dict(_dict(entry.get("effect_sizes")).get("cohens_d"))
        .get("estimate"), entry.get("error"),
    )


def _run_values(run: AnalysisRun | None, study: Study) -> tuple:
    if run is None:
        return (None,) * 5
    return (run.pk, run.kind, run.created_at, run.seed,
            bool(study.frozen_sha256) and run.plan_sha256 == study.frozen_sha256)


def latest_run(*, study: Study, kind: str) -> AnalysisRun | None:
    return AnalysisRun.objects.filter(study=study, kind=kind).order_by("-created_at", "-id").first()


def _run_entries(run: AnalysisRun | None) -> list[dict]:
    if run is None:
        return []
    return [e for e in (run.results or {}).get("hypotheses") or [] if isinstance(e, dict)]


def hypothesis_rows(*, study: Study) -> Iterator[tuple]:
    """The plan's hypotheses with the latest confirmatory run's results, then the latest exploratory run's.

    A row is ``confirmatory`` only when the hypothesis is in the frozen plan AND its numbers come
    from a confirmatory run; the exploratory run's rows (other hypotheses, other exclusion rules,
    the amended plan ...) are ``exploratory``, even when they reuse a pre-registered label.
    """
    plan = _plan(study=study)
    control = next((a["name"] for a in plan.get("arms") or [] if a.get("kind") == "control"), None)
    preregistered = study.frozen_config is not None
    planned = list(plan.get("hypotheses") or [])
    planned_labels = {h["label"] for h in planned}
    confirmatory_run = latest_run(study=study, kind=AnalysisRun.Kind.CONFIRMATORY)
    by_label = {e.get("label"): e for e in _run_entries(confirmatory_run)}
    for hypothesis in planned:
        result = by_label.get(hypothesis["label"])
        fields = _hypothesis_fields(hypothesis, control=control)
        arm, comparator = fields[2], fields[3]
        analysis = "confirmatory" if preregistered and result is not None else "exploratory"
        yield (study.slug, hypothesis["label"], analysis, preregistered, *fields,
               *_run_values(confirmatory_run if result else None, study),
               *_result_values(result, arm=arm, comparator=comparator))
    exploratory_run = latest_run(study=study, kind=AnalysisRun.Kind.EXPLORATORY)
    unplanned = [(confirmatory_run, e) for label, e in by_label.items() if label not in planned_labels]
    unplanned += [(exploratory_run, e) for e in _run_entries(exploratory_run)]
    for run, entry in unplanned:
        fields = _hypothesis_fields(entry, control=control)
        yield (study.slug, entry.get("label"), "exploratory", preregistered and entry.get("label") in planned_labels,
               *fields, *_run_values(run, study), *_result_values(entry, arm=fields[2], comparator=fields[3]))


assert len(_PLAN_FIELDS) + 4 + 5 + _N_RESULT == len(HYPOTHESIS_COLUMNS)
