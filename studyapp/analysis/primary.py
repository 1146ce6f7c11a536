"""The confirmatory analysis: a family of comparisons on participant-level outcomes, corrected
together.

Outcome ``"gain"`` is post-test minus pre-test accuracy (Hase & Bansal 2020: the effect of an
explanation is the change it causes, compared with the control arm's change); any phase name
(``"test"``, ``"post_test"``) uses that phase's accuracy; with a ``participants`` frame any of its
columns (a Likert rating, counterfactual accuracy) can be the outcome.

The family
----------
Every comparison a pre-registered hypothesis can make (``Hypothesis.comparison``):

* ``arm_vs_control`` and ``arm_vs_arm``: two independent groups (arms are assigned between
  participants), tested with ``welch`` (alias ``welch_t``, the Hypothesis model's name),
  ``permutation`` (seeded) or ``mann_whitney`` (Likert ratings), all from ``comparisons``;
* ``arm_vs_chance``: one arm's participants against a fixed value (1/number of classes for
  accuracy, 0 for a gain), a one-sample test: ``one_sample_t`` (``chance_level_test``),
  ``wilcoxon_signed_rank`` or ``sign_flip_permutation`` (``paired``, run on each participant's
  value minus chance, which is exactly the one-sample test). A two-sample test named for a
  comparison against chance runs its one-sample equivalent (``welch``/``welch_t`` -> t,
  ``mann_whitney`` -> Wilcoxon signed-rank, ``permutation`` -> sign-flip permutation), as the
  analysis service maps a named test to its paired equivalent; ``params['test_ran']`` says
  which ran.

Direction ``greater``/``less``/``two-sided`` is the difference arm - comparator (or arm -
chance). Direction ``equivalence`` needs a margin and runs a TOST (Welch TOST between arms,
one-sample TOST against chance): the family member is then the TOST p-value.

Without ``comparisons`` the family is "each non-control arm vs control" with results keyed by
arm name (the original call, used by the simulation and the benchmarks). With ``comparisons``
(a list of :class:`ComparisonSpec`) the results are keyed by each comparison's label (default
``"ig vs control"``, ``"ig vs saliency"``, ``"ig vs chance 0.5"``). Either way all p-values of the
call are one family, adjusted together with ``correction`` (Holm by default) and, when the
pre-registered family is larger than the comparisons run, ``family_size`` (R's ``p.adjust(n =
)``, see ``multiplicity``).

A participant found in two arms contradicts the between-participant design of every test here
and is refused with their ids, never assigned to one of the arms.

The whole path (aggregation, tests, correction) is vectorised per comparison, so a study of
10,000 participants x 100 trials (1,000,000 rows) runs in about a second.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .aggregate import participant_outcomes
from .comparisons import (
    chance_level_test,
    likert_mann_whitney,
    permutation_test,
    tost_equivalence,
    welch_t_test,
)
from .multiplicity import DEFAULT_METHOD, AdjustedPValues, adjust_pvalues
from .paired import (
    PairedSample,
    one_sample_tost,
    sign_flip_permutation_test,
    wilcoxon_signed_rank,
)
from .results import StatResult, _jsonable, normalize_alternative

CHANCE = "chance"
TWO_SAMPLE_TESTS = ("welch", "welch_t", "permutation", "mann_whitney")
ONE_SAMPLE_TESTS = ("one_sample_t", "wilcoxon_signed_rank", "sign_flip_permutation")
TESTS = TWO_SAMPLE_TESTS + ONE_SAMPLE_TESTS
# A two-sample test named for an arm against chance runs its one-sample equivalent.
ONE_SAMPLE_EQUIVALENT = {
    "welch": "one_sample_t",
    "welch_t": "one_sample_t",
    "permutation": "sign_flip_permutation",
    "mann_whitney": "wilcoxon_signed_rank",
}
RESAMPLING_TESTS = ("permutation", "sign_flip_permutation")
EQUIVALENCE = "equivalence"


@dataclass(frozen=True)
class ComparisonSpec:
    """One pre-registered comparison of the family.

    ``comparator``: another arm, ``None`` for the analysis's control arm, or ``"chance"``
    (:data:`CHANCE`) with the value in ``chance``. ``test``, ``direction`` and ``outcome``
    default to the analysis's ``test``, ``alternative`` and ``outcome``; ``margin`` (the
    equivalence margin, m or (low, high)) only with ``direction="equivalence"``; ``label``
    names the result (default: ``"<arm> vs <comparator>"``).
    """

    arm: str
    comparator: str | None = None
    chance: float | None = None
    test: str | None = None
    direction: str | None = None
    margin: float | tuple[float, float] | None = None
    outcome: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class Comparison:
    """A comparison as it ran: every default filled in, and which test ran."""

    label: str
    kind: str  # arm_vs_control, arm_vs_arm or arm_vs_chance (Hypothesis.comparison)
    arm: str
    comparator: str  # the other arm, or "chance"
    chance: float | None
    outcome: str
    direction: str  # greater, less, two-sided or equivalence
    margin: tuple[float, float] | None
    test: str  # as named
    test_ran: str  # the test that produced the p-value (tost for equivalence)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class PrimaryAnalysis:
    outcome: str
    control: str | None
    results: dict[str, StatResult]
    adjusted: AdjustedPValues
    params: dict[str, Any] = field(default_factory=dict)
    comparisons: dict[str, Comparison] = field(default_factory=dict)

    def rejected(self) -> dict[str, bool]:
        return dict(zip(self.results, (bool(r) for r in self.adjusted.reject)))


def several_arms_problem(frame: pd.DataFrame) -> str | None:
    """Why ``frame`` (trials or participants) contradicts the between-participant design: the
    participants found in more than one arm, named; None when there is none."""
    if "participant_id" not in frame.columns or "arm" not in frame.columns:
        return None
    pairs = frame[["participant_id", "arm"]].dropna().drop_duplicates()
    several = pairs.loc[pairs["participant_id"].duplicated(keep=False)]
    if several.empty:
        return None
    found = several.groupby("participant_id", observed=True, sort=True)["arm"]
    listed = [f"{pid} in {' and '.join(sorted(str(a) for a in arms))}" for pid, arms in found]
    shown = "; ".join(listed[:5]) + (f" and {len(listed) - 5} more" if len(listed) > 5 else "")
    return (
        f"{len(listed)} participant{'s appear' if len(listed) != 1 else ' appears'} in more than one "
        f"arm ({shown}). Arms are assigned between participants (each person is in one arm), and "
        "every comparison here treats the arms as independent groups, so these data contradict "
        "the design: correct the data (a repeated enrollment, a mislabelled import), or, if the "
        "condition really varies within participants, use the paired tests "
        "(studyapp.analysis.paired)."
    )


def _direction(direction: str) -> str:
    return EQUIVALENCE if direction == EQUIVALENCE else normalize_alternative(direction)


def _margin(margin, direction: str, where: str) -> tuple[float, float] | None:
    if direction != EQUIVALENCE:
        if margin is not None:
            raise ValueError(
                f"{where}: an equivalence margin is only used with direction 'equivalence' "
                f"(this comparison's direction is {direction!r})"
            )
        return None
    if margin is None:
        raise ValueError(
            f"{where}: an equivalence comparison needs its pre-registered margin, the largest "
            "difference you would call equivalent (for example 0.05 = 5 points)"
        )
    if isinstance(margin, (tuple, list)):
        low, high = float(margin[0]), float(margin[1])
    else:
        low, high = -abs(float(margin)), abs(float(margin))
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"{where}: the equivalence margin must satisfy low < high, got ({low}, {high})")
    return low, high


def _resolve(
    spec: ComparisonSpec, *, control: str | None, test: str, alternative: str, outcome: str,
    legacy_label: bool,
) -> Comparison:
    where = f"comparison {spec.label or spec.arm!r}"
    comparator = control if spec.comparator is None else spec.comparator
    if comparator is None:
        raise ValueError(f"{where}: name a comparator arm (or 'chance'), or the analysis's control arm")
    direction = _direction(spec.direction if spec.direction is not None else alternative)
    named = spec.test if spec.test is not None else test
    if named not in TESTS:
        raise ValueError(f"{where}: unknown test {named!r}; choose from {TESTS}")
    chance = None
    if comparator == CHANCE:
        if spec.chance is None or not math.isfinite(float(spec.chance)):
            raise ValueError(
                f"{where}: a comparison against chance needs the chance value (for example 0.5 "
                "for two classes, or 0 for a gain)"
            )
        chance = float(spec.chance)
        kind = "arm_vs_chance"
        ran = ONE_SAMPLE_EQUIVALENT.get(named, named)
    else:
        if spec.chance is not None:
            raise ValueError(
                f"{where}: a chance value was given but the comparator is the arm {comparator!r}; "
                f"use comparator={CHANCE!r} to compare against chance"
            )
        if comparator == spec.arm:
            raise ValueError(f"{where}: the arm {spec.arm!r} cannot be compared with itself")
        if named in ONE_SAMPLE_TESTS:
            raise ValueError(
                f"{where}: {named!r} is a one-sample test, for an arm against chance; two arms "
                f"are compared with one of {TWO_SAMPLE_TESTS}"
            )
        kind = "arm_vs_control" if comparator == control else "arm_vs_arm"
        ran = "welch" if named == "welch_t" else named
    margin = _margin(spec.margin, direction, where)
    if direction == EQUIVALENCE:
        ran = "one_sample_tost" if kind == "arm_vs_chance" else "welch_tost"
    out = outcome if spec.outcome is None else spec.outcome
    if spec.label is not None:
        label = str(spec.label)
    elif legacy_label:
        label = str(spec.arm)
    else:
        against = f"chance {chance:g}" if kind == "arm_vs_chance" else str(comparator)
        label = f"{spec.arm} vs {against}" + (f" on {out}" if out != outcome else "")
    return Comparison(label=label, kind=kind, arm=str(spec.arm), comparator=str(comparator),
                      chance=chance, outcome=out, direction=direction, margin=margin, test=named,
                      test_ran=ran)


def _arm_values(participants: pd.DataFrame, *, outcome: str, arm: str) -> tuple[np.ndarray, tuple]:
    """Non-missing values of ``outcome`` in ``arm`` and the ids of the participants they belong to."""
    if outcome not in participants.columns:
        raise ValueError(f"participant frame has no outcome column {outcome!r}")
    rows = participants.loc[participants["arm"] == arm]
    values = rows[outcome].to_numpy(dtype="float64")
    keep = ~np.isnan(values)
    ids = rows["participant_id"].to_numpy()[keep] if "participant_id" in rows.columns else np.flatnonzero(keep)
    values = values[keep]
    if values.size < 2:
        raise ValueError(
            f"arm {arm!r} has {values.size} participant{'s' if values.size != 1 else ''} with a "
            f"value of {outcome!r}; a comparison needs at least 2"
        )
    return values, tuple(ids.tolist())


def _run(c: Comparison, participants: pd.DataFrame, *, alpha: float, seed: int | None,
         n_resamples: int) -> StatResult:
    x, ids = _arm_values(participants, outcome=c.outcome, arm=c.arm)
    alt = c.direction
    if c.kind == "arm_vs_chance":
        if c.test_ran == "one_sample_tost":
            low, high = c.margin
            return one_sample_tost(x, mu=c.chance, margin=(low, high), alpha=alpha)
        if c.test_ran == "one_sample_t":
            return chance_level_test(x, chance=c.chance, alternative=alt)
        # Each participant's value against the constant chance: the paired tests on (value,
        # chance) are the one-sample tests of value - chance.
        sample = PairedSample(condition=c.arm, comparator=CHANCE, participants=ids,
                              condition_values=x, comparator_values=np.full(x.size, c.chance))
        if c.test_ran == "wilcoxon_signed_rank":
            return wilcoxon_signed_rank(sample, alternative=alt)
        return sign_flip_permutation_test(sample, alternative=alt, n_resamples=n_resamples, seed=seed)
    y, _ = _arm_values(participants, outcome=c.outcome, arm=c.comparator)
    if c.test_ran == "welch_tost":
        return tost_equivalence(x, y, margin=c.margin, alpha=alpha)
    if c.test_ran == "mann_whitney":
        return likert_mann_whitney(x, y, alternative=alt)
    if c.test_ran == "permutation":
        return permutation_test(x, y, alternative=alt, n_resamples=n_resamples, seed=seed)
    return welch_t_test(x, y, alternative=alt)


def primary_analysis(
    trials: pd.DataFrame | None,
    *,
    control: str | None = None,
    arms: list[str] | None = None,
    comparisons: list[ComparisonSpec] | None = None,
    outcome: str = "gain",
    pre_phase: str = "pre_test",
    post_phase: str = "post_test",
    alternative: str = "greater",
    correction: str = DEFAULT_METHOD,
    alpha: float = 0.05,
    test: str = "welch",
    seed: int | None = None,
    n_resamples: int = 9999,
    participants: pd.DataFrame | None = None,
    family_size: int | None = None,
) -> PrimaryAnalysis:
    """Run the family of comparisons on ``outcome`` and correct it together.

    Without ``comparisons``: each of ``arms`` (default: every arm but ``control``) against
    ``control``, results keyed by arm. With ``comparisons``: each :class:`ComparisonSpec`, results
    keyed by its label in the order given. ``participants`` may pass an already aggregated
    participant frame (the output of :func:`participant_outcomes`, after exclusions); otherwise it
    is built from ``trials``. ``family_size``: the pre-registered family's size when it is larger
    than the comparisons run here. Raises ValueError, in words, for a participant in two arms, an
    arm without participants, or a comparison that cannot run.
    """
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}")
    if comparisons is not None and arms is not None:
        raise ValueError("give either arms (each against control) or comparisons, not both")
    if trials is None and participants is None:
        raise ValueError("give the trials, or an aggregated participants frame")
    alt = normalize_alternative(alternative)
    for frame in (trials, participants):
        problem = several_arms_problem(frame) if frame is not None else None
        if problem:
            raise ValueError(problem)
    if participants is None:
        participants = participant_outcomes(trials, pre_phase=pre_phase, post_phase=post_phase)
    present = {str(a) for a in pd.unique(participants["arm"])}
    if comparisons is None:
        if control is None:
            raise ValueError("name the control arm, or give the comparisons to run")
        if control not in present:
            raise ValueError(f"control arm {control!r} has no participants")
        if arms is None:
            arms = sorted(a for a in present if a != control)
        specs, legacy = [ComparisonSpec(arm=a) for a in arms], True
    else:
        specs, legacy = list(comparisons), False
        if not specs:
            raise ValueError("the family has no comparison to run")
    resolved = [_resolve(s, control=control, test=test, alternative=alt, outcome=outcome, legacy_label=legacy)
                for s in specs]
    labels = [c.label for c in resolved]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"two comparisons share the label(s) {repeated}; give each its own label")
    for c in resolved:
        for arm in (c.arm, c.comparator if c.kind != "arm_vs_chance" else None):
            if arm is not None and arm not in present:
                raise ValueError(f"{c.label}: arm {arm!r} has no participants")
        if c.test_ran in RESAMPLING_TESTS and seed is None:
            raise ValueError(f"{c.label}: the {c.test_ran.replace('_', '-')} test needs a seed")
    results = {c.label: _run(c, participants, alpha=alpha, seed=seed, n_resamples=n_resamples)
               for c in resolved}
    pvalues = np.array([r.p_value for r in results.values()], dtype="float64")
    adjusted = adjust_pvalues(pvalues, method=correction, alpha=alpha, labels=list(results),
                              family_size=family_size)
    resampled = any(c.test_ran in RESAMPLING_TESTS for c in resolved)
    return PrimaryAnalysis(
        outcome=outcome,
        control=control,
        results=results,
        adjusted=adjusted,
        params={
            "alternative": alt,
            "correction": correction,
            "alpha": alpha,
            "test": test,
            "seed": seed,
            "n_resamples": n_resamples if resampled else None,
            "pre_phase": pre_phase,
            "post_phase": post_phase,
            "arms": [c.arm for c in resolved],
            "family_size": adjusted.family_size,
            "comparisons": [c.to_dict() for c in resolved],
        },
        comparisons={c.label: c for c in resolved},
    )
