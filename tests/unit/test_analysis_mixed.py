"""Validation of the trial-level models on simulated data with a known effect.

The simulation (``simulate_study``) draws from a logistic model with crossed random
intercepts, so the mixed model's arm coefficient should recover the configured log odds
ratio, and GEE should recover the smaller population-averaged log odds ratio.
"""

import math

import pytest
from scipy.special import expit, logit

from studyapp.analysis import crossed_mixed_logistic, gee_logistic, simulate_study

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


def test_crossed_glmm_pre_post_interaction_recovers_the_change(trials):
    result = crossed_mixed_logistic(trials, control="control", phase="post_test",
                                    pre_phase="pre_test")["ig"]
    assert result.extra["log_odds_ratio"] == pytest.approx(TRUE_LOG_OR, abs=0.35)
    # no difference between arms before the intervention
    assert abs(result.extra["coefficients"]["arm[ig]"]) < 0.35


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
