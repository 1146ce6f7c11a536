"""Two-stage block bootstrap: reproducibility and basic validity."""

import numpy as np
import pandas as pd
import pytest

from studyapp.analysis import participant_accuracy, simulate_study, two_stage_bootstrap


@pytest.fixture(scope="module")
def trials():
    return simulate_study(
        arm_accuracy={"control": 0.6, "ig": 0.75},
        n_per_arm=40,
        trials_per_phase=20,
        n_items=30,
        phases=("test",),
        seed=5,
    )


def test_same_seed_gives_the_same_interval(trials):
    kwargs = dict(treatment="ig", control="control", phase="test", n_resamples=500)
    first = two_stage_bootstrap(trials, seed=11, **kwargs)
    again = two_stage_bootstrap(trials, seed=11, **kwargs)
    other = two_stage_bootstrap(trials, seed=12, **kwargs)
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high)
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)
    assert first.params["seed"] == 11 and first.n_resamples == 500


def test_estimate_is_the_difference_of_participant_means(trials):
    result = two_stage_bootstrap(trials, treatment="ig", control="control", phase="test",
                                 seed=1, n_resamples=400)
    acc = participant_accuracy(trials).groupby("arm", observed=True)["accuracy"].mean()
    assert result.estimate == pytest.approx(acc["ig"] - acc["control"])
    assert result.ci_low < result.estimate < result.ci_high
    assert result.ci_low > 0  # a large true effect is detected
    assert result.n == {"treatment": 40, "control": 40, "items": 30}


def test_null_interval_covers_zero():
    null = simulate_study(arm_accuracy={"control": 0.7, "ig": 0.7}, n_per_arm=40,
                          trials_per_phase=20, n_items=30, phases=("test",), seed=9)
    result = two_stage_bootstrap(null, treatment="ig", control="control", phase="test",
                                 seed=2, n_resamples=500)
    assert result.ci_low < 0 < result.ci_high


def test_no_variation_gives_a_degenerate_interval():
    rows = [(p, arm, i, "test", 1) for p, arm in enumerate(["control"] * 3 + ["ig"] * 3)
            for i in range(4)]
    frame = pd.DataFrame(rows, columns=["participant_id", "arm", "item_id", "phase", "correct"])
    result = two_stage_bootstrap(frame, treatment="ig", control="control", phase="test",
                                 seed=0, n_resamples=100)
    assert (result.estimate, result.ci_low, result.ci_high) == (0.0, 0.0, 0.0)
    assert np.isfinite(result.ci_low)
