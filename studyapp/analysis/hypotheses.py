"""One pre-registered hypothesis (a dict of the plan) + the analysed participants -> its tests.

The participant is the unit of analysis:

* outcome ``test_accuracy``: a participant's accuracy on ``forward`` trials of the ``test`` phase;
  ``gain``: post-test minus pre-test accuracy on ``forward`` trials (Hase & Bansal 2020);
  ``counterfactual_accuracy``: accuracy on ``counterfactual_*`` trials of every phase except
  practice and learning; ``likert``: the participant's rating of ``likert_item``.
* comparison ``arm_vs_control`` (comparator = the plan's control arm unless one is named),
  ``arm_vs_arm``, or ``arm_vs_chance`` (one-sample test against 1/num_classes for accuracy, the
  mean per-trial chance for counterfactual trials, 0 for a gain; not defined for Likert).
* direction ``greater``/``less``/``two_sided``: the named test (``welch_t`` = Welch's t-test,
  ``permutation`` = seeded permutation test, ``mann_whitney``; a Likert outcome always uses
  Mann-Whitney) in that direction; with an equivalence margin a TOST is run too, so a null result
  can become "not_supported". ``equivalence``: TOST with the margin, plus the two-sided test.

Within or between participants (recorded on each hypothesis as ``contrast``): arms are assigned
between participants (one arm per person), so arm-vs-arm and arm-vs-control comparisons, gains
included (one post-minus-pre gain per participant, compared between arms), use the independent-
groups tests above. The gain of one arm against 0 asks whether that arm's participants improved
from pre-test to post-test: each participant is on both sides, so it runs the paired family of
``paired`` on each participant's post-test and pre-test accuracy, with the named test mapped to
its paired equivalent (``welch_t`` -> paired t, ``mann_whitney`` -> Wilcoxon signed-rank,
``permutation`` -> sign-flip permutation; a margin -> paired TOST); a participant without both is
refused by name, never dropped.

Adjusting within correction families and the verdicts: ``families``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from statsmodels.stats.weightstats import DescrStatsW

from .aggregate import participant_accuracy
from .comparisons import chance_level_test, likert_mann_whitney, permutation_test, tost_equivalence, welch_t_test
from .effect_sizes import cohens_d
from .outcomes import AnalysedOutcomes, arm_values, describe
from .paired import (LongColumns, PairedSample, paired_sample, paired_t_test, paired_tost, sign_flip_permutation_test,
                     wilcoxon_signed_rank)
from .run_results import Contrast

N_PERMUTATIONS = 9999
# The paired equivalent of each test a hypothesis can name, for a contrast within participants
# (anything else, e.g. the older "welch", is a t-test as in two_sample).
PAIRED_TESTS = {"mann_whitney": "wilcoxon_signed_rank", "permutation": "sign_flip_permutation"}
PAIRED_TEST_WORDS = {"paired_t": "paired t-test", "wilcoxon_signed_rank": "Wilcoxon signed-rank test",
                     "sign_flip_permutation": "sign-flip permutation test"}
NAMED_TEST_WORDS = {"welch_t": "Welch's t-test", "welch": "Welch's t-test", "mann_whitney": "the Mann-Whitney U test",
                    "permutation": "a permutation test"}
UNTESTED = {"p_value": math.nan, "p_equivalence": None, "p_difference": None}


def comparator_of(h: dict, control: str | None) -> str | None:
    """The arm a hypothesis compares with: None against chance, else the named one or the control arm."""
    return None if h["comparison"] == "arm_vs_chance" else (h.get("comparator") or control)


def chance_of(h: dict, *, num_classes: int, counterfactual_chance: float | None) -> float | None:
    """The value an arm is compared with against chance (0 for a gain)."""
    return {"gain": 0.0, "counterfactual_accuracy": counterfactual_chance}.get(h["outcome"], 1.0 / num_classes)


def two_sample(test: str, x, y, *, alternative: str, seed: int, likert: bool):
    if likert or test == "mann_whitney":
        return likert_mann_whitney(x, y, alternative=alternative)
    if test == "permutation":
        return permutation_test(x, y, alternative=alternative, n_resamples=N_PERMUTATIONS, seed=seed)
    return welch_t_test(x, y, alternative=alternative)


def one_sample_tost(x, *, chance: float, margin: float, alpha: float) -> dict:
    """TOST of mean(x) against chance +- margin (statsmodels DescrStatsW.ttost_mean)."""
    p, lower, upper = DescrStatsW(np.asarray(x, dtype="float64")).ttost_mean(chance - margin, chance + margin)
    return {"method": "one-sample TOST (statsmodels DescrStatsW.ttost_mean)", "p_value": float(p),
            "alternative": "equivalence", "n": {"participants": int(len(x))},
            "params": {"chance": chance, "margin_low": chance - margin, "margin_high": chance + margin,
                       "alpha": alpha},
            "extra": {"lower_test": {"statistic": float(lower[0]), "p_value": float(lower[1])},
                      "upper_test": {"statistic": float(upper[0]), "p_value": float(upper[1])}}}


def unpaired_test(h: dict, values: pd.DataFrame, *, comparator: str | None, chance: float | None,
                    seed: int) -> dict:
    """Raw p-values and effect sizes of one hypothesis (adjustment and verdict come later)."""
    direction, margin, alpha = h["direction"], h.get("equivalence_margin"), h["alpha"]
    likert = h["outcome"] == "likert"
    alt = "two-sided" if direction == "equivalence" else direction
    x = arm_values(values, h["arm"])
    out = {"descriptives": {h["arm"]: describe(x)}, **UNTESTED, "tests": {}, "effect_sizes": {}}
    if comparator is None:  # against chance
        out["descriptives"]["chance"] = chance
        difference = chance_level_test(x, chance=chance, alternative=alt)
        out["effect_sizes"]["mean"] = difference.effect.to_dict()
        out["effect_sizes"]["difference_from_chance"] = float(x.mean() - chance)
        tost = one_sample_tost(x, chance=chance, margin=margin, alpha=alpha) if margin is not None else None
    else:
        y = arm_values(values, comparator)
        out["descriptives"][comparator] = describe(y)
        difference = two_sample(h["test"], x, y, alternative=alt, seed=seed, likert=likert)
        tost = (tost_equivalence(x, y, margin=margin, alpha=alpha).to_dict() if margin is not None else None)
        if likert:
            out["effect_sizes"]["rank_biserial"] = difference.effect.to_dict()
        welch = difference if difference.method.startswith("Welch") else welch_t_test(x, y)
        out["effect_sizes"]["mean_difference"] = welch.effect.to_dict()
        out["effect_sizes"]["cohens_d"] = cohens_d(x, y).to_dict()
    out["tests"]["difference"] = difference.to_dict()
    _with_equivalence(out, difference=difference, tost=tost, direction=direction)
    return out


def _with_equivalence(out: dict, *, difference, tost: dict | None, direction: str) -> None:
    """The hypothesis's p-value: the equivalence test's for an equivalence hypothesis, else the difference test's."""
    if tost is not None:
        out["tests"]["equivalence"] = tost
    if direction == "equivalence":
        out["p_value"], out["p_difference"] = tost["p_value"], difference.p_value
    else:
        out["p_value"] = difference.p_value
        out["p_equivalence"] = tost["p_value"] if tost is not None else None


# ---------------------------------------------------------------- within or between participants


def contrast_of(h: dict, comparator: str | None, design: str) -> Contrast:
    """What the hypothesis compares, why, and in which design (``test_run`` is filled in after the test)."""
    arm, named = h["arm"], h["test"]
    if h["comparison"] == "arm_vs_chance" and h["outcome"] == "gain":
        return Contrast(
            kind="within_participants", factor="phase", condition="post_test", comparator="pre_test",
            why=f"the gain of '{arm}' against 0 asks whether its participants improved from pre-test to post-test; "
                f"each of them answered both, so each one's post-test accuracy is paired with their own pre-test "
                f"accuracy (design: {design})", design=design, named_test=named)
    if comparator is None:
        return Contrast(kind="against_a_value", factor=None, condition=arm, comparator=None,
                        why=f"the participants of '{arm}' against a fixed value, one value per participant",
                        design=design, named_test=named)
    values = ("gains (post-test minus pre-test, one per participant)" if h["outcome"] == "gain"
              else "values, one per participant")
    return Contrast(kind="between_participants", factor="arm", condition=arm, comparator=comparator,
                    why=f"each participant is assigned to one arm, so '{arm}' and '{comparator}' are independent "
                        f"groups; their {values} are compared (design: {design})", design=design, named_test=named)


def phase_pairs(outcomes: AnalysedOutcomes, contrast: Contrast, arm: str) -> PairedSample:
    """Each analysed participant of ``arm``: accuracy in the contrast's condition and comparator phase.

    ``paired_sample`` refuses, by name, a participant without both or with two values in one.
    ``outcomes``: those of the analysed trials (the gain's rows are selected once per run).
    """
    rows, _, _ = outcomes.rows("gain")
    rows = rows.loc[rows["arm"] == arm]
    long = participant_accuracy(rows, phases=[contrast.comparator, contrast.condition])
    return paired_sample(long, condition=contrast.condition, comparator=contrast.comparator,
                         columns=LongColumns(condition="phase"))


def paired_test(h: dict, sample: PairedSample, *, seed: int) -> dict:
    """Raw p-values and effect sizes of a hypothesis about a contrast within participants: the
    named test's paired equivalent on the differences (condition - comparator)."""
    direction, margin, alpha = h["direction"], h.get("equivalence_margin"), h["alpha"]
    alt = "two-sided" if direction == "equivalence" else direction
    paired = PAIRED_TESTS.get(h["test"], "paired_t")
    if paired == "wilcoxon_signed_rank":
        difference = wilcoxon_signed_rank(sample, alternative=alt)
    elif paired == "sign_flip_permutation":
        difference = sign_flip_permutation_test(sample, alternative=alt, n_resamples=N_PERMUTATIONS, seed=seed)
    else:
        difference = paired_t_test(sample, alternative=alt)
    t_test = difference if paired == "paired_t" else paired_t_test(sample)
    tost = paired_tost(sample, margin=margin, alpha=alpha).to_dict() if margin is not None else None
    out = {"descriptives": {h["arm"]: describe(sample.differences)}, **UNTESTED,
           "tests": {"difference": difference.to_dict()},
           "effect_sizes": {"mean_difference": t_test.effect.to_dict(),
                            "cohens_dz": {"name": "cohens_dz", "estimate": t_test.extra["cohens_dz"],
                                          "method": "mean of the differences / their SD"}}}
    if paired == "wilcoxon_signed_rank":
        out["effect_sizes"]["rank_biserial"] = difference.effect.to_dict()
    _with_equivalence(out, difference=difference, tost=tost, direction=direction)
    named = NAMED_TEST_WORDS.get(h["test"], h["test"])
    ran = PAIRED_TEST_WORDS[paired] + (" and paired TOST" if tost is not None else "")
    out["paired"] = {
        "test": paired, "tost": tost is not None, "named_test": h["test"], "n_pairs": sample.n,
        "condition": sample.condition, "comparator": sample.comparator,
        "descriptives": {sample.condition: describe(sample.condition_values),
                         sample.comparator: describe(sample.comparator_values)},
        "why": f"the plan names {named}; the same participants are on both sides, so its paired equivalent ran "
               f"({ran}) on {sample.n} pairs",
    }
    return out


def hypothesis_tests(h: dict, *, trials: pd.DataFrame, likert: pd.DataFrame, comparator: str | None,
                     contrast: Contrast, chance: float | None, seed: int,
                     outcomes: AnalysedOutcomes | None = None) -> dict:
    """The tests of one hypothesis on the analysed participants' trials and ratings, or its ``error``
    in words when the data cannot be tested (too few participants, a participant without a pair).

    ``outcomes``: the ``AnalysedOutcomes`` of these same trials and ratings, shared by the hypotheses
    that analyse the same participants (their measures and outcome values are computed once).
    """
    if outcomes is None:
        outcomes = AnalysedOutcomes(trials, likert)
    try:
        if contrast.kind == "within_participants":
            return paired_test(h, phase_pairs(outcomes, contrast, h["arm"]), seed=seed)
        values = outcomes.values(outcome=h["outcome"], likert_item=h["likert_item"])
        return unpaired_test(h, values, comparator=comparator, chance=chance, seed=seed)
    except (ValueError, TypeError) as exc:
        if contrast.kind == "within_participants":
            what = f"{contrast.condition} vs {contrast.comparator} of the same participants of '{h['arm']}'"
        else:
            what = f"{h['outcome']} of '{h['arm']}' vs " + (f"'{comparator}'" if comparator else "chance")
        return {"error": f"{what} could not be tested: {exc}", **UNTESTED}
