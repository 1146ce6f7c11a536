"""Sample size and power for the pre-registration.

Two arms (``ratio`` = n_treatment / n_control, statsmodels' nobs2 / nobs1):

* Two proportions, two named formulas that give different answers (0.50 vs 0.75 at 90% power:
  76.653 vs 76.707 per arm), so the formula is a parameter and is stored with the result:

  - ``"arcsine"`` (default): Cohen's h (``proportion_effectsize``) with the normal
    approximation of ``statsmodels.stats.power.NormalIndPower``; R: ``pwr::pwr.2p.test`` /
    ``pwr.2p2n.test``.
  - ``"power.prop.test"``: the z-test with the pooled variance under the null and the
    unpooled variance under the alternative (``statsmodels.stats.proportion``
    ``power_proportions_2indep`` / ``samplesize_proportions_2indep_onetail``); R:
    ``stats::power.prop.test`` (which only has equal arms; ``ratio`` extends it).

* Two means: ``statsmodels.stats.power.TTestIndPower`` on Cohen's d (noncentral t;
  R: ``pwr::pwr.t.test`` / ``stats::power.t.test``).

One group (``TTestPower``, noncentral t; R: ``pwr.t.test(type = "one.sample" / "paired")``,
``power.t.test(type = "paired")``): a one-sample test against a fixed value (chance) with
d = (mean - value) / SD, or a within-subject comparison where every participant sees both
conditions, with d_z = mean difference / SD of the per-participant differences (not the SD of
the accuracies themselves: the correlation between a person's two conditions is what makes the
paired design small).

``sample_size_*`` return the unrounded solution with the counts rounded up; ``power_*`` give
the power at a given n. A two-sided power includes both rejection regions (R's ``strict =
TRUE``); sample sizes for proportions use the near region only (R's default); the difference is
below 1e-6 for realistic designs.

For a participant-level accuracy outcome use the t-based functions with d = expected
difference / SD of participant accuracies; the proportion functions assume one independent
Bernoulli outcome per participant (e.g. completion).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from statsmodels.stats.power import NormalIndPower, TTestIndPower, TTestPower
from statsmodels.stats.proportion import (
    power_proportions_2indep,
    proportion_effectsize,
    samplesize_proportions_2indep_onetail,
)

from .results import normalize_alternative, statsmodels_alternative

PROPORTION_FORMULAS: dict[str, str] = {
    "arcsine": "pwr::pwr.2p.test(h = ES.h(p1, p2)) (Cohen's h, arcsine transformation)",
    "power.prop.test": "stats::power.prop.test (pooled null / unpooled alternative variance)",
}
ONE_GROUP_DESIGNS: dict[str, str] = {
    "paired": 'pwr::pwr.t.test(type = "paired"); stats::power.t.test(type = "paired")',
    "one_sample": 'pwr::pwr.t.test(type = "one.sample"); stats::power.t.test(type = "one.sample")',
}


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


@dataclass(frozen=True)
class OneGroupSampleSize:
    """Participants for a paired (each in both conditions) or one-sample design."""

    n: int
    n_exact: float
    effect_size: float
    design: str
    method: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Power:
    """Power of a design at given sample sizes."""

    power: float
    n: dict[str, float]
    effect_size: float
    method: str
    params: dict[str, Any]


def _check_direction(effect_size: float, alt: str) -> None:
    if effect_size == 0:
        raise ValueError("effect size is zero: no finite sample size has power > alpha")
    if alt == "greater" and effect_size < 0 or alt == "less" and effect_size > 0:
        raise ValueError(f"effect size {effect_size:.4g} points against alternative {alt!r}")


def _two_arm_size(n1: float, *, ratio, effect_size, method, params) -> SampleSize:
    return SampleSize(
        n_control=math.ceil(n1),
        n_treatment=math.ceil(n1 * ratio),
        n_control_exact=n1,
        n_treatment_exact=n1 * ratio,
        effect_size=float(effect_size),
        method=method,
        params=params,
    )


def _solve(power_class, *, effect_size, alpha, power, ratio, alternative, method, params):
    alt = normalize_alternative(alternative)
    _check_direction(effect_size, alt)
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
    return _two_arm_size(
        n1,
        ratio=ratio,
        effect_size=effect_size,
        method=method,
        params={**params, "alpha": alpha, "power": power, "ratio": ratio, "alternative": alt},
    )


def _formula(formula: str) -> str:
    if formula not in PROPORTION_FORMULAS:
        raise ValueError(
            f"unknown two-proportion formula {formula!r}; choose from {sorted(PROPORTION_FORMULAS)}"
        )
    return PROPORTION_FORMULAS[formula]


def _check_proportions(p_control: float, p_treatment: float) -> None:
    for name, p in (("p_control", p_control), ("p_treatment", p_treatment)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a proportion between 0 and 1, got {p}")


def sample_size_two_proportions(
    *,
    p_control: float,
    p_treatment: float,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
    alternative: str = "two-sided",
    formula: str = "arcsine",
) -> SampleSize:
    """Participants per arm to detect p_treatment vs p_control with the named ``formula``."""
    r_equivalent = _formula(formula)
    _check_proportions(p_control, p_treatment)
    params = {
        "p_control": p_control,
        "p_treatment": p_treatment,
        "formula": formula,
        "r_equivalent": r_equivalent,
        "effect_size_name": "cohens_h" if formula == "arcsine" else "difference_in_proportions",
    }
    if formula == "arcsine":
        h = float(proportion_effectsize(p_treatment, p_control))
        return _solve(
            NormalIndPower,
            effect_size=h,
            alpha=alpha,
            power=power,
            ratio=ratio,
            alternative=alternative,
            method="statsmodels NormalIndPower on Cohen's h (arcsine)",
            params=params,
        )
    alt = normalize_alternative(alternative)
    diff = p_treatment - p_control
    _check_direction(diff, alt)
    # statsmodels' sample 1 is the treatment arm here, so its ratio is n_control / n_treatment.
    n_treatment = float(
        samplesize_proportions_2indep_onetail(
            diff,
            p_control,
            power,
            ratio=1.0 / ratio,
            alpha=alpha,
            alternative=statsmodels_alternative(alt),
        )
    )
    return _two_arm_size(
        n_treatment / ratio,
        ratio=ratio,
        effect_size=diff,
        method=(
            "two-proportion z-test, pooled null / unpooled alternative variance "
            "(statsmodels samplesize_proportions_2indep_onetail)"
        ),
        params={**params, "alpha": alpha, "power": power, "ratio": ratio, "alternative": alt},
    )


def power_two_proportions(
    *,
    p_control: float,
    p_treatment: float,
    n_control: float,
    alpha: float = 0.05,
    ratio: float = 1.0,
    alternative: str = "two-sided",
    formula: str = "arcsine",
) -> Power:
    """Power with n_control participants in control and ratio * n_control in treatment."""
    r_equivalent = _formula(formula)
    _check_proportions(p_control, p_treatment)
    alt = normalize_alternative(alternative)
    if formula == "arcsine":
        effect = float(proportion_effectsize(p_treatment, p_control))
        value = NormalIndPower().power(
            effect, n_control, alpha, ratio=ratio, alternative=statsmodels_alternative(alt)
        )
        method = "statsmodels NormalIndPower on Cohen's h (arcsine)"
    else:
        effect = p_treatment - p_control
        value = power_proportions_2indep(
            effect,
            p_control,
            n_control * ratio,
            ratio=1.0 / ratio,
            alpha=alpha,
            alternative=statsmodels_alternative(alt),
            return_results=False,
        )
        method = (
            "two-proportion z-test, pooled null / unpooled alternative variance "
            "(statsmodels power_proportions_2indep)"
        )
    return Power(
        power=float(value),
        n={"control": float(n_control), "treatment": float(n_control * ratio)},
        effect_size=effect,
        method=method,
        params={
            "p_control": p_control,
            "p_treatment": p_treatment,
            "formula": formula,
            "r_equivalent": r_equivalent,
            "effect_size_name": (
                "cohens_h" if formula == "arcsine" else "difference_in_proportions"
            ),
            "alpha": alpha,
            "ratio": ratio,
            "alternative": alt,
        },
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


def power_two_means(
    *,
    effect_size: float,
    n_control: float,
    alpha: float = 0.05,
    ratio: float = 1.0,
    alternative: str = "two-sided",
) -> Power:
    """Power of the two-sample t-test with n_control and ratio * n_control participants."""
    alt = normalize_alternative(alternative)
    value = TTestIndPower().power(
        effect_size, n_control, alpha, ratio=ratio, alternative=statsmodels_alternative(alt)
    )
    return Power(
        power=float(value),
        n={"control": float(n_control), "treatment": float(n_control * ratio)},
        effect_size=float(effect_size),
        method="statsmodels TTestIndPower (noncentral t)",
        params={"cohens_d": effect_size, "alpha": alpha, "ratio": ratio, "alternative": alt},
    )


def _design(design: str) -> str:
    if design not in ONE_GROUP_DESIGNS:
        raise ValueError(f"unknown design {design!r}; choose from {sorted(ONE_GROUP_DESIGNS)}")
    return ONE_GROUP_DESIGNS[design]


def sample_size_one_group(
    *,
    effect_size: float,
    design: str,
    alpha: float = 0.05,
    power: float = 0.8,
    alternative: str = "two-sided",
) -> OneGroupSampleSize:
    """Participants for a paired design (d_z) or a one-sample test against a value (d)."""
    r_equivalent = _design(design)
    alt = normalize_alternative(alternative)
    _check_direction(effect_size, alt)
    n = float(
        TTestPower().solve_power(
            effect_size=effect_size,
            nobs=None,
            alpha=alpha,
            power=power,
            alternative=statsmodels_alternative(alt),
        )
    )
    return OneGroupSampleSize(
        n=math.ceil(n),
        n_exact=n,
        effect_size=float(effect_size),
        design=design,
        method="statsmodels TTestPower (noncentral t)",
        params={
            "effect_size": effect_size,
            "effect_size_name": "d_z" if design == "paired" else "cohens_d",
            "r_equivalent": r_equivalent,
            "alpha": alpha,
            "power": power,
            "alternative": alt,
        },
    )


def power_one_group(
    *,
    effect_size: float,
    n: float,
    design: str,
    alpha: float = 0.05,
    alternative: str = "two-sided",
) -> Power:
    """Power of a paired (d_z) or one-sample (d) t-test with n participants."""
    r_equivalent = _design(design)
    alt = normalize_alternative(alternative)
    value = TTestPower().power(effect_size, n, alpha, alternative=statsmodels_alternative(alt))
    return Power(
        power=float(value),
        n={"participants": float(n)},
        effect_size=float(effect_size),
        method="statsmodels TTestPower (noncentral t)",
        params={
            "effect_size": effect_size,
            "effect_size_name": "d_z" if design == "paired" else "cohens_d",
            "design": design,
            "r_equivalent": r_equivalent,
            "alpha": alpha,
            "alternative": alt,
        },
    )
