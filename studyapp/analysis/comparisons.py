"""Arm-vs-control tests on participant-level numbers (one value per participant).

* ``welch_t_test``: primary test. Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``),
  so unequal variances and unequal arm sizes are handled; ``alternative`` is the
  pre-registered direction.
* ``permutation_test``: a seeded permutation test of the difference in means
  (``scipy.stats.permutation_test``); exact when ``n_resamples`` covers every relabelling.
* ``likert_mann_whitney``: Mann-Whitney U for Likert items. 'auto' follows R's
  ``wilcox.test``: the exact p-value when both samples have fewer than 50 values and there are
  no ties, otherwise the tie-corrected normal approximation with continuity correction (scipy's
  own 'auto' switches at 8 values, which is why the rule is applied here and the resolved
  method passed explicitly). Likert data are nearly all ties and ``method='exact'`` ignores
  ties, so exact is refused when ties exist. ``params['resolved_method']`` says which ran.
* ``tost_equivalence``: two one-sided Welch tests against a pre-registered margin
  (``statsmodels.stats.weightstats.ttost_ind``). A claim of "no effect" needs this, never a
  non-significant difference test.
* ``chance_level_test``: is the arm better than guessing? Decision: a one-sample t-test of the
  participants' accuracies against chance = 1/num_classes, because the participant is the unit
  of analysis. ``pooled_binomial_descriptive`` (``scipy.stats.binomtest`` on trials pooled over
  participants) ignores that trials of one person are correlated; it is reported as a
  description only and must not be used for a confirmatory decision.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from statsmodels.stats.weightstats import ttost_ind

from .effect_sizes import cohens_d
from .results import EffectSize, StatResult, normalize_alternative


def _as_values(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype="float64").ravel()
    arr = arr[~np.isnan(arr)]
    if arr.size < 2:
        raise ValueError(f"{name} needs at least 2 non-missing values, got {arr.size}")
    return arr


def welch_t_test(
    treatment,
    control,
    *,
    alternative: str = "two-sided",
    confidence_level: float = 0.95,
) -> StatResult:
    """Welch's t-test of mean(treatment) - mean(control) (R: ``t.test(x, y)``)."""
    x = _as_values(treatment, "treatment")
    y = _as_values(control, "control")
    alt = normalize_alternative(alternative)
    res = stats.ttest_ind(x, y, equal_var=False, alternative=alt)
    ci = res.confidence_interval(confidence_level=confidence_level)
    effect = EffectSize(
        name="mean_difference",
        estimate=float(x.mean() - y.mean()),
        ci_low=float(ci.low),
        ci_high=float(ci.high),
        confidence_level=confidence_level,
        method=f"Welch t interval ({alt})",
    )
    return StatResult(
        method="Welch two-sample t-test (scipy.stats.ttest_ind, equal_var=False)",
        statistic=float(res.statistic),
        p_value=float(res.pvalue),
        alternative=alt,
        n={"treatment": int(x.size), "control": int(y.size)},
        params={
            "equal_var": False,
            "alternative": alt,
            "confidence_level": confidence_level,
        },
        effect=effect,
        df=float(res.df),
        extra={"cohens_d": cohens_d(x, y).estimate},
    )


def _mean_difference(x, y, axis=-1):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def permutation_test(
    treatment,
    control,
    *,
    alternative: str = "two-sided",
    n_resamples: int = 9999,
    seed: int,
) -> StatResult:
    """Permutation test of the difference in means, reproducible from ``seed``.

    With ``n_resamples`` at least the number of distinct relabellings, scipy enumerates them
    all and the p-value is exact. The two-sided p-value is twice the smaller one-sided one
    (scipy's definition).
    """
    x = _as_values(treatment, "treatment")
    y = _as_values(control, "control")
    alt = normalize_alternative(alternative)
    rng = np.random.default_rng(seed)
    res = stats.permutation_test(
        (x, y),
        _mean_difference,
        permutation_type="independent",
        vectorized=True,
        n_resamples=n_resamples,
        alternative=alt,
        rng=rng,
    )
    exact = math.comb(x.size + y.size, x.size) <= n_resamples
    return StatResult(
        method="permutation test of the difference in means (scipy.stats.permutation_test)",
        statistic=float(res.statistic),
        p_value=float(res.pvalue),
        alternative=alt,
        n={"treatment": int(x.size), "control": int(y.size)},
        params={
            "statistic": "mean(treatment) - mean(control)",
            "permutation_type": "independent",
            "n_resamples": n_resamples,
            "alternative": alt,
            "seed": seed,
        },
        effect=EffectSize(name="mean_difference", estimate=float(res.statistic)),
        extra={"exact": exact},
    )


def _has_ties(values: np.ndarray) -> bool:
    return np.unique(values).size < values.size


# R's wilcox.test computes the exact distribution only below this many values per sample.
R_EXACT_LIMIT = 50


def rank_test_method_words(resolved: str, use_continuity: bool) -> str:
    """How a rank test's p-value was computed, as the result's method name says it."""
    if resolved == "exact":
        return "exact p-value"
    if use_continuity:
        return "normal approximation with tie and continuity correction"
    return "normal approximation with tie correction"


def likert_mann_whitney(
    treatment,
    control,
    *,
    alternative: str = "two-sided",
    method: str = "auto",
    use_continuity: bool = True,
) -> StatResult:
    """Mann-Whitney U test for ordinal (Likert) ratings of two arms (R: ``wilcox.test(x, y)``).

    ``statistic`` is U of the treatment sample (R's ``W``). 'auto' is exact when both samples
    have fewer than 50 values and no ties (R's rule), else the normal approximation with
    continuity correction (``use_continuity``, R's ``correct``). 'exact' ignores ties and is
    refused when the pooled sample has ties.
    """
    x = _as_values(treatment, "treatment")
    y = _as_values(control, "control")
    alt = normalize_alternative(alternative)
    if method not in ("auto", "asymptotic", "exact"):
        raise ValueError("method must be 'auto', 'asymptotic' or 'exact'")
    ties = _has_ties(np.concatenate([x, y]))
    if method == "exact" and ties:
        raise ValueError(
            "method='exact' ignores ties and Likert data are tied; use 'auto' or 'asymptotic'"
        )
    n1, n2 = x.size, y.size
    resolved = method
    if method == "auto":
        small = n1 < R_EXACT_LIMIT and n2 < R_EXACT_LIMIT
        resolved = "exact" if (small and not ties) else "asymptotic"
    res = stats.mannwhitneyu(
        x, y, alternative=alt, method=resolved, use_continuity=use_continuity
    )
    u = float(res.statistic)
    ran = rank_test_method_words(resolved, use_continuity)
    return StatResult(
        method=f"Mann-Whitney U test, {ran} (scipy.stats.mannwhitneyu)",
        statistic=u,
        p_value=float(res.pvalue),
        alternative=alt,
        n={"treatment": int(n1), "control": int(n2)},
        params={
            "alternative": alt,
            "method": method,
            "resolved_method": resolved,
            "use_continuity": use_continuity,
            "exact_rule": "R wilcox.test: exact when both n < 50 and no ties",
        },
        effect=EffectSize(
            name="rank_biserial_correlation",
            estimate=2.0 * u / (n1 * n2) - 1.0,
            method="2U/(n1 n2) - 1",
        ),
        extra={"ties": ties, "common_language_effect": u / (n1 * n2)},
    )


def tost_equivalence(
    treatment,
    control,
    *,
    margin: float | tuple[float, float],
    alpha: float = 0.05,
) -> StatResult:
    """Equivalence of two arms by TOST (two one-sided Welch t-tests).

    ``margin`` is the pre-registered equivalence margin on the outcome scale: a number m for
    (-m, m) or a (low, high) pair. The p-value is the larger of the two one-sided p-values;
    equivalence is shown when it is <= alpha, which is the same as the (1 - 2 alpha) Welch
    confidence interval lying inside the margin.
    """
    x = _as_values(treatment, "treatment")
    y = _as_values(control, "control")
    if isinstance(margin, (tuple, list)):
        low, high = float(margin[0]), float(margin[1])
    else:
        low, high = -abs(float(margin)), abs(float(margin))
    if not low < high:
        raise ValueError(f"equivalence margin must satisfy low < high, got ({low}, {high})")
    p_value, lower_test, upper_test = ttost_ind(x, y, low, high, usevar="unequal")
    binding = lower_test if lower_test[1] >= upper_test[1] else upper_test
    ci = stats.ttest_ind(x, y, equal_var=False).confidence_interval(
        confidence_level=1.0 - 2.0 * alpha
    )
    return StatResult(
        method="TOST equivalence, Welch (statsmodels.stats.weightstats.ttost_ind)",
        statistic=float(binding[0]),
        p_value=float(p_value),
        alternative="equivalence",
        n={"treatment": int(x.size), "control": int(y.size)},
        params={"margin_low": low, "margin_high": high, "usevar": "unequal", "alpha": alpha},
        effect=EffectSize(
            name="mean_difference",
            estimate=float(x.mean() - y.mean()),
            ci_low=float(ci.low),
            ci_high=float(ci.high),
            confidence_level=1.0 - 2.0 * alpha,
            method="Welch t interval at 1 - 2 alpha",
        ),
        df=float(binding[2]),
        extra={
            "lower_test": {"statistic": float(lower_test[0]), "p_value": float(lower_test[1])},
            "upper_test": {"statistic": float(upper_test[0]), "p_value": float(upper_test[1])},
        },
    )


def _chance(chance: float | None, num_classes: int | None) -> float:
    if (chance is None) == (num_classes is None):
        raise ValueError("give exactly one of chance or num_classes")
    if num_classes is not None:
        if num_classes < 2:
            raise ValueError("num_classes must be at least 2")
        return 1.0 / num_classes
    return float(chance)


def chance_level_test(
    accuracies,
    *,
    num_classes: int | None = None,
    chance: float | None = None,
    alternative: str = "greater",
    confidence_level: float = 0.95,
) -> StatResult:
    """One-sample t-test of participant accuracies against chance (R: ``t.test(x, mu=)``)."""
    x = _as_values(accuracies, "accuracies")
    mu = _chance(chance, num_classes)
    alt = normalize_alternative(alternative)
    res = stats.ttest_1samp(x, mu, alternative=alt)
    ci = res.confidence_interval(confidence_level=confidence_level)
    return StatResult(
        method="one-sample t-test of participant accuracy against chance (scipy.stats.ttest_1samp)",
        statistic=float(res.statistic),
        p_value=float(res.pvalue),
        alternative=alt,
        n={"participants": int(x.size)},
        params={
            "chance": mu,
            "num_classes": num_classes,
            "alternative": alt,
            "confidence_level": confidence_level,
        },
        effect=EffectSize(
            name="mean_accuracy",
            estimate=float(x.mean()),
            ci_low=float(ci.low),
            ci_high=float(ci.high),
            confidence_level=confidence_level,
            method=f"one-sample t interval ({alt})",
        ),
        df=float(res.df),
    )


def pooled_binomial_descriptive(
    n_correct: int,
    n_trials: int,
    *,
    num_classes: int | None = None,
    chance: float | None = None,
    alternative: str = "greater",
    confidence_level: float = 0.95,
) -> StatResult:
    """Exact binomial test on trials pooled over participants: DESCRIPTIVE ONLY.

    Trials of one participant are not independent, so this p-value is too small for
    inference about participants; use :func:`chance_level_test` for decisions.
    """
    p0 = _chance(chance, num_classes)
    alt = normalize_alternative(alternative)
    res = stats.binomtest(int(n_correct), int(n_trials), p=p0, alternative=alt)
    ci = res.proportion_ci(confidence_level=confidence_level, method="exact")
    return StatResult(
        method="exact binomial test on pooled trials (scipy.stats.binomtest) - descriptive only",
        statistic=float(res.statistic),
        p_value=float(res.pvalue),
        alternative=alt,
        n={"trials": int(n_trials)},
        params={"chance": p0, "num_classes": num_classes, "alternative": alt},
        effect=EffectSize(
            name="pooled_accuracy",
            estimate=float(res.statistic),
            ci_low=float(ci.low),
            ci_high=float(ci.high),
            confidence_level=confidence_level,
            method="Clopper-Pearson",
        ),
        extra={"descriptive_only": True},
    )
