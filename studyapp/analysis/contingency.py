"""Tests on contingency tables, where counts really are the unit (one count per participant).

Use these for attrition / completion / exclusion counts per arm (2 x K tables), never for
trials pooled over participants.

* ``fisher_exact_test``: 2x2 tables get scipy's exact conditional test (with ``alternative``)
  and, like R's ``fisher.test``, the conditional maximum likelihood estimate of the odds ratio
  with its exact interval (``scipy.stats.contingency.odds_ratio(kind="conditional")``). The
  sample odds ratio ad/bc (``extra['sample_odds_ratio']``) and its Wald interval
  (``extra['sample_odds_ratio_wald_ci']``, with 0.5 added to every cell when one is zero) are
  kept under labelled keys; they are not what R reports (TeaTasting: 9.0 vs 6.408).
  Larger tables (2 x K) have no closed form in scipy: the p-value is a Monte Carlo estimate
  from ``scipy.stats.MonteCarloMethod`` drawing tables with the observed margins; the seed and
  the number of resamples are required and stored (an unseeded run is not reproducible).
* ``chi_square_test``: Pearson's chi-square (``scipy.stats.chi2_contingency``). scipy applies
  Yates' continuity correction to 2x2 tables by default; here ``correction`` has no default
  and is passed explicitly (it only has an effect on tables with one degree of freedom).
* ``completion_table`` / ``attrition_test``: build the arms x {completed, not completed} table
  from a participant frame and test whether attrition differs between arms (FIELD-NOTES:
  report exclusions per arm and test them).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from scipy.stats.contingency import odds_ratio as scipy_odds_ratio

from .effect_sizes import odds_ratio
from .results import EffectSize, StatResult, normalize_alternative


def _table(table) -> np.ndarray:
    arr = np.asarray(table)
    if arr.ndim != 2 or min(arr.shape) < 2:
        raise ValueError(f"need a 2-D table with at least 2 rows and columns, got {arr.shape}")
    if np.any(arr < 0) or not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError("table entries must be non-negative integer counts")
    return arr.astype("int64")


def fisher_exact_test(
    table,
    *,
    alternative: str = "two-sided",
    confidence_level: float = 0.95,
    seed: int | None = None,
    n_resamples: int = 100_000,
) -> StatResult:
    """Fisher's exact test; Monte Carlo (seeded) for tables larger than 2x2.

    For a 2x2 table ``statistic`` and ``effect`` are R's ``fisher.test`` estimate: the
    conditional MLE of the odds ratio, with the exact (conditional) interval for the same
    ``alternative`` (one-sided alternatives give a one-sided interval, as in R).
    """
    arr = _table(table)
    alt = normalize_alternative(alternative)
    params: dict = {"alternative": alt}
    extra: dict = {}
    effect = None
    if arr.shape == (2, 2):
        res = stats.fisher_exact(arr, alternative=alt)
        method = "Fisher exact test, 2x2 (scipy.stats.fisher_exact)"
        conditional = scipy_odds_ratio(arr, kind="conditional")
        ci = conditional.confidence_interval(
            confidence_level=confidence_level, alternative=alt
        )
        effect = EffectSize(
            name="odds_ratio",
            estimate=float(conditional.statistic),
            ci_low=float(ci.low),
            ci_high=float(ci.high),
            confidence_level=confidence_level,
            method=(
                "conditional maximum likelihood estimate with exact interval, as R's "
                "fisher.test (scipy.stats.contingency.odds_ratio, kind='conditional')"
            ),
        )
        params["confidence_level"] = confidence_level
        # Kept for readers who want ad/bc; labelled because R does not report it.
        sample = odds_ratio(arr, confidence_level=confidence_level)
        extra["sample_odds_ratio"] = float(res.statistic)
        extra["sample_odds_ratio_wald_ci"] = [sample.ci_low, sample.ci_high]
        statistic = effect.estimate
    else:
        if alt != "two-sided":
            raise ValueError("tables larger than 2x2 only have the two-sided alternative")
        if seed is None:
            raise ValueError("a seed is required for the Monte Carlo p-value of an RxC table")
        mc = stats.MonteCarloMethod(n_resamples=n_resamples, rng=np.random.default_rng(seed))
        res = stats.fisher_exact(arr, method=mc)
        method = "Fisher exact test, RxC, Monte Carlo p-value (scipy.stats.fisher_exact)"
        params.update({"seed": seed, "n_resamples": n_resamples})
        extra["table_probability"] = float(res.statistic)
        statistic = float(res.statistic)
    return StatResult(
        method=method,
        statistic=statistic,
        p_value=float(res.pvalue),
        alternative=alt,
        n={"total": int(arr.sum())},
        params=params,
        effect=effect,
        extra=extra,
    )


def chi_square_test(table, *, correction: bool) -> StatResult:
    """Pearson chi-square test of independence; ``correction`` (Yates) must be explicit."""
    arr = _table(table)
    res = stats.chi2_contingency(arr, correction=correction)
    return StatResult(
        method="Pearson chi-square test of independence (scipy.stats.chi2_contingency)",
        statistic=float(res.statistic),
        p_value=float(res.pvalue),
        alternative="two-sided",
        n={"total": int(arr.sum())},
        params={
            "correction": correction,
            "correction_applied": bool(correction and res.dof == 1),
        },
        df=float(res.dof),
        extra={
            "expected": res.expected_freq.tolist(),
            "min_expected": float(res.expected_freq.min()),
        },
    )


def completion_table(
    participants: pd.DataFrame,
    *,
    arm_column: str = "arm",
    completed_column: str = "completed",
    arms: list[str] | None = None,
) -> pd.DataFrame:
    """Arms x (completed, not_completed) counts from one row per enrolled participant."""
    done = participants[completed_column].astype(bool)
    table = pd.crosstab(participants[arm_column], done)
    table = table.reindex(columns=[True, False], fill_value=0)
    table.columns = ["completed", "not_completed"]
    if arms is not None:
        table = table.reindex(arms, fill_value=0)
    table.index.name = arm_column
    return table


def attrition_test(
    table: pd.DataFrame | np.ndarray,
    *,
    seed: int,
    n_resamples: int = 100_000,
) -> StatResult:
    """Does attrition differ between arms? Fisher's exact test on the arms x outcome table.

    Fisher (exact for 2 arms, seeded Monte Carlo for more) is valid at the small counts
    attrition usually has, where the chi-square approximation is not.
    """
    result = fisher_exact_test(np.asarray(table), seed=seed, n_resamples=n_resamples)
    extra = dict(result.extra)
    if isinstance(table, pd.DataFrame):
        extra["table"] = {str(k): v for k, v in table.to_dict(orient="index").items()}
    return StatResult(
        method=result.method,
        statistic=result.statistic,
        p_value=result.p_value,
        alternative=result.alternative,
        n=result.n,
        params={**result.params, "seed": seed, "n_resamples": n_resamples},
        effect=result.effect,
        extra=extra,
    )
