"""The results of one analysis run, as typed structures: ``AnalysisRun.results`` is ``RunResults.to_dict()``.

The analysis service writes them; the report, the exports and the test fixtures read them, so no
one keeps a dict shape in step by hand. ``RunResults.from_dict`` reads every stored run, older ones
included (a missing key reads as its field's default), and ``to_dict`` gives back exactly the dict it
read (see ``records``). Numbers are plain floats, None where the analysis stored NaN or nothing.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .records import Record, many, map_of, mapping, nested, stored_as

OK = "ok"
# The participant-flow counts, in the order the report shows them.
FLOW_COUNTS = ("enrolled", "consented", "completed", "not_completed", "excluded", "analysed")


@dataclass(frozen=True)
class Effect(Record):
    """An effect size with its interval (``EffectSize.to_dict()``; some carry only name, estimate, method)."""

    name: str = ""
    estimate: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence_level: float | None = None
    method: str = ""


@dataclass(frozen=True)
class StatRecord(Record):
    """One computed test or model (``StatResult.to_dict()``, a secondary model, the bootstrap, the
    attrition test), or a section that was not computed: ``status`` other than "ok" and a ``reason``.
    The bootstrap's interval is flat (``estimate``, ``ci_low``, ``ci_high``), without ``effect``."""

    status: str = OK
    reason: str = ""
    method: str = ""
    statistic: float | None = None
    p_value: float | None = None
    alternative: str = ""
    n: Any = None  # participants (and trials, items) per arm
    params: Mapping[str, Any] = mapping()  # every argument that produced it (seed, resamples, chance ...)
    effect: Effect | None = nested(Effect)
    df: float | None = None
    extra: Any = None
    estimate: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence_level: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK


def not_computed(reason: str, status: str = "not_available") -> dict:
    """The stored form of a section that was not computed (a StatRecord, an Observer), with the
    reason in words. ``status``: not_available, not_applicable, not_run or failed."""
    return {"status": status, "reason": reason}


@dataclass(frozen=True)
class Describe(Record):
    """n, mean, SD and a two-sided t interval of one arm (or one condition); ``status``/``reason`` when
    it was not computed."""

    n: int | None = None
    mean: float | None = None
    sd: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence_level: float | None = None
    status: str = OK
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OK


@dataclass(frozen=True)
class Decision(Record):
    verdict: str | None = None  # supported, not_supported, equivalent or inconclusive
    reason: str = ""
    alpha: float | None = None


@dataclass(frozen=True)
class Contrast(Record):
    """What one hypothesis compares, and whether the same participants are on both sides."""

    kind: str = ""  # between_participants, within_participants or against_a_value
    factor: str | None = None  # the column that tells the two sides apart: arm or phase
    condition: str | None = None
    comparator: str | None = None
    why: str = ""
    design: str = ""
    named_test: str = ""
    test_run: str | None = None


@dataclass(frozen=True)
class Paired(Record):
    """A within-participant test: which paired test ran and why, its pairs, each condition described."""

    test: str = ""
    tost: bool = False
    named_test: str = ""
    n_pairs: int | None = None
    condition: str | None = None
    comparator: str | None = None
    descriptives: Mapping[str, Describe] = mapping(Describe)
    why: str = ""


@dataclass(frozen=True)
class HypothesisResult(Record):
    """One hypothesis as planned (or requested) with its tests, adjusted p-values and verdict."""

    label: str | None = None
    statement: str | None = None
    comparison: str | None = None
    arm: str | None = None
    comparator: str | None = None
    comparator_resolved: str | None = None  # older runs
    outcome: str | None = None
    likert_item: str | None = None
    direction: str | None = None
    equivalence_margin: float | None = None
    test: str | None = None
    alpha: float | None = None
    family: str | None = None
    correction: str | None = None
    planned_n_per_arm: int | None = None
    stopping_rule: str | None = None
    exclusion_rules: Any = None  # as planned or requested
    error: str | None = None
    contrast: Contrast | None = nested(Contrast)
    # arm (and comparator) -> Describe; "chance" -> the chance level, for a test against chance
    descriptives: Mapping[str, Describe | float] = mapping(Describe)
    p_value: float | None = None
    p_equivalence: float | None = None
    p_difference: float | None = None
    tests: Mapping[str, StatRecord] = mapping(StatRecord)  # difference, equivalence
    effect_sizes: Mapping[str, Effect | float] = mapping(Effect)
    paired: Paired | None = nested(Paired)
    p_adjusted: float | None = None
    p_equivalence_adjusted: float | None = None
    p_difference_adjusted: float | None = None
    decision: Decision | None = nested(Decision)
    kind: str | None = None  # confirmatory or exploratory, as its run

    def describe(self, arm: str | None) -> Describe:
        """The descriptives of ``arm`` (empty when there are none)."""
        found = self.descriptives.get(arm) if arm is not None else None
        return found if isinstance(found, Describe) else Describe()

    def test_result(self, name: str) -> StatRecord:
        """``tests[name]`` ("difference" or "equivalence"), empty when it did not run."""
        found = self.tests.get(name)
        return found if isinstance(found, StatRecord) else StatRecord()

    def effect(self, name: str) -> Effect | None:
        found = self.effect_sizes.get(name)
        return found if isinstance(found, Effect) else None

    @property
    def verdict(self) -> Decision:
        return self.decision if isinstance(self.decision, Decision) else Decision()


@dataclass(frozen=True)
class Family(Record):
    """A correction family: its method, its hypotheses and the adjusted p-values of each kind."""

    correction: str | None = None
    labels: tuple[str, ...] = many()
    warnings: tuple[str, ...] = many()
    adjusted_p_value: Mapping[str, Any] | None = mapping(none=True)
    adjusted_p_equivalence: Mapping[str, Any] | None = mapping(none=True)
    adjusted_p_difference: Mapping[str, Any] | None = mapping(none=True)


@dataclass(frozen=True)
class FlowCounts(Record):
    enrolled: int | None = None
    consented: int | None = None
    completed: int | None = None
    not_completed: int | None = None
    excluded: int | None = None
    analysed: int | None = None

    def counts(self) -> tuple[int | None, ...]:
        """The counts in FLOW_COUNTS order."""
        return (self.enrolled, self.consented, self.completed, self.not_completed, self.excluded, self.analysed)


@dataclass(frozen=True)
class FlowArm(FlowCounts):
    by_status: Mapping[str, int] = mapping()
    excluded_by_rule: Mapping[str, int] = mapping()


@dataclass(frozen=True)
class ParticipantFlow(Record):
    """Participants per arm from enrollment to analysis, and whether attrition differs between arms."""

    arms: Mapping[str, FlowArm] = mapping(FlowArm)
    totals: FlowCounts | None = nested(FlowCounts)
    rules: Mapping[str, Any] = mapping()
    rule_descriptions: Mapping[str, str] = mapping()
    note: str = ""
    attrition_test: StatRecord | None = nested(StatRecord)
    exclusion_test: StatRecord | None = nested(StatRecord)


@dataclass(frozen=True)
class Observer(Record):
    """A trivial observer's accuracy on the items (or why it was not computed)."""

    status: str = OK
    reason: str = ""
    accuracy: float | None = None
    description: str = ""
    majority_class: int | None = stored_as("class")
    method: str = ""
    fold_accuracies: tuple[float, ...] = many()
    n_items: int | None = None
    n_items_without_explanation: int | None = None
    seed: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK


@dataclass(frozen=True)
class Baselines(Record):
    """One phase: human accuracy per arm next to observers that need no explanation."""

    n_items: int | None = None
    true_label_observer: Observer | None = nested(Observer)
    majority_class_observer: Observer | None = nested(Observer)
    explanation_only_observer: Mapping[str, Observer] = mapping(Observer)
    human_accuracy: Mapping[str, float | None] = mapping()


@dataclass(frozen=True)
class ArmRef(Record):
    name: str | None = None
    kind: str = ""


@dataclass(frozen=True)
class StudyRef(Record):
    slug: str = ""
    title: str = ""
    state: str = ""
    launched_at: str | None = None  # ISO-8601
    closed_at: str | None = None


@dataclass(frozen=True)
class RunSettings(Record):
    """The constants the run used (resamples, thresholds) and the study's chance levels."""

    n_permutations: int | None = None
    n_bootstrap: int | None = None
    n_attrition_resamples: int | None = None
    mixed_min_trials: int | None = None
    cv_max_folds: int | None = None
    num_classes: int | None = None
    counterfactual_chance: float | None = None


@dataclass(frozen=True)
class RequestSpec(Record):
    """The exploratory request as typed (``studyapp.services.preregistration``)."""

    hypotheses: Any = None  # as typed
    exclusion_rules: Any = None
    use_amended_plan: Any = None
    note: str = ""


@dataclass(frozen=True)
class Deviation(Record):
    hypothesis_label: str = ""
    field: str = ""
    before: Any = None
    after: Any = None
    reason: str = ""
    recorded_by: str = ""
    recorded_at: str | None = None  # ISO-8601


@dataclass(frozen=True)
class RunResults(Record):
    """Everything one analysis run found (``AnalysisRun.results``). Sections a run did not compute
    read as empty, or None where "none at all" differs from "none found"."""

    kind: str | None = None  # confirmatory or exploratory
    label: str = ""
    exploratory_reasons: tuple[str, ...] = many()
    spec: RequestSpec | None = nested(RequestSpec)
    plan_sha256: str | None = None
    plan_verified: bool | None = None
    plan_drift: tuple[str, ...] = many()
    study: StudyRef | None = nested(StudyRef)
    seed: int | None = None
    settings: RunSettings | None = nested(RunSettings)
    arms: tuple[ArmRef, ...] = many(ArmRef)
    control: str | None = None
    exclusion_rules: Any = None  # the study's rules as resolved for the run
    design: str | None = None
    participants_in_several_arms: Mapping[str, list[str]] = mapping()
    exclusions: Mapping[str, list[str]] = mapping()  # participant public id -> the rules they broke
    analysed_participants: int | None = None
    simulated_participants: bool | None = None
    participant_flow: ParticipantFlow | None = nested(ParticipantFlow)
    hypotheses: tuple[HypothesisResult, ...] | None = many(HypothesisResult, none=True)
    families: Mapping[str, Family] = mapping(Family)
    secondary: Mapping[str, Mapping[str, StatRecord]] = mapping(map_of(StatRecord))
    chance: Mapping[str, Mapping[str, StatRecord]] = mapping(map_of(StatRecord))
    descriptives: Mapping[str, Mapping[str, Describe]] = mapping(map_of(Describe))
    baselines: Mapping[str, Baselines] = mapping(Baselines)
    deviations: tuple[Deviation, ...] = many(Deviation)
    software: Mapping[str, str | None] = mapping()
    created_at: str | None = None  # ISO-8601

    @property
    def exploratory(self) -> bool:
        return self.kind == "exploratory"

    @property
    def num_classes(self) -> int | None:
        return self.settings.num_classes if isinstance(self.settings, RunSettings) else None
