"""Validation of the trial-level models on simulated data with a known effect.

The simulation (``simulate_study``) draws from a logistic model with crossed random
intercepts, so the mixed model's arm coefficient should recover the configured log odds
ratio, and GEE should recover the smaller population-averaged log odds ratio.
"""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit

from studyapp.analysis import (
    NotRun,
    StatResult,
    crossed_mixed_design_problems,
    crossed_mixed_logistic,
    gee_design_problems,
    gee_logistic,
    simulate_study,
)

pytest.importorskip("gpboost", reason="the crossed-effects GLMM needs gpboost==1.8.0")

TRUE_LOG_OR = 0.8
PARTICIPANT_SD = 0.7
ITEM_SD = 0.5
CONTROL_ACCURACY = 0.6


@pytest.fixture(scope="module")
def trials():
    return simulate_study(
        arm_accuracy={
            "control": CONTROL_ACCURACY,
            "ig": float(expit(logit(CONTROL_ACCURACY) + TRUE_LOG_OR)),
        },
        n_per_arm=60,
        trials_per_phase=30,
        n_items=40,
        participant_sd=PARTICIPANT_SD,
        item_sd=ITEM_SD,
        seed=11,
    )


def test_crossed_glmm_recovers_sign_and_size_of_a_known_effect(trials):
    result = crossed_mixed_logistic(trials, control="control", phase="post_test",
                                    alternative="greater")["ig"]
    log_or = result.extra["log_odds_ratio"]
    assert log_or == pytest.approx(TRUE_LOG_OR, abs=0.35)
    assert result.effect.ci_low < math.exp(TRUE_LOG_OR) < result.effect.ci_high
    assert result.p_value < 1e-3
    # variance components near the truth (0.49 and 0.25)
    assert result.extra["participant_variance"] == pytest.approx(PARTICIPANT_SD**2, abs=0.25)
    assert result.extra["item_variance"] == pytest.approx(ITEM_SD**2, abs=0.2)
    assert result.n == {"trials": 3600, "participants": 120, "items": 40}
    assert result.params["fit_params"]["max_num_restarts_lbfgs"] == 3


def test_crossed_glmm_refuses_the_within_participant_pre_post_change(trials):
    # The arm x post interaction is a within-participant contrast: refused with the reason, as a
    # result entry that the analysis service records as "not_run" (not an exception).
    result = crossed_mixed_logistic(trials, control="control", phase="post_test",
                                    pre_phase="pre_test")["ig"]
    assert isinstance(result, NotRun)
    assert "measured within participants (120 participants answered both phases)" in result.reason
    assert "use the primary test on each participant's gain" in result.reason
    assert result.to_dict()["status"] == "not_run" and result.to_dict()["reason"] == result.reason
    assert result.n == {"trials": 7200, "participants": 120, "items": 40}
    # GEE (robust sandwich SEs, clustered by participant) still estimates the pre/post change.
    gee = gee_logistic(trials, control="control", phase="post_test", pre_phase="pre_test")["ig"]
    assert abs(gee.extra["coefficients"]["arm[ig]"]) < 0.35


def _within_participants(trials):
    """Every participant answers half of the items in each arm (a within-subject design)."""
    rows = trials.loc[trials["phase"] == "post_test"].copy()
    swap = (rows["participant_id"] + rows["item_id"]) % 2 == 1
    rows["arm"] = np.where(swap, np.where(rows["arm"] == "ig", "control", "ig"), rows["arm"].astype(str))
    return rows


def test_crossed_glmm_refuses_a_condition_that_varies_within_participants(trials):
    rows = _within_participants(trials)
    result = crossed_mixed_logistic(rows, control="control", phase="post_test")["ig"]
    assert isinstance(result, NotRun)
    assert result.reason.startswith("the condition varies within participants (120 participants answered "
                                    "trials in 'ig' and in another arm)")
    assert "10-30% too small against lme4" in result.reason and "use the paired tests" in result.reason
    assert crossed_mixed_design_problems(rows, control="control", phase="post_test") == {"ig": result.reason}


def test_one_participant_in_two_arms_is_enough_to_refuse(trials):
    rows = trials.loc[trials["phase"] == "post_test"].copy()
    rows["arm"] = rows["arm"].astype(str)
    first = rows["participant_id"] == rows["participant_id"].iloc[0]
    rows.loc[first & (rows["item_id"] % 2 == 0), "arm"] = "ig"
    problems = crossed_mixed_design_problems(rows, control="control", phase="post_test")
    assert "(1 participant answered trials in 'ig'" in problems["ig"]


def test_crossed_glmm_refuses_a_condition_that_varies_between_items_and_fits_the_other_arms(trials):
    rows = trials.loc[trials["phase"] == "post_test"].copy()
    rows["arm"] = rows["arm"].astype(str)
    # A third arm whose items were never shown in control: the arm is an item attribute.
    extra = rows.loc[rows["arm"] == "ig"].assign(arm="new_items", participant_id=lambda f: f["participant_id"] + 1000,
                                                  item_id=lambda f: f["item_id"] + 1000)
    rows = pd.concat([rows, extra], ignore_index=True)
    results = crossed_mixed_logistic(rows, control="control", phase="post_test", alternative="greater")
    assert list(results) == ["ig", "new_items"]
    refused = results["new_items"]
    assert isinstance(refused, NotRun)
    assert refused.reason.startswith("'new_items' and 'control' share no item")
    assert "the condition varies between items" in refused.reason
    assert refused.n == {"trials": 3600, "participants": 120, "items": 80}
    fitted = results["ig"]  # fitted without the refused arm: the same numbers as ig alone
    alone = crossed_mixed_logistic(rows, control="control", phase="post_test", arms=["ig"],
                                   alternative="greater")["ig"]
    assert isinstance(fitted, StatResult) and fitted.p_value < 1e-3
    assert fitted.extra["log_odds_ratio"] == pytest.approx(alone.extra["log_odds_ratio"], rel=1e-9)
    assert fitted.n == {"trials": 3600, "participants": 120, "items": 40}


def test_a_between_participant_crossed_design_has_no_problems(trials):
    assert crossed_mixed_design_problems(trials, control="control", phase="post_test") == {}


def test_gee_recovers_the_attenuated_population_averaged_effect(trials):
    result = gee_logistic(trials, control="control", phase="post_test", alternative="greater")["ig"]
    # marginal log OR ~ conditional / sqrt(1 + 0.346 * total random-effect variance)
    attenuated = TRUE_LOG_OR / math.sqrt(1 + 0.346 * (PARTICIPANT_SD**2 + ITEM_SD**2))
    assert result.extra["log_odds_ratio"] == pytest.approx(attenuated, abs=0.3)
    assert 0 < result.extra["log_odds_ratio"] < TRUE_LOG_OR
    assert result.p_value < 1e-3
    assert result.params["cov_type"] == "robust"


def test_gee_interval_covers_no_effect_under_the_null():
    null = simulate_study(arm_accuracy={"control": 0.6, "ig": 0.6}, n_per_arm=40,
                          trials_per_phase=20, phases=("test",), seed=3)
    result = gee_logistic(null, control="control", phase="test")["ig"]
    assert result.effect.ci_low < 1 < result.effect.ci_high


def test_gee_refuses_a_condition_that_varies_between_items_and_fits_the_other_arms(trials):
    rows = trials.loc[trials["phase"] == "post_test"].copy()
    rows["arm"] = rows["arm"].astype(str)
    extra = rows.loc[rows["arm"] == "ig"].assign(arm="new_items", participant_id=lambda f: f["participant_id"] + 1000,
                                                  item_id=lambda f: f["item_id"] + 1000)
    rows = pd.concat([rows, extra], ignore_index=True)
    results = gee_logistic(rows, control="control", phase="post_test", alternative="greater")
    assert list(results) == ["ig", "new_items"]
    refused = results["new_items"]
    assert isinstance(refused, NotRun) and refused.to_dict()["status"] == "not_run"
    assert refused.reason.startswith("'new_items' and 'control' share no item")
    assert "GEE clusters by participant and does not model items" in refused.reason
    assert "10-21% false positives at alpha 0.05" in refused.reason
    assert refused.n == {"trials": 3600, "participants": 120, "items": 80}
    assert gee_design_problems(rows, control="control", phase="post_test") == {"new_items": refused.reason}
    fitted = results["ig"]  # fitted without the refused arm: the same numbers as ig alone
    alone = gee_logistic(rows, control="control", phase="post_test", arms=["ig"], alternative="greater")["ig"]
    assert isinstance(fitted, StatResult) and fitted.p_value < 1e-3
    assert fitted.extra["log_odds_ratio"] == pytest.approx(alone.extra["log_odds_ratio"], rel=1e-12)


def test_gee_refuses_an_item_attribute_even_when_everyone_sees_both_conditions(trials):
    rows = trials.loc[trials["phase"] == "post_test"].copy()
    rows["arm"] = np.where(rows["item_id"] < 20, "control", "ig")
    result = gee_logistic(rows, control="control", phase="post_test")["ig"]
    assert isinstance(result, NotRun) and "the condition varies between items" in result.reason


def test_gee_fits_a_condition_within_participants_and_the_pre_post_change(trials):
    rows = _within_participants(trials)
    assert gee_design_problems(rows, control="control", phase="post_test") == {}
    within = gee_logistic(rows, control="control", phase="post_test")["ig"]
    # The relabelling mixes both true arms into each condition: no effect, but a fitted model.
    assert isinstance(within, StatResult) and 0 < within.extra["std_error"] < 0.5
    assert within.effect.ci_low < 1 < within.effect.ci_high
    change = gee_logistic(trials, control="control", phase="post_test", pre_phase="pre_test")["ig"]
    assert isinstance(change, StatResult)


def _null_within_participants(rng, n=60, k=20, n_items=40):
    """No true effect; each participant answers half of their items in each condition, with a
    participant-specific condition effect (SD 0.5) centred so both conditions share one accuracy."""
    u, v, s = rng.normal(0, 0.7, n), rng.normal(0, 0.5, n_items), rng.normal(0, 0.5, n)
    items = np.argsort(rng.random((n, n_items)), axis=1)[:, :k].ravel()
    pid = np.repeat(np.arange(n), k)
    cond = (pid + items) % 2
    eta = logit(0.6) + u[pid] + v[items] + s[pid] * (cond - 0.5)
    return pd.DataFrame({"participant_id": pid, "item_id": items, "arm": np.where(cond == 1, "ig", "control"),
                         "phase": "test", "correct": (rng.random(eta.size) < expit(eta)).astype(float)})


def test_gee_keeps_its_false_positive_rate_near_alpha_for_a_condition_within_participants():
    # A small version of the module docstring's simulation (there: 0.045 over 200 studies, 0.052
    # over 1,000; 0.08 with these 100 seeds). The designs GEE refuses reached 0.10-0.21.
    n = 100
    studies = np.random.SeedSequence(13).spawn(n)
    p_values = [gee_logistic(_null_within_participants(np.random.default_rng(c)), control="control",
                             phase="test")["ig"].p_value for c in studies]
    assert np.mean(np.array(p_values) <= 0.05) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / n)  # 3 binomial SDs


@pytest.mark.parametrize("pre_phase", [None, "pre_test"])
def test_gee_starts_from_the_closed_form_logistic_fit_and_reaches_statsmodels_own_answer(trials, pre_phase):
    import statsmodels.api as sm
    from statsmodels.genmod.cov_struct import Exchangeable
    from statsmodels.genmod.generalized_estimating_equations import GEE

    from studyapp.analysis.mixed import _build, _saturated_logistic_start, _select

    rows, arms = _select(trials, control="control", phase="post_test", pre_phase=pre_phase, arms=None)
    d = _build(rows, phase="post_test", pre_phase=pre_phase, arms=arms)
    glm = sm.GLM(d.endog, d.exog, family=sm.families.Binomial()).fit()
    start = _saturated_logistic_start(d.exog, d.endog)
    np.testing.assert_allclose(start, glm.params, rtol=1e-7, atol=1e-9)
    # statsmodels' default start (an IRLS fit of that GLM) and ours give the same GEE estimate.
    order = np.argsort(d.participant, kind="stable")
    default = GEE(d.endog[order], d.exog[order], groups=d.participant[order], family=sm.families.Binomial(),
                  cov_struct=Exchangeable()).fit(cov_type="robust")
    ours = gee_logistic(trials, control="control", phase="post_test", pre_phase=pre_phase)["ig"]
    j = d.targets["ig"]
    assert ours.extra["log_odds_ratio"] == pytest.approx(float(default.params[j]), rel=1e-6)
    assert ours.p_value == pytest.approx(float(default.pvalues[j]), rel=1e-5)


def test_the_closed_form_start_gives_way_when_a_cell_has_no_finite_log_odds():
    from studyapp.analysis.mixed import _saturated_logistic_start

    exog = np.column_stack([np.ones(4), [0, 0, 1, 1]]).astype(float)
    assert _saturated_logistic_start(exog, np.array([0.0, 1.0, 1.0, 1.0])) is None  # arm all correct
    assert _saturated_logistic_start(exog[:2], np.array([0.0, 1.0])) is None  # an empty cell
    np.testing.assert_allclose(_saturated_logistic_start(exog, np.array([0.0, 1.0, 0.0, 1.0])), [0.0, 0.0])
