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

Participant-level accuracy with k trials each (``sample_size_participant_accuracy``,
``power_participant_accuracy``): the SD of participant accuracies follows from k and the spread
of true accuracy between participants, so the researcher states those instead of a d. Why the
two calculators disagreed by a factor of ten (issue 13): the planner's "two proportions"
calculator (``sample_size_two_proportions``) treats each participant as *one* yes/no answer,
whose variance is p(1 - p) (SD 0.49 at p = 0.6), while the simulation (``calibrate``) gives each
participant k trials and tests their accuracies, whose variance is the beta-binomial (Kish
design effect) variance, by the law of total variance::

    Var(observed accuracy) = sigma_b^2 + E[a (1 - a)] / k = sigma_b^2 (1 - 1/k) + p (1 - p) / k
                           = p (1 - p) / k * (1 + (k - 1) rho),   rho = sigma_b^2 / (p (1 - p))

with p the mean accuracy and sigma_b the SD of participants' true accuracy a (over the item
population: each participant's items drawn independently; when all participants answer the
same items, the item differences are shared and the variance is slightly smaller, so the
formula is slightly conservative). For 0.6 vs 0.7 with 20 trials and the simulation's default
spread (participant SD 0.5 and item SD 0.5 on the log-odds scale: sigma_b = 0.109 and 0.099,
mean accuracies 0.590 and 0.682, from ``participant_accuracy_spread``), participant SDs are
0.153 and 0.142 against 0.49 and 0.47 for one answer: 42 participants per arm (41.3; two-sided,
80% power; 33 one-sided, the simulation's default) against 356 (355.4) from the two-proportion
formula, the factor of ten. Neither calculator was wrong: they answered different designs, and the
planner did not say which.

The power is the two-sample t-test's (``TTestIndPower``, noncentral t) at the effective
d = (p_t - p_c) / sqrt((v_c + v_t / r) / (1 + 1 / r)), which gives the difference the same
standard error as Welch's test (the primary analysis) for arm variances v_c and v_t and
allocation ratio r; with unequal variances Welch's degrees of freedom are slightly fewer than
the pooled test's, a difference below 0.01 in power for realistic designs.
``tests/unit/test_analysis_planning.py`` checks the variance against simulated participants
and the power against ``calibrate`` within Monte Carlo error. This is the accuracy of one
phase; the pre/post gain removes most of sigma_b and needs the simulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from numpy.polynomial.hermite_e import hermegauss
from scipy.special import expit, logit
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


def participant_accuracy_spread(
    *, typical_accuracy: float, participant_sd: float, item_sd: float = 0.0
) -> tuple[float, float]:
    """(mean accuracy, SD of participants' true accuracy) under the simulation's logistic model.

    ``simulate_study`` sets the accuracy of a typical participant on a typical item and normal
    participant and item effects on the log-odds scale; this gives the two numbers that
    ``sample_size_participant_accuracy`` needs for the same population. A participant's true
    accuracy is their expected accuracy over the item population. The expectations over the
    normal effects use Gauss-Hermite quadrature (``numpy.polynomial.hermite_e.hermegauss``,
    80 nodes per effect: exact to about 1e-12 for this smooth integrand, and milliseconds
    where nested ``scipy.stats.norm.expect`` takes seconds).
    """
    if not 0 < typical_accuracy < 1:
        raise ValueError(f"typical_accuracy must lie strictly between 0 and 1, got {typical_accuracy}")
    if participant_sd < 0 or item_sd < 0:
        raise ValueError("participant_sd and item_sd cannot be negative")
    nodes, weights = hermegauss(_QUADRATURE_NODES)
    weights = weights / weights.sum()  # probability weights of a standard normal
    u = participant_sd * nodes
    v = item_sd * nodes
    true_accuracy = expit(logit(typical_accuracy) + u[:, None] + v[None, :]) @ weights  # per u
    mean = float(true_accuracy @ weights)
    variance = float(((true_accuracy - mean) ** 2) @ weights)
    return mean, math.sqrt(max(variance, 0.0))


_QUADRATURE_NODES = 80


def _accuracy_variance(p: float, k: int, between_sd: float) -> float:
    # Law of total variance (module docstring): sigma_b^2 (1 - 1/k) + p (1 - p) / k.
    return between_sd**2 * (1 - 1 / k) + p * (1 - p) / k


def _accuracy_design(
    *,
    p_control: float,
    p_treatment: float,
    trials_per_participant: int,
    between_sd: float,
    between_sd_treatment: float | None,
    ratio: float,
) -> tuple[float, dict[str, Any]]:
    """The effective d and the parameters that explain it."""
    for name, p in (("p_control", p_control), ("p_treatment", p_treatment)):
        if not 0.0 < p < 1.0:
            raise ValueError(f"{name} must be a mean accuracy strictly between 0 and 1, got {p}")
    k = int(trials_per_participant)
    if k != trials_per_participant or k < 1:
        raise ValueError(f"trials_per_participant must be a whole number of at least 1, got {trials_per_participant}")
    sd_t = between_sd if between_sd_treatment is None else between_sd_treatment
    for name, sd, p in (("between_sd", between_sd, p_control), ("between_sd_treatment", sd_t, p_treatment)):
        # The true accuracies lie in [0, 1], so their variance is at most p (1 - p).
        if not 0 <= sd**2 <= p * (1 - p):
            raise ValueError(
                f"{name} must lie between 0 and sqrt(p (1 - p)) = {math.sqrt(p * (1 - p)):.4g} "
                f"for a mean accuracy of {p:g}, got {sd}"
            )
    v_c = _accuracy_variance(p_control, k, between_sd)
    v_t = _accuracy_variance(p_treatment, k, sd_t)
    difference = p_treatment - p_control
    d = difference / math.sqrt((v_c + v_t / ratio) / (1 + 1 / ratio))
    design_effect = {
        arm: 1 + (k - 1) * sd**2 / (p * (1 - p))
        for arm, sd, p in (("control", between_sd, p_control), ("treatment", sd_t, p_treatment))
    }
    return d, {
        "p_control": p_control,
        "p_treatment": p_treatment,
        "difference": difference,
        "trials_per_participant": k,
        "between_sd": {"control": between_sd, "treatment": sd_t},
        "participant_sd": {"control": math.sqrt(v_c), "treatment": math.sqrt(v_t)},
        "design_effect": design_effect,
        "effect_size_name": "effective_cohens_d",
        "variance": "sigma_b^2 (1 - 1/k) + p (1 - p) / k (beta-binomial; Kish design effect)",
        "r_equivalent": "pwr::pwr.t.test(d = effective d) / pwr.t2n.test",
    }


def sample_size_participant_accuracy(
    *,
    p_control: float,
    p_treatment: float,
    trials_per_participant: int,
    between_sd: float,
    between_sd_treatment: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
    alternative: str = "two-sided",
) -> SampleSize:
    """Participants per arm to detect a difference in mean accuracy with k trials each.

    ``p_*`` are the arms' mean accuracies; ``between_sd`` is the SD of participants' *true*
    accuracy (their accuracy over infinitely many trials) in control, and in treatment unless
    ``between_sd_treatment`` is given. ``participant_accuracy_spread`` converts the
    simulation's log-odds parameters into both. See the module docstring for the formula and
    why ``sample_size_two_proportions`` gives about ten times more for the same effect.
    """
    d, params = _accuracy_design(
        p_control=p_control,
        p_treatment=p_treatment,
        trials_per_participant=trials_per_participant,
        between_sd=between_sd,
        between_sd_treatment=between_sd_treatment,
        ratio=ratio,
    )
    return _solve(
        TTestIndPower,
        effect_size=d,
        alpha=alpha,
        power=power,
        ratio=ratio,
        alternative=alternative,
        method="participant accuracy over k trials (beta-binomial variance), statsmodels "
        "TTestIndPower on the effective d",
        params=params,
    )


def power_participant_accuracy(
    *,
    p_control: float,
    p_treatment: float,
    trials_per_participant: int,
    between_sd: float,
    n_control: float,
    between_sd_treatment: float | None = None,
    alpha: float = 0.05,
    ratio: float = 1.0,
    alternative: str = "two-sided",
) -> Power:
    """Power for a difference in mean accuracy with k trials each, n_control and ratio * n_control."""
    alt = normalize_alternative(alternative)
    d, params = _accuracy_design(
        p_control=p_control,
        p_treatment=p_treatment,
        trials_per_participant=trials_per_participant,
        between_sd=between_sd,
        between_sd_treatment=between_sd_treatment,
        ratio=ratio,
    )
    value = TTestIndPower().power(d, n_control, alpha, ratio=ratio, alternative=statsmodels_alternative(alt))
    return Power(
        power=float(value),
        n={"control": float(n_control), "treatment": float(n_control * ratio)},
        effect_size=float(d),
        method="participant accuracy over k trials (beta-binomial variance), statsmodels "
        "TTestIndPower on the effective d",
        params={**params, "alpha": alpha, "ratio": ratio, "alternative": alt},
    )
