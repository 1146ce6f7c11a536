"""Analysis runs: the frozen plan (confirmatory) or any other request (exploratory), on the database.

The statistics live in ``studyapp.analysis`` (Django-free: how each hypothesis maps to a test is
documented in ``studyapp.analysis.hypotheses``); this service loads the data, applies the exclusion
rules (blind to arm, ``studyapp.services.exclusions``; only completed participants that no rule
removes are analysed), and stores one :class:`AnalysisRun` whose ``results`` are a
``studyapp.analysis.run_results.RunResults``: everything a report needs.

``exclusion_rules`` of a hypothesis are added to (and override) the study's rules for that
hypothesis only. A participant found in more than one arm contradicts the design: every hypothesis
about those arms is refused with the reason (and their arms' descriptives are not computed)
instead of guessing where they belong.

Secondary, never used for verdicts (``studyapp.analysis.secondary`` and ``observers``): a
crossed-random-effects logistic model, GEE clustered by participant, a two-stage bootstrap CI,
accuracy against chance per arm, and trivial observers next to human accuracy.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import pandas as pd
from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max
from django.utils import timezone

from explainers.canonical import json_safe
from studyapp.analysis.families import families as family_decisions
from studyapp.analysis.flow import N_ATTRITION_RESAMPLES, participant_flow, several_arms, several_arms_reason
from studyapp.analysis.hypotheses import (N_PERMUTATIONS, UNTESTED, chance_of, comparator_of, contrast_of,
                                          hypothesis_tests)
from studyapp.analysis.observers import CV_MAX_FOLDS, baselines
from studyapp.analysis.outcomes import AnalysedOutcomes, chance_and_descriptives, counterfactual_chance, trial_frame
from studyapp.analysis.run_results import (ArmRef, Baselines, Describe, Deviation, Family, HypothesisResult,
                                           ParticipantFlow, RequestSpec, RunResults, RunSettings, StudyRef,
                                           StatRecord)
from studyapp.analysis.secondary import MIXED_MIN_TRIALS, N_BOOTSTRAP, none_run, secondary
from studyapp.analysis.software import software_versions
from studyapp.design import StudyDesign
from studyapp.models import AnalysisRun, Explanation, Participant, QuestionnaireAnswer, Study
from studyapp.selectors import ANALYSIS_COLUMNS, study_edits, trials_long_frame
from studyapp.selectors.plans import deviation_as_dict, plan_control_arm, study_deviations, study_plan
from studyapp.services.datasets.common import npy_array
from studyapp.services.errors import ServiceError
from studyapp.services.exclusions import EXCLUSION_RULES, participant_exclusions
from studyapp.services.preregistration import (
    analysis_request_check,
    analysis_request_resolve,
    hypothesis_value_problems,
    preregistration_drift,
)

LABELS = {"confirmatory": "CONFIRMATORY: the pre-registered plan, frozen at launch",
          "exploratory": "EXPLORATORY: not part of the pre-registered plan"}


# ---------------------------------------------------------------- data



def _trials(study: Study) -> pd.DataFrame:
    """Answered trials in the analysis package's column names (``studyapp.analysis.outcomes.trial_frame``).

    Participant ids are canonical UUID text (as in ``_Data``), and the text columns (participant,
    arm, phase, task) are categoricals read as such: every groupby, isin and drop_duplicates works on
    integer codes instead of hashing a million strings (a 1,000,000-trial run 10.9 -> 7.6 s, the
    stored results identical; ``groupby`` in pandas 3 keeps only the categories observed).
    """
    return trial_frame(trials_long_frame(study=study, answered_only=True, columns=ANALYSIS_COLUMNS,
                                         uuid_text=True, categorical=True))


def _candidate_edits(study: Study, stimuli: list) -> dict:
    """{stimulus id: how many of the study's candidate edits it has}."""
    return dict(study_edits(study=study, stimuli=stimuli).values("stimulus_id").annotate(n=Count("pk"))
                .values_list("stimulus_id", "n"))


def _attributions(study: Study, arm: str, stimuli: list) -> dict:
    """{stimulus id: the arm's stored raw attributions}."""
    stored = Explanation.objects.filter(arm__study=study, arm__name=arm, stimulus_id__in=stimuli)
    return {stimulus: npy_array(blob) for stimulus, blob in stored.values_list("stimulus_id", "attributions")}


# ---------------------------------------------------------------- one hypothesis


def _hypothesis_problems(h: dict, arm_names: list[str], control: str | None) -> list[str]:
    problems = []
    for field in ("comparison", "arm", "comparator", "outcome", "direction", "equivalence_margin", "test",
                  "alpha", "correction", "exclusion_rules"):
        problems += hypothesis_value_problems(field=field, value=h.get(field), arm_names=arm_names)
    if h["direction"] == "equivalence" and h.get("equivalence_margin") is None:
        problems.append("an equivalence hypothesis needs an equivalence_margin")
    if h["outcome"] == "likert" and not h.get("likert_item"):
        problems.append("a Likert outcome needs likert_item")
    if h["comparison"] == "arm_vs_arm" and not h.get("comparator"):
        problems.append("arm_vs_arm needs a comparator arm")
    if h["comparison"] == "arm_vs_control" and not h.get("comparator") and control is None:
        problems.append("the plan has no control arm to compare with")
    if h["comparison"] == "arm_vs_chance" and h["outcome"] == "likert":
        problems.append("arm_vs_chance is not defined for a Likert outcome")
    if h["comparison"] != "arm_vs_chance" and (h.get("comparator") or control) == h.get("arm"):
        problems.append("the arm cannot be compared with itself")
    return problems


# Also checked before Launch (studyapp/services/plan_checks.py): a plan that fails here is never frozen.
hypothesis_plan_problems = _hypothesis_problems


def _rows_of(frame: pd.DataFrame, participants: frozenset[str]) -> pd.DataFrame:
    """The rows of ``participants`` in ``frame``: the frame itself when they are all of its rows (no
    copy of a million trials to keep every one of them)."""
    if not len(frame):
        return frame
    keep = frame["participant_id"].isin(participants)
    return frame if keep.all() else frame.loc[keep]


@dataclasses.dataclass(frozen=True, eq=False)
class _Analysed:
    """The participants one rule set analyses, their trials and ratings, and their outcomes
    (measures and outcome values, each computed once for every hypothesis that shares them)."""

    participants: frozenset[str]
    trials: pd.DataFrame
    likert: pd.DataFrame
    outcomes: AnalysedOutcomes


@dataclasses.dataclass
class _Data:
    """Everything loaded once per run. Exclusions are computed per rule set (hypothesis rules add to
    the study's), blind to arm, and cached, and so are the analysed participants and their rows: a
    plan's hypotheses usually share the study's rules, and they then share one selection of the
    million-trial frame instead of each selecting the same rows again."""

    study: Study
    rules: dict
    people: pd.DataFrame  # participant_id, arm, status, consented_at, consented
    trials: pd.DataFrame  # every answered trial, analysis column names
    likert: pd.DataFrame  # participant_id, arm, item, value
    arms: list[dict]  # the plan's arms
    control: str | None
    num_classes: int
    design: str  # StudyDesign.design of the plan: between or within_pre_post
    several_arms: dict[str, list[str]]  # participants found in more than one arm (a data error)
    _cache: dict = dataclasses.field(default_factory=dict)  # rule key -> exclusions
    _analysed: dict = dataclasses.field(default_factory=dict)  # rule key -> analysed participants
    _rows: dict = dataclasses.field(default_factory=dict)  # analysed participants -> _Analysed

    @property
    def arm_names(self) -> list[str]:
        return [a["name"] for a in self.arms]

    def _rules_key(self, extra_rules: dict | None) -> tuple[dict, str]:
        effective = {**self.rules, **(extra_rules or {})}
        return effective, repr(sorted(effective.items()))

    def exclusions(self, extra_rules: dict | None = None) -> dict[str, list[str]]:
        effective, key = self._rules_key(extra_rules)
        if key not in self._cache:
            # The straight-lining rule reads the trials loaded here: one database scan fewer.
            found = participant_exclusions(study=self.study, rules=effective, answers=self.trials)
            self._cache[key] = {str(p): reasons for p, reasons in found.items()}
        return self._cache[key]

    def analysed(self, extra_rules: dict | None = None) -> frozenset[str]:
        """Completed participants that no rule excludes."""
        _, key = self._rules_key(extra_rules)
        if key not in self._analysed:
            completed = set(self.people.loc[self.people["status"] == Participant.Status.COMPLETED,
                                            "participant_id"])
            self._analysed[key] = frozenset(p for p, reasons in self.exclusions(extra_rules).items()
                                            if p in completed and not reasons)
        return self._analysed[key]

    def selection(self, extra_rules: dict | None = None) -> _Analysed:
        """The analysed participants' trials and ratings, selected once per set of participants (two
        rule sets that exclude the same people share them)."""
        participants = self.analysed(extra_rules)
        if participants not in self._rows:
            trials, likert = _rows_of(self.trials, participants), _rows_of(self.likert, participants)
            self._rows[participants] = _Analysed(participants=participants, trials=trials, likert=likert,
                                                 outcomes=AnalysedOutcomes(trials, likert))
        return self._rows[participants]


def _load(study: Study, rules: dict, *, simulated: bool = False) -> _Data:
    plan = study_plan(study=study)
    # Real and simulated participants are never analysed together (simulated: pilots and demos).
    people = pd.DataFrame.from_records(
        Participant.objects.filter(study=study, simulated=simulated, preview=False).values_list(
            "public_id", "arm__name", "status", "consented_at"),
        columns=["participant_id", "arm", "status", "consented_at"])
    people["consented"] = people["consented_at"].notna()
    likert = pd.DataFrame.from_records(
        QuestionnaireAnswer.objects.filter(participant__study=study, participant__preview=False).values_list(
            "participant__public_id", "participant__arm__name", "item", "value"),
        columns=["participant_id", "arm", "item", "value"])
    # Participants are identified by canonical UUID text throughout a run (see _trials).
    people["participant_id"] = people["participant_id"].map(str).astype("str")
    likert["participant_id"] = likert["participant_id"].map(str).astype("str")
    keep = frozenset(people["participant_id"])
    trials, likert = _rows_of(_trials(study), keep), _rows_of(likert, keep)
    config = (plan.get("study") or {}).get("config") or {}
    return _Data(study=study, rules=rules, people=people, trials=trials, likert=likert, arms=plan["arms"],
                 control=plan_control_arm(plan), num_classes=len(plan["model"]["class_names"]),
                 design=config.get("design") or StudyDesign.model_fields["design"].default,
                 several_arms=several_arms(people, trials, likert))


def _run_hypotheses(data: _Data, hypotheses: list[dict], *, cf_chance: float | None,
                    seed: int) -> tuple[list[dict], dict]:
    """(one entry per hypothesis: the plan's fields, its contrast, tests or error; secondary
    analyses by label). Adjusted p-values and verdicts come later, per family."""
    entries, secondary_by_label = [], {}
    for h in hypotheses:
        comparator = comparator_of(h, data.control)
        entry = {**h, "comparator": comparator, "error": None}
        entries.append(entry)
        problems = _hypothesis_problems(h, data.arm_names, data.control)
        if problems:
            entry.update(error="; ".join(problems), **UNTESTED)
            continue
        contrast = contrast_of(h, comparator, data.design)
        entry["contrast"] = contrast.to_dict()
        keep = data.analysed(h["exclusion_rules"])
        arms = {h["arm"], comparator}
        several = {p: a for p, a in data.several_arms.items() if p in keep and arms.intersection(a)}
        if several:
            reason = several_arms_reason(several)
            entry.update(error=reason, **UNTESTED)
            if comparator is not None and h["outcome"] != "likert":
                secondary_by_label[h["label"]] = none_run(reason)
            continue
        analysed = data.selection(h["exclusion_rules"])
        chance = (chance_of(h, num_classes=data.num_classes, counterfactual_chance=cf_chance)
                  if comparator is None else None)
        entry.update(hypothesis_tests(h, trials=analysed.trials, likert=analysed.likert, comparator=comparator,
                                      contrast=contrast, chance=chance, seed=seed, outcomes=analysed.outcomes))
        entry["contrast"]["test_run"] = ((entry.get("tests") or {}).get("difference") or {}).get("method")
        if comparator is not None and h["outcome"] != "likert":
            secondary_by_label[h["label"]] = secondary(h, analysed.trials, comparator=comparator, seed=seed,
                                                       mixed_max_trials=settings.ANALYSIS_MIXED_MAX_TRIALS,
                                                       outcomes=analysed.outcomes)
    return entries, secondary_by_label


def _nobody_to_analyse(data: _Data, hypotheses: list[dict]) -> str | None:
    """Why a confirmatory run would analyse no one, in words; None when someone can be analysed.

    Analysable: a real (not simulated) participant of an arm the plan compares who completed, is
    not excluded by the study's rules and answered something. A confirmatory run is a look at the
    data that stays on the record ("look 2 of 2"), so a look at nobody is refused, not stored.
    """
    compared = {h.get("arm") for h in hypotheses}
    compared |= {h.get("comparator") or data.control for h in hypotheses if h.get("comparison") != "arm_vs_chance"}
    arms = [a for a in data.arm_names if a in compared] or data.arm_names
    people = data.people.loc[data.people["arm"].isin(arms)]
    completed = set(people.loc[people["status"] == Participant.Status.COMPLETED, "participant_id"])
    kept = completed & data.analysed()
    # isin, not a set of the million trials' participant ids
    if data.trials["participant_id"].isin(kept).any() or data.likert["participant_id"].isin(kept).any():
        return None
    plural = "s" if len(people) != 1 else ""
    reason = f"of {len(people)} real participant{plural} in those arms, {len(completed)} completed"
    if completed:
        reason += f", {len(completed - kept)} of them excluded by the exclusion rules"
    if kept:
        reason += f", and none of the {len(kept)} remaining answered a trial or a questionnaire item"
    simulated = Participant.objects.filter(study=data.study, simulated=True, preview=False).count()
    if simulated:
        reason += (f" ({simulated} simulated participant{'s are' if simulated != 1 else ' is'} never analysed "
                   "confirmatorily: analyse them as a pilot)")
    return (f"No confirmatory analysis was stored: there is no one to analyse in the compared arms "
            f"({', '.join(arms)}): {reason}. A confirmatory run is a look at the data that stays on the study's "
            "record, so it is refused until participants have completed.")


def _store_run(*, study: Study, kind: str, seed: int, results: dict) -> AnalysisRun:
    """Store the run as the next of its kind for the study (confirmatory look k = k-th stored)."""
    with transaction.atomic():
        # Under the study's row lock: two runs finishing at once get numbers k and k+1, never the
        # same (the unique constraint would refuse the second). Lock order: the study first.
        Study.objects.select_for_update().filter(pk=study.pk).first()
        last = AnalysisRun.objects.filter(study=study, kind=kind).aggregate(last=Max("number"))["last"] or 0
        return AnalysisRun.objects.create(study=study, kind=kind, number=last + 1, plan_sha256=study.frozen_sha256,
                                          seed=seed, results=results, software=results["software"])


def _each(cls, mapping: dict, depth: int = 1) -> dict:
    """A stored mapping ({key: record}, or {key: {key: record}} with ``depth=2``) read as ``cls``."""
    if depth > 1:
        return {k: _each(cls, v, depth - 1) for k, v in mapping.items()}
    return {k: cls.from_dict(v) for k, v in mapping.items()}


def study_analyze(*, study: Study, seed: int = 0, exploratory_spec: dict | None = None,
                  simulated: bool = False) -> AnalysisRun:
    """Run the frozen plan (no spec) or an exploratory request, store and return the AnalysisRun.

    A confirmatory run is refused for a study that was never launched, when the frozen plan no
    longer matches the SHA-256 recorded at launch, and when no participant can be analysed (it
    would stay on the record as a look at the data). Runs are numbered per study and kind. A spec
    (format: the docstring of ``studyapp.services.preregistration``) that reproduces the frozen
    plan exactly is confirmatory; any other spec is exploratory and labelled so in the run, its
    results and each of its hypotheses. An exploratory request may run before launch (pilot data).
    """
    study = Study.objects.select_related("model", "dataset").get(pk=study.pk)
    kind, exploratory_reasons, verified = analysis_request_check(study=study, seed=seed, spec=exploratory_spec)
    hypotheses, rules = analysis_request_resolve(study=study, spec=exploratory_spec)
    if simulated:
        # Simulated participants (pilots, the demo) never enter a confirmatory analysis.
        kind, exploratory_reasons = "exploratory", [*exploratory_reasons, "run on simulated participants only"]
    data = _load(study, rules, simulated=simulated)
    if kind == "exploratory":
        # A request is typed by a person now: tell them at once what is wrong with it. (A frozen
        # plan cannot be fixed, so its untestable hypotheses are reported as inconclusive instead.)
        problems = [f"{h['label']}: {p}" for h in hypotheses
                    for p in _hypothesis_problems(h, data.arm_names, data.control)]
        if problems:
            raise ServiceError(problems)
    else:
        nobody = _nobody_to_analyse(data, hypotheses)
        if nobody:
            raise ServiceError(nobody)

    main = data.selection()  # the study's rules: the same rows as every hypothesis without rules of its own
    analysed, trials = main.participants, main.trials
    cf_chance = counterfactual_chance(trials, num_classes=data.num_classes,
                                      candidate_edits=partial(_candidate_edits, study))
    entries, secondary_by_label = _run_hypotheses(data, hypotheses, cf_chance=cf_chance, seed=seed)
    families = family_decisions(entries)
    chance, descriptives = chance_and_descriptives(trials, data.arm_names, num_classes=data.num_classes,
                                                   cf_chance=cf_chance, several_arms=data.several_arms)
    arms = [{"name": a["name"], "kind": a["kind"]} for a in data.arms]
    exclusions = data.exclusions()
    flow = participant_flow(data.people, exclusions, rules, data.arm_names, seed, rule_descriptions=EXCLUSION_RULES)
    observed = baselines(trials, arms, descriptives, seed, attributions=partial(_attributions, study))
    results = RunResults(
        kind=kind, label=LABELS[kind], exploratory_reasons=tuple(exploratory_reasons),
        spec=None if exploratory_spec is None else RequestSpec.from_dict(exploratory_spec),
        plan_sha256=study.frozen_sha256, plan_verified=verified, plan_drift=tuple(preregistration_drift(study=study)),
        study=StudyRef(slug=study.slug, title=study.title, state=study.state,
                       launched_at=study.launched_at.isoformat() if study.launched_at else None,
                       closed_at=study.closed_at.isoformat() if study.closed_at else None),
        seed=seed,
        settings=RunSettings(n_permutations=N_PERMUTATIONS, n_bootstrap=N_BOOTSTRAP,
                             n_attrition_resamples=N_ATTRITION_RESAMPLES, mixed_min_trials=MIXED_MIN_TRIALS,
                             cv_max_folds=CV_MAX_FOLDS, num_classes=data.num_classes, counterfactual_chance=cf_chance),
        arms=tuple(ArmRef(**a) for a in arms), control=data.control, exclusion_rules=rules, design=data.design,
        # A data error (see several_arms_reason): listed so the report can say so above every table.
        participants_in_several_arms={p: a for p, a in data.several_arms.items() if p in analysed},
        exclusions={str(p): reasons for p, reasons in exclusions.items() if reasons},
        analysed_participants=len(analysed), simulated_participants=simulated,
        participant_flow=ParticipantFlow.from_dict(json_safe(flow)),
        hypotheses=tuple(HypothesisResult.from_dict(json_safe({**entry, "kind": kind})) for entry in entries),
        families=_each(Family, json_safe(families)),
        secondary=_each(StatRecord, json_safe(secondary_by_label), depth=2),
        chance=_each(StatRecord, json_safe(chance), depth=2),
        descriptives=_each(Describe, json_safe(descriptives), depth=2),
        baselines=_each(Baselines, json_safe(observed)),
        deviations=tuple(Deviation.from_dict(deviation_as_dict(d)) for d in study_deviations(study=study)),
        software=software_versions(),
        created_at=timezone.now().isoformat(),
    )
    return _store_run(study=study, kind=kind, seed=seed, results=json_safe(results.to_dict()))
