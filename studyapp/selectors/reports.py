"""What a study report reads from the database: its runs (as typed results), the ratings of the
analysed participants, the deviations, the analysis jobs. The report itself
(``studyapp.reports.context``) only formats what these return."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from studyapp.analysis.run_results import RunResults
from studyapp.models import AnalysisJob, AnalysisRun, Participant, QuestionnaireAnswer, Study
from studyapp.selectors.plans import deviation_as_dict, study_deviations

MAX_EXPLORATORY_RUNS = 5  # each run draws its own figures; keeps the page fast

# {item: {arm: {rating: count}}}
Ratings = dict[str, dict[str, dict[int, int]]]


@dataclass(frozen=True)
class RunData:
    """One stored analysis run as the report reads it."""

    id: int | None
    kind: str
    number: int
    seed: int
    created_at: datetime | None
    plan_sha256: str
    software: dict
    results: RunResults
    looks: int  # how many confirmatory runs the study has: "look k of n"
    ratings: Ratings = field(default_factory=dict)  # of the participants the run analysed


@dataclass(frozen=True)
class ReportData:
    study: Study  # with its model and dataset
    study_arms: list[dict]  # [{name, kind}] in order, for runs that stored none
    confirmatory: list[RunData]  # every look, first to last
    exploratory: list[RunData]  # the latest ones, latest first
    exploratory_total: int
    deviations: list[dict]  # deviation_as_dict, recorded_at as a datetime


def rating_counts(*, study: Study, results: RunResults) -> Ratings:
    """{item: {arm: {rating: count}}} over the participants the run analysed.

    Analysed = completed and not excluded by the run's rules (``results.exclusions``), so the
    figure describes the same people as the tests.
    """
    excluded = set(results.exclusions)
    counts: dict[str, dict[str, dict[int, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    answers = (QuestionnaireAnswer.objects
               .filter(participant__study=study, participant__status=Participant.Status.COMPLETED)
               .values_list("participant__public_id", "participant__arm__name", "item", "value")
               .order_by("item", "participant__arm__position", "participant__arm__id"))
    for public_id, arm, item, value in answers:
        if str(public_id) not in excluded:
            counts[item][arm][int(value)] += 1
    return {item: {arm: dict(v) for arm, v in per_arm.items()} for item, per_arm in counts.items()}


def run_data(run: AnalysisRun, *, looks: int, study: Study | None = None) -> RunData:
    """``run`` with its results typed (and, given the study, the ratings of its participants)."""
    results = RunResults.from_dict(run.results)
    return RunData(id=run.pk, kind=run.kind, number=run.number, seed=run.seed, created_at=run.created_at,
                   plan_sha256=run.plan_sha256, software=run.software, results=results, looks=looks,
                   ratings=rating_counts(study=study, results=results) if study is not None else {})


def study_report_data(*, study: Study) -> ReportData:
    """Everything the report of ``study`` shows: every confirmatory run, the latest exploratory ones."""
    study = Study.objects.select_related("model", "dataset").get(pk=study.pk)
    runs = AnalysisRun.objects.filter(study=study)
    confirmatory = list(runs.filter(kind=AnalysisRun.Kind.CONFIRMATORY).order_by("number", "id"))
    exploratory = list(runs.filter(kind=AnalysisRun.Kind.EXPLORATORY).order_by("-created_at", "-id")
                       [:MAX_EXPLORATORY_RUNS])
    looks = len(confirmatory)
    # The report draws the ratings of the latest look only: the earlier looks are listed, not drawn.
    shown = {confirmatory[-1].pk} if confirmatory else set()
    return ReportData(
        study=study,
        study_arms=[{"name": a.name, "kind": a.kind} for a in study.arms.order_by("position", "id")],
        confirmatory=[run_data(r, looks=looks, study=study if r.pk in shown else None) for r in confirmatory],
        exploratory=[run_data(r, looks=looks, study=study) for r in exploratory],
        exploratory_total=runs.filter(kind=AnalysisRun.Kind.EXPLORATORY).count(),
        deviations=[deviation_as_dict(d, timestamp=None) for d in study_deviations(study=study)],
    )


def study_analysis_jobs(*, study: Study, failed_shown: int = 5) -> dict[str, Any]:
    """Analysis requests still queued or running, and the latest failed ones with their reason
    (the staff page only: the downloadable report is a record of results)."""
    jobs = AnalysisJob.objects.filter(study=study)
    active = list(jobs.filter(status__in=[AnalysisJob.Status.QUEUED, AnalysisJob.Status.RUNNING])
                  .order_by("created_at", "id"))
    failed = list(jobs.filter(status=AnalysisJob.Status.FAILED).order_by("-finished_at", "-id")[:failed_shown])
    return {"active": active, "failed": failed}
