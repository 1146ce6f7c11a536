"""Effect sizes: difference in proportions, Cohen's h, Cohen's d, odds ratio.

All computations are delegated to statsmodels/numpy; nothing here re-derives a distribution.

* ``difference_in_proportions``: p1 - p2 with a confidence interval from
  ``statsmodels.stats.proportion.confint_proportions_2indep`` (default Newcombe's hybrid
  score interval, "method 10" of Newcombe 1998, which keeps good coverage near 0 and 1 where
  the Wald interval does not).
* ``cohens_h``: ``statsmodels.stats.proportion.proportion_effectsize`` (2 asin sqrt p1 -
  2 asin sqrt p2), the effect size the two-proportion power calculation uses.
* ``cohens_d``: mean difference over the pooled standard deviation (n - 1 weights), the
  definition of R's ``effectsize::cohens_d`` / ``lsr::cohensD``. No interval is given.
* ``odds_ratio``: sample odds ratio with the Wald interval on the log scale,
  ``statsmodels.stats.contingency_tables.Table2x2`` (R: ``epitools::oddsratio.wald``).

Count-based effect sizes are for counts whose unit really is independent (e.g. completion per
participant); trial-level accuracy belongs in participant-level comparisons.
"""

from __future__ import annotations

import numpy as np
from statsmodels.stats.contingency_tables import Table2x2
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_effectsize,
)

from .results import EffectSize


def difference_in_proportions(
    count1: int,
    nobs1: int,
    count2: int,
    nobs2: int,
    *,
    method: str = "newcomb",
    confidence_level: float = 0.95,
) -> EffectSize:
    """count1/nobs1 - count2/nobs2 with a confidence interval."""
    low, high = confint_proportions_2indep(
        count1,
        nobs1,
        count2,
        nobs2,
        method=method,
        compare="diff",
        alpha=1.0 - confidence_level,
    )
    return EffectSize(
        name="difference_in_proportions",
        estimate=count1 / nobs1 - count2 / nobs2,
        ci_low=float(low),
        ci_high=float(high),
        confidence_level=confidence_level,
        method=f"statsmodels confint_proportions_2indep(method={method!r})",
    )


def cohens_h(p1: float, p2: float) -> EffectSize:
    """Cohen's h = 2 asin(sqrt(p1)) - 2 asin(sqrt(p2)) (R: ``pwr::ES.h(p1, p2)``)."""
    return EffectSize(
        name="cohens_h",
        estimate=float(proportion_effectsize(p1, p2)),
        method="statsmodels proportion_effectsize",
    )


def cohens_d(x, y) -> EffectSize:
    """Cohen's d of mean(x) - mean(y), pooled SD with n - 1 weights."""
    x = np.asarray(x, dtype="float64")
    y = np.asarray(y, dtype="float64")
    x = x[~np.isnan(x)]
    y = y[~np.isnan(y)]
    n1, n2 = x.size, y.size
    pooled_var = ((n1 - 1) * x.var(ddof=1) + (n2 - 1) * y.var(ddof=1)) / (n1 + n2 - 2)
    return EffectSize(
        name="cohens_d",
        estimate=float((x.mean() - y.mean()) / np.sqrt(pooled_var)),
        method="pooled standard deviation",
    )


def odds_ratio(table, *, confidence_level: float = 0.95) -> EffectSize:
    """Sample odds ratio of a 2x2 table [[a, b], [c, d]] = (a d) / (b c), Wald CI on log OR.

    Rows are the groups (treatment first), columns the outcome (event first). Zero cells get
    statsmodels' 0.5 shift (``shift_zeros=True``).
    """
    arr = np.asarray(table, dtype="float64")
    if arr.shape != (2, 2):
        raise ValueError(f"odds_ratio needs a 2x2 table, got shape {arr.shape}")
    t = Table2x2(arr, shift_zeros=True)
    low, high = t.oddsratio_confint(alpha=1.0 - confidence_level, method="normal")
    return EffectSize(
        name="odds_ratio",
        estimate=float(t.oddsratio),
        ci_low=float(low),
        ci_high=float(high),
        confidence_level=confidence_level,
        method="statsmodels Table2x2, Wald interval on the log odds ratio",
    )
