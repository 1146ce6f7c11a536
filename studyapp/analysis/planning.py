"""Sample size per arm for the pre-registration.

* Two proportions: Cohen's h (``proportion_effectsize``) with the normal approximation of
  ``statsmodels.stats.power.NormalIndPower`` (R: ``pwr::pwr.2p.test`` / ``pwr.2p2n.test``).
* Two means: ``statsmodels.stats.power.TTestIndPower`` on Cohen's d (noncentral t;
  R: ``pwr::pwr.t.test`` / ``stats::power.t.test``).

``ratio`` = n_treatment / n_control (statsmodels' nobs2 / nobs1). The unrounded solution is
returned together with the per-arm counts rounded up. A two-sided power includes both
rejection regions (R's ``power.t.test`` counts one; the difference is below 1e-6 for
realistic designs).

For a participant-level accuracy outcome use ``sample_size_two_means`` with
d = expected difference / SD of participant accuracies; ``sample_size_two_proportions``
assumes one independent Bernoulli outcome per participant (e.g. completion).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import proportion_effectsize

from .results import normalize_alternative, statsmodels_alternative


@dataclass(frozen=True)
class SampleSize:
    n_control: int
    n_treatment: int
    n_control_exact: float
    n_treatment_exact: float
    effect_size: float
    method: str
    params: dict[str, Any]

    @property
    def n_total(self) -> int:
        return self.n_control + self.n_treatment


def _solve(power_class, *, effect_size, alpha, power, ratio, alternative, method, params):
    if effect_size == 0:
        raise ValueError("effect size is zero: no finite sample size has power > alpha")
    alt = normalize_alternative(alternative)
    if alt == "greater" and effect_size < 0 or alt == "less" and effect_size > 0:
        raise ValueError(f"effect size {effect_size:.4g} points against alternative {alt!r}")
    n1 = float(
        power_class().solve_power(
            effect_size=effect_size,
            nobs1=None,
            alpha=alpha,
            power=power,
            ratio=ratio,
            alternative=statsmodels_alternative(alt),
        )
    )
    return SampleSize(
        n_control=math.ceil(n1),
        n_treatment=math.ceil(n1 * ratio),
        n_control_exact=n1,
        n_treatment_exact=n1 * ratio,
        effect_size=float(effect_size),
        method=method,
        params={**params, "alpha": alpha, "power": power, "ratio": ratio, "alternative": alt},
    )


def sample_size_two_proportions(
    *,
    p_control: float,
    p_treatment: float,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
    alternative: str = "two-sided",
) -> SampleSize:
    """Participants per arm to detect p_treatment vs p_control (Cohen's h, normal approx.)."""
    h = float(proportion_effectsize(p_treatment, p_control))
    return _solve(
        NormalIndPower,
        effect_size=h,
        alpha=alpha,
        power=power,
        ratio=ratio,
        alternative=alternative,
        method="statsmodels NormalIndPower on Cohen's h (arcsine)",
        params={"p_control": p_control, "p_treatment": p_treatment},
    )


def sample_size_two_means(
    *,
    effect_size: float,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
    alternative: str = "two-sided",
) -> SampleSize:
    """Participants per arm for a two-sample t-test with standardised difference d."""
    return _solve(
        TTestIndPower,
        effect_size=effect_size,
        alpha=alpha,
        power=power,
        ratio=ratio,
        alternative=alternative,
        method="statsmodels TTestIndPower (noncentral t)",
        params={"cohens_d": effect_size},
    )
