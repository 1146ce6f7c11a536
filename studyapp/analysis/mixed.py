"""Secondary, trial-level models: logistic regression with crossed random effects, and GEE.

Choice (and why)
----------------
statsmodels has no frequentist mixed logistic model. Its Bayesian ``BinomialBayesMixedGLM``
was tried first and rejected for inference on an arm effect, which is a *between-participant*
effect: on simulated null studies (40 participants per arm, 30 trials, participant SD 1.0,
item SD 0.5 on the logit scale; 30 replications) the mean-field variational fit (``fit_vb``)
reported a posterior SD of 0.065 for the arm coefficient against an actual sampling SD of
0.258 (95% intervals covered the truth in 40% of studies) and took 2.3 s per fit; the
Laplace/MAP fit (``fit_map``) reported 0.196 against 0.238. Mean-field VB ignores the posterior
correlation between the arm effect and the participant effects, which is exactly what
matters here.

We therefore use **GPBoost** (``gpboost`` on PyPI, pinned ``gpboost==1.8.0``):
``GPModel(likelihood="bernoulli_logit", group_data=[participant, item])`` fits grouped
(crossed) random intercepts for participant and item by maximum likelihood with the Laplace
approximation, the same approximation as R's ``lme4::glmer`` default (nAGQ = 1). Standard
errors of fixed effects come from a numerically approximated inverse Hessian; the test is a
Wald z-test. In the same simulation (this module's ``crossed_mixed_logistic``) the reported SE
was 0.244 against a sampling SD of 0.261 (95% intervals covered the truth in 26/30 studies),
about 0.3 s per fit. With GPBoost's default convergence settings 11 of the 30 fits returned no
SE (approximated Hessian not positive definite), so the fit uses a tight relative convergence
tolerance and L-BFGS restarts (``DEFAULT_GPBOOST_PARAMS``; 0 of 30 failed); both are stored with
the result. ``tests/unit/test_analysis_mixed.py`` validates sign and size recovery on
simulated data with a known effect.

Robust alternative: **GEE** (``statsmodels`` GEE, binomial/logit, exchangeable working
correlation within participant, robust sandwich SEs). It clusters by participant only (items
are not modelled) and estimates the *population-averaged* log odds ratio, which is smaller in
magnitude than the participant-specific (conditional) log odds ratio of the mixed model by
roughly 1/sqrt(1 + 0.346 * total random-effect variance). It needs no distributional
assumption on the random effects, so agreement in sign between the two is a useful check.

Design: trials of one phase with an arm fixed effect (log odds ratio of each arm vs control),
or, with ``pre_phase``, trials of both phases and the arm x post interaction (the change from
pre to post in an arm relative to the change in control, on the logit scale).

Designs the mixed model refuses (``NotRun``, never a silent fit)
-----------------------------------------------------------------
The validation above is for the design it was built for: the arm varies *between*
participants and *within* items (every item shown in both arms). For a factor that varies
within participants or between items, the model's standard errors were reported 10-30% below
lme4's (issue 13), so its p-values are too small. lme4 is not available to validate against,
so ``crossed_mixed_logistic`` checks the data and returns a ``NotRun`` with the reason for an
arm when

* a participant answered trials in that arm and in another arm of the model (the condition
  varies within participants: use the paired tests);
* ``pre_phase`` is given and participants answered trials in both phases: the tested arm x post
  interaction is a within-participant contrast (use the primary test on each participant's
  gain);
* the arm and the control share no item (each item was shown in one of them only: the
  condition varies between items, so item differences are confounded with it).

Simulations with this module's fit (``crossed_mixed_logistic``, 60 participants, 40 items,
participant SD 0.7 and item SD 0.5 on the logit scale, no true effect) show the same direction
(mean reported SE / SD of the estimates over the replications; that SD itself is uncertain by
about 10%): arm between participants and within items 0.204 / 0.205 (30 fits); arm within
participants with participant-specific effects (SD 0.5) 0.090 / 0.124 (60 fits, 27% too
small); arm as an item attribute 0.178 / 0.199 (60 fits, 11% too small); the pre/post
interaction with participant-specific learning (SD 0.5) 0.147 / 0.191 (40 fits, 23% too small).
A random-intercept model ignores participant-specific effects of a within-participant factor,
which lme4 users model with random slopes (Barr et al. 2013, "Random effects structure for
confirmatory hypothesis testing: keep it maximal").

Designs GEE refuses (``NotRun``), and those it allows
-----------------------------------------------------
GEE's sandwich standard errors allow any correlation of the trials *within* a participant, so they
stay valid for a factor that varies within participants (participant-specific effects included),
not only between them. Items are another matter: an item is answered by many participants, so
its difficulty correlates trials *across* clusters, which GEE clustered by participant ignores.
When both conditions share the items the item effects largely cancel from the contrast; when the
condition is constant within items (each item shown in one condition only) they do not.
Simulated null studies measured it (issue 13; no true effect, two-sided Wald test at alpha 0.05,
60 participants of 20 trials from 40 items, participant SD 0.7, item SD 0.5 and, where the
condition or the phase varies within participants, participant-specific effects of SD 0.5 on the
logit scale; false-positive rate over 200 studies, then over 1,000 with its Clopper-Pearson 95%
interval):

* arm between participants, every item in both arms (the design above): 0.070; 0.061 [0.047,
  0.078]; mean reported SE 0.189 / SD of the estimates 0.194. Allowed.
* arm within participants (each participant answers half of the items in each condition,
  counterbalanced): 0.045; 0.052 [0.039, 0.068]; SE 0.125 / SD 0.124. Allowed.
* with ``pre_phase``, the arm x post change (arm between participants, pre and post on the same
  items, participant-specific learning): 0.025; 0.042 [0.030, 0.056]; SE 0.188 / SD 0.180.
  Allowed.
* the condition is an item attribute (everyone answers items of both conditions, each item
  belongs to one): 0.200; 0.209 [0.184, 0.236]; SE 0.123 / SD 0.193. Refused.
* each arm has its own participants and its own items: 0.120; 0.099 [0.081, 0.119]; SE 0.189 /
  SD 0.221. Refused.

(Measured with this module's ``gee_logistic`` fit before the guard below existed; the seeds were
``numpy.random.SeedSequence(20240613).spawn(n)``. A 100-study version of the within-participant
case runs in ``tests/unit/test_analysis_mixed.py``.) So ``gee_logistic`` refuses an arm that
shares no item with the control (the same check as the mixed model's, above) and fits the other
arms; a participant in two arms and the pre/post interaction are allowed.
``gee_design_problems`` gives the reasons without fitting.

A refusal is an entry of the returned mapping, not an exception: ``NotRun.to_dict()`` is
``{"status": "not_run", "reason": ...}``, which the analysis service records as it is (its
``_guard`` keeps a result that carries a ``status``), so one refused secondary model never sinks
an analysis run. ``crossed_mixed_design_problems`` gives the reasons without fitting.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .aggregate import select_trials
from .results import EffectSize, StatResult, _jsonable, normalize_alternative

DEFAULT_GPBOOST_PARAMS: dict[str, Any] = {"delta_rel_conv": 1e-10, "max_num_restarts_lbfgs": 3}


@dataclass(frozen=True)
class TrialDesign:
    endog: np.ndarray
    exog: np.ndarray
    names: list[str]
    targets: dict[str, int]  # arm -> column index of its effect
    participant: np.ndarray
    item: np.ndarray
    n: dict[str, int]


@dataclass(frozen=True)
class NotRun:
    """A model deliberately not fitted for ``arm``, with the reason in plain words.

    ``to_dict()`` carries ``status: "not_run"``: the analysis service keeps a secondary result
    that has a status as it is, so the report shows the reason instead of a number.
    """

    method: str
    arm: str
    reason: str
    n: dict[str, int]
    params: dict[str, Any]
    status: str = "not_run"

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def _select(
    trials: pd.DataFrame,
    *,
    control: str,
    phase: str,
    pre_phase: str | None,
    arms: list[str] | None,
) -> tuple[pd.DataFrame, list[str]]:
    phases = [phase] if pre_phase is None else [pre_phase, phase]
    rows = select_trials(trials, phases=phases)
    rows = rows.loc[rows["correct"].notna()]
    present = set(pd.unique(rows["arm"]))
    if control not in present:
        raise ValueError(f"control arm {control!r} has no trials in {phases}")
    if arms is None:
        arms = sorted(str(a) for a in present if a != control)
    return rows.loc[rows["arm"].isin([control, *arms])], list(arms)


def _counts(rows: pd.DataFrame) -> dict[str, int]:
    return {
        "trials": int(len(rows)),
        "participants": int(rows["participant_id"].nunique()),
        "items": int(rows["item_id"].nunique()),
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


_NOT_VALIDATED = (
    "the crossed mixed model's standard errors are not validated for that design "
    "(10-30% too small against lme4, so its p-values would be too small)"
)


def _share_no_item(rows: pd.DataFrame, *, control: str, arm: str) -> bool:
    """True when every item of ``arm`` and ``control`` was shown in one of them only: the condition
    is constant within items and varies between them."""
    arm_items = set(pd.unique(rows.loc[rows["arm"] == arm, "item_id"]))
    control_items = set(pd.unique(rows.loc[rows["arm"] == control, "item_id"]))
    return bool(arm_items and control_items and not arm_items & control_items)


def _problems(
    rows: pd.DataFrame, *, control: str, arms: list[str], phase: str, pre_phase: str | None
) -> dict[str, str]:
    """arm -> why the fit is refused for it, read from the data (see the module docstring)."""
    pairs = rows[["participant_id", "arm"]].drop_duplicates()
    arms_per_participant = pairs.groupby("participant_id", observed=True)["arm"].nunique()
    in_several = set(arms_per_participant.index[arms_per_participant > 1])
    both_phases = 0
    if pre_phase is not None:
        phases_per_participant = rows.groupby("participant_id", observed=True)["phase"].nunique()
        both_phases = int((phases_per_participant > 1).sum())
    problems: dict[str, list[str]] = {}
    for arm in arms:
        reasons = problems.setdefault(arm, [])
        shared = in_several & set(pairs.loc[pairs["arm"] == arm, "participant_id"])
        if shared:
            reasons.append(
                f"the condition varies within participants ({_plural(len(shared), 'participant')} "
                f"answered trials in {arm!r} and in another arm): {_NOT_VALIDATED}; "
                "use the paired tests"
            )
        if _share_no_item(rows, control=control, arm=arm):
            reasons.append(
                f"{arm!r} and {control!r} share no item (each item was shown in one of them "
                f"only), so the condition varies between items: {_NOT_VALIDATED}"
            )
        if both_phases:
            reasons.append(
                f"the change from {pre_phase!r} to {phase!r} is measured within participants "
                f"({_plural(both_phases, 'participant')} answered both phases): {_NOT_VALIDATED}, "
                "and a model with random intercepts only ignores that participants improve by "
                "different amounts; use the primary test on each participant's gain"
            )
    return {arm: "; ".join(reasons) for arm, reasons in problems.items() if reasons}


def crossed_mixed_design_problems(
    trials: pd.DataFrame,
    *,
    control: str,
    phase: str,
    pre_phase: str | None = None,
    arms: list[str] | None = None,
) -> dict[str, str]:
    """arm -> why ``crossed_mixed_logistic`` refuses it for these trials; empty when none is."""
    rows, arms = _select(trials, control=control, phase=phase, pre_phase=pre_phase, arms=arms)
    return _problems(rows, control=control, arms=arms, phase=phase, pre_phase=pre_phase)


def _build(
    rows: pd.DataFrame, *, phase: str, pre_phase: str | None, arms: list[str]
) -> TrialDesign:
    arm_values = rows["arm"].to_numpy()
    columns = [np.ones(len(rows))]
    names = ["intercept"]
    for arm in arms:
        columns.append((arm_values == arm).astype("float64"))
        names.append(f"arm[{arm}]")
    targets = {arm: 1 + i for i, arm in enumerate(arms)}
    if pre_phase is not None:
        post = (rows["phase"].to_numpy() == phase).astype("float64")
        columns.append(post)
        names.append(f"phase[{phase}]")
        for arm in arms:
            targets[arm] = len(columns)
            columns.append(post * (arm_values == arm))
            names.append(f"arm[{arm}]:phase[{phase}]")
    participant = pd.factorize(rows["participant_id"])[0]
    item = pd.factorize(rows["item_id"])[0]
    return TrialDesign(
        endog=rows["correct"].to_numpy(dtype="float64"),
        exog=np.column_stack(columns),
        names=names,
        targets=targets,
        participant=participant,
        item=item,
        n={
            "trials": int(len(rows)),
            "participants": int(participant.max() + 1),
            "items": int(item.max() + 1),
        },
    )


def _wald(
    *,
    arm: str,
    coef: float,
    se: float,
    alt: str,
    confidence_level: float,
    method: str,
    n: dict[str, int],
    params: dict[str, Any],
    extra: dict[str, Any],
) -> StatResult:
    z = coef / se if se > 0 else math.nan
    if alt == "greater":
        p = float(stats.norm.sf(z))
    elif alt == "less":
        p = float(stats.norm.cdf(z))
    else:
        p = float(2 * stats.norm.sf(abs(z)))
    q = stats.norm.ppf(0.5 + confidence_level / 2)
    return StatResult(
        method=method,
        statistic=float(z),
        p_value=p,
        alternative=alt,
        n=n,
        params=params,
        effect=EffectSize(
            name="odds_ratio",
            estimate=math.exp(coef),
            ci_low=math.exp(coef - q * se),
            ci_high=math.exp(coef + q * se),
            confidence_level=confidence_level,
            method="Wald interval on the log odds ratio",
        ),
        extra={"arm": arm, "log_odds_ratio": coef, "std_error": se, **extra},
    )


MIXED_METHOD = (
    "logistic GLMM, crossed random intercepts (participant, item), Laplace ML (gpboost), Wald z"
)


def crossed_mixed_logistic(
    trials: pd.DataFrame,
    *,
    control: str,
    phase: str,
    pre_phase: str | None = None,
    arms: list[str] | None = None,
    alternative: str = "two-sided",
    confidence_level: float = 0.95,
    gpboost_params: dict[str, Any] | None = None,
) -> dict[str, StatResult | NotRun]:
    """Logistic GLMM with crossed random intercepts (participant, item), fitted by GPBoost.

    Returns arm -> Wald z-test of its log odds ratio vs control (``effect`` is the odds ratio),
    or arm -> ``NotRun`` with the reason when the arm varies within participants or between
    items, or the tested contrast is the within-participant pre/post change (see the module
    docstring); the other arms are fitted without the refused ones.
    """
    alt = normalize_alternative(alternative)
    rows, arms = _select(trials, control=control, phase=phase, pre_phase=pre_phase, arms=arms)
    problems = _problems(rows, control=control, arms=arms, phase=phase, pre_phase=pre_phase)
    fit_params = {**DEFAULT_GPBOOST_PARAMS, **(gpboost_params or {})}
    params = {
        "likelihood": "bernoulli_logit",
        "random_effects": ["participant_id", "item_id"],
        "fit_params": fit_params,
        "num_parallel_threads": 1,
        "seed": 0,
        "phase": phase,
        "pre_phase": pre_phase,
        "control": control,
        "alternative": alt,
        "confidence_level": confidence_level,
    }
    fitted = [arm for arm in arms if arm not in problems]
    results: dict[str, StatResult | NotRun] = {}
    if fitted:
        kept = rows.loc[rows["arm"].isin([control, *fitted])]
        design = _build(kept, phase=phase, pre_phase=pre_phase, arms=fitted)
        results = _fit_crossed(design, alt=alt, confidence_level=confidence_level, params=params)
    refused = {
        arm: NotRun(
            method=MIXED_METHOD,
            arm=arm,
            reason=reason,
            n=_counts(rows.loc[rows["arm"].isin([control, arm])]),
            params=params,
        )
        for arm, reason in problems.items()
    }
    return {arm: results[arm] if arm in results else refused[arm] for arm in arms}


def _fit_crossed(
    d: TrialDesign, *, alt: str, confidence_level: float, params: dict[str, Any]
) -> dict[str, StatResult]:
    try:
        import gpboost as gpb
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("crossed_mixed_logistic needs 'gpboost==1.8.0' installed") from exc

    # One thread: results do not depend on the machine's core count, and the web/worker
    # processes share few cores.
    model = gpb.GPModel(
        group_data=np.column_stack([d.participant, d.item]),
        likelihood="bernoulli_logit",
        num_parallel_threads=1,
        seed=0,
    )
    model.fit(y=d.endog, X=d.exog, params=dict(params["fit_params"]))
    coef = model.get_coef(std_err=True, format_pandas=False)
    variances = np.asarray(model.get_cov_pars(format_pandas=False), dtype="float64").ravel()
    estimates = np.asarray(coef[0], dtype="float64").ravel()
    std_errors = np.asarray(coef[1], dtype="float64").ravel()
    params = {"library": f"gpboost {gpb.__version__}", **params}
    extra = {
        "participant_variance": float(variances[0]),
        "item_variance": float(variances[1]),
        "coefficients": dict(zip(d.names, estimates.tolist())),
    }
    return {
        arm: _wald(
            arm=arm,
            coef=float(estimates[j]),
            se=float(std_errors[j]),
            alt=alt,
            confidence_level=confidence_level,
            method=MIXED_METHOD,
            n=d.n,
            params=params,
            extra=extra,
        )
        for arm, j in d.targets.items()
    }


# The measured null false-positive rates of the refused designs (module docstring).
GEE_BETWEEN_ITEMS_ERROR = "10-21%"
GEE_METHOD = "GEE logistic, exchangeable within participant, robust SE, Wald z"


def gee_design_problems(
    trials: pd.DataFrame,
    *,
    control: str,
    phase: str,
    pre_phase: str | None = None,
    arms: list[str] | None = None,
) -> dict[str, str]:
    """arm -> why ``gee_logistic`` refuses it for these trials; empty when none is.

    Only a condition that varies between items is refused (see the module docstring, "Designs
    GEE refuses"): a condition within participants and the pre/post change are allowed.
    """
    rows, arms = _select(trials, control=control, phase=phase, pre_phase=pre_phase, arms=arms)
    return _gee_problems(rows, control=control, arms=arms)


def _gee_problems(rows: pd.DataFrame, *, control: str, arms: list[str]) -> dict[str, str]:
    return {
        arm: (
            f"{arm!r} and {control!r} share no item (each item was shown in one of them only), so "
            "the condition varies between items: GEE clusters by participant and does not model "
            "items, so the items' own differences are counted as an effect of the condition "
            f"(on simulated null studies of this design it gave {GEE_BETWEEN_ITEMS_ERROR} false "
            "positives at alpha 0.05); compare the arms on the same items"
        )
        for arm in arms
        if _share_no_item(rows, control=control, arm=arm)
    }


def _saturated_logistic_start(exog: np.ndarray, endog: np.ndarray) -> np.ndarray | None:
    """The independence logistic model's MLE in closed form, as GEE's starting values.

    The design has one column per cell of arm (x phase) after the intercept, so the model is
    saturated: its fitted log odds in each cell are the cell's observed log odds, and the
    coefficients solve one small linear system. statsmodels' GEE otherwise fits that same GLM by
    IRLS before its first step (about 40% of the GEE's time on a million trials). None, and
    statsmodels' own start, when a cell is empty or all-correct/all-wrong (no finite MLE) or the
    design is not saturated.
    """
    if not len(endog):
        return None
    # Columns are 0/1 indicators (and the intercept): each row's cell as one integer.
    key = exog.astype(np.int64) @ (np.int64(1) << np.arange(exog.shape[1], dtype=np.int64))
    keys, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    if len(keys) != exog.shape[1]:
        return None
    means = np.bincount(inverse, weights=endog) / np.bincount(inverse)
    if np.any((means <= 0) | (means >= 1)):
        return None
    return np.linalg.solve(exog[first], np.log(means / (1 - means)))


def gee_logistic(
    trials: pd.DataFrame,
    *,
    control: str,
    phase: str,
    pre_phase: str | None = None,
    arms: list[str] | None = None,
    alternative: str = "two-sided",
    confidence_level: float = 0.95,
) -> dict[str, StatResult | NotRun]:
    """GEE logistic model clustered by participant (exchangeable, robust SEs).

    Returns arm -> Wald z-test of its population-averaged log odds ratio vs control (``effect``
    is the odds ratio), or arm -> ``NotRun`` with the reason when the arm and control share no
    item (the condition varies between items); the other arms are fitted without the refused
    ones. Valid, by the simulations of the module docstring ("Designs GEE refuses"), for an arm
    between participants (null false-positive rate 0.061 at alpha 0.05, 1,000 studies), an arm
    within participants (0.052) and, with ``pre_phase``, the arm x post change (0.042).
    """
    from statsmodels.genmod.cov_struct import Exchangeable
    from statsmodels.genmod.families import Binomial
    from statsmodels.genmod.generalized_estimating_equations import GEE

    alt = normalize_alternative(alternative)
    rows, arms = _select(trials, control=control, phase=phase, pre_phase=pre_phase, arms=arms)
    problems = _gee_problems(rows, control=control, arms=arms)
    params = {
        "library": "statsmodels GEE",
        "family": "Binomial(logit)",
        "cov_struct": "Exchangeable",
        "cov_type": "robust",
        "groups": "participant_id",
        "phase": phase,
        "pre_phase": pre_phase,
        "control": control,
        "alternative": alt,
        "confidence_level": confidence_level,
    }
    results: dict[str, StatResult | NotRun] = {
        arm: NotRun(method=GEE_METHOD, arm=arm, reason=reason,
                    n=_counts(rows.loc[rows["arm"].isin([control, arm])]), params=params)
        for arm, reason in problems.items()
    }
    fitted = [arm for arm in arms if arm not in problems]
    if fitted:
        kept = rows.loc[rows["arm"].isin([control, *fitted])]
        d = _build(kept, phase=phase, pre_phase=pre_phase, arms=fitted)
        order = np.argsort(d.participant, kind="stable")  # GEE wants clusters contiguous
        model = GEE(
            d.endog[order],
            d.exog[order],
            groups=d.participant[order],
            family=Binomial(),
            cov_struct=Exchangeable(),
        )
        res = model.fit(cov_type="robust", start_params=_saturated_logistic_start(d.exog, d.endog))
        extra = {
            "working_correlation": float(model.cov_struct.dep_params),
            "coefficients": dict(zip(d.names, np.asarray(res.params).tolist())),
        }
        for arm, j in d.targets.items():
            results[arm] = _wald(
                arm=arm,
                coef=float(res.params[j]),
                se=float(res.bse[j]),
                alt=alt,
                confidence_level=confidence_level,
                method=GEE_METHOD,
                n=d.n,
                params=params,
                extra=extra,
            )
    return {arm: results[arm] for arm in arms}
