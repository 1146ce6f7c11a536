"""Simulated studies and calibration of the real primary analysis."""

import math

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint

from studyapp.analysis import calibrate, participant_accuracy, primary_analysis, simulate_study
from studyapp.analysis.simulation import _clopper_pearson


def test_simulated_study_has_the_long_trial_format():
    trials = simulate_study(arm_accuracy={"control": 0.6, "ig": 0.7}, n_per_arm={"control": 3, "ig": 4},
                            trials_per_phase=5, n_items=8, seed=1)
    assert list(trials.columns) == ["participant_id", "arm", "item_id", "phase", "task", "correct"]
    assert len(trials) == 7 * 2 * 5
    per = trials.groupby(["participant_id", "phase"], observed=True)["item_id"]
    assert (per.nunique() == 5).all()  # distinct items within a phase
    pre = trials[trials.phase == "pre_test"].sort_values(["participant_id", "item_id"])["item_id"].to_numpy()
    post = trials[trials.phase == "post_test"].sort_values(["participant_id", "item_id"])["item_id"].to_numpy()
    np.testing.assert_array_equal(pre, post)  # the same items before and after


def test_same_seed_same_study():
    kwargs = dict(arm_accuracy={"control": 0.6, "ig": 0.7}, n_per_arm=10, seed=42)
    pd.testing.assert_frame_equal(simulate_study(**kwargs), simulate_study(**kwargs))
    assert not simulate_study(**{**kwargs, "seed": 43}).equals(simulate_study(**kwargs))


def test_without_random_effects_accuracy_is_the_configured_one():
    trials = simulate_study(arm_accuracy={"control": 0.6, "ig": 0.8}, n_per_arm=200,
                            trials_per_phase=50, phases=("test",), participant_sd=0.0,
                            item_sd=0.0, seed=7)
    acc = trials.groupby("arm", observed=True)["correct"].mean()
    n = 200 * 50
    assert acc["control"] == pytest.approx(0.6, abs=4 * math.sqrt(0.24 / n))
    assert acc["ig"] == pytest.approx(0.8, abs=4 * math.sqrt(0.16 / n))


def test_pre_test_is_at_baseline_for_every_arm():
    trials = simulate_study(arm_accuracy={"control": 0.6, "ig": 0.9}, n_per_arm=300,
                            trials_per_phase=20, participant_sd=0.0, item_sd=0.0, seed=8)
    acc = participant_accuracy(trials).groupby(["arm", "phase"], observed=True)["accuracy"].mean()
    assert acc[("ig", "pre_test")] == pytest.approx(0.6, abs=0.02)
    assert acc[("ig", "post_test")] == pytest.approx(0.9, abs=0.02)


def test_family_wise_error_under_the_null_is_near_alpha_and_power_under_the_alternative():
    n_studies = 200
    result = calibrate(
        arm_accuracy={"control": 0.6, "ig": 0.75, "placebo": 0.6},
        n_per_arm=30,
        trials_per_phase=30,
        n_studies=n_studies,
        alpha=0.05,
        correction="holm",
        seed=2024,
    )
    tolerance = 3 * math.sqrt(0.05 * 0.95 / n_studies)  # 3 binomial standard errors
    assert abs(result.fwer_null - 0.05) <= tolerance, result.fwer_null
    assert result.fwer_null_ci[0] <= result.fwer_null <= result.fwer_null_ci[1]
    assert result.power_per_arm["ig"] > 0.8
    assert result.power_per_arm["placebo"] <= 0.05 + tolerance  # a true null inside the family
    assert result.params["seed"] == 2024 and result.params["correction"] == "holm"


def test_calibration_is_reproducible():
    kwargs = dict(arm_accuracy={"control": 0.6, "ig": 0.7}, n_per_arm=15, n_studies=15, seed=1)
    assert calibrate(**kwargs) == calibrate(**kwargs)


def test_single_phase_design_calibrates_on_that_phase():
    result = calibrate(arm_accuracy={"control": 0.6, "ig": 0.6}, n_per_arm=15, n_studies=10,
                       phases=("test",), seed=4)
    assert result.params["outcome"] == "test" and result.params["pre_phase"] is None
    assert 0 <= result.fwer_null <= 1


def test_primary_analysis_permutation_option_is_seeded():
    trials = simulate_study(arm_accuracy={"control": 0.6, "ig": 0.7}, n_per_arm=20, seed=3)
    first = primary_analysis(trials, control="control", test="permutation", seed=5, n_resamples=999)
    again = primary_analysis(trials, control="control", test="permutation", seed=5, n_resamples=999)
    assert first.results["ig"].p_value == again.results["ig"].p_value
    assert first.params["seed"] == 5
    with pytest.raises(ValueError, match="seed"):
        primary_analysis(trials, control="control", test="permutation")


CALIBRATION = dict(arm_accuracy={"control": 0.6, "ig": 0.7, "placebo": 0.6}, n_per_arm=12, n_studies=12,
                   trials_per_phase=10, seed=9)


def test_null_only_calibration_reproduces_the_null_half_and_reports_no_power():
    full = calibrate(**CALIBRATION)
    null = calibrate(null_only=True, **CALIBRATION)
    assert (null.fwer_null, null.fwer_null_ci) == (full.fwer_null, full.fwer_null_ci)
    assert null.power_any is None and null.power_per_arm is None
    assert null.power_any_ci is None and null.power_per_arm_ci is None
    assert null.params["null_only"] is True and full.params["null_only"] is False


def test_calibration_gives_the_same_numbers_with_parallel_workers():
    # One seed per simulated study: the scheduling of studies over processes cannot matter.
    assert calibrate(workers=2, **CALIBRATION) == calibrate(workers=1, **CALIBRATION)
    null = calibrate(workers=2, null_only=True, **CALIBRATION)
    assert null == calibrate(null_only=True, **CALIBRATION)


def test_calibration_reports_a_clopper_pearson_interval_for_each_half():
    result = calibrate(**CALIBRATION)
    n = result.n_studies
    for value, (low, high) in [(result.fwer_null, result.fwer_null_ci), (result.power_any, result.power_any_ci),
                               *((result.power_per_arm[a], result.power_per_arm_ci[a]) for a in ("ig", "placebo"))]:
        assert low <= value <= high
        assert (low, high) == pytest.approx(proportion_confint(round(value * n), n, method="beta"))
    assert result.params["confidence_level"] == 0.95 and "Clopper-Pearson" in result.params["interval"]


def test_the_calibration_interval_is_r_binom_test_exact_interval():
    # R ?binom.test example (Mendel's peas): binom.test(c(682, 243), p = 3/4)
    # -> 95 percent confidence interval: 0.7076683 0.7654066.
    low, high = _clopper_pearson(682, 925, 0.95)
    assert (low, high) == pytest.approx((0.7076683, 0.7654066), abs=5e-8)


def test_calibration_refuses_no_workers():
    with pytest.raises(ValueError, match="workers must be at least 1"):
        calibrate(workers=0, **CALIBRATION)
