"""Participant-level aggregation and the speed of the primary analysis."""

import time

import numpy as np
import pandas as pd
import pytest

from studyapp.analysis import (
    participant_accuracy,
    participant_outcomes,
    primary_analysis,
    simulate_study,
)


def _trials():
    rows = [
        # participant, arm, item, phase, task, correct
        ("a", "control", 1, "pre_test", "forward", 1),
        ("a", "control", 2, "pre_test", "forward", 0),
        ("a", "control", 1, "post_test", "forward", 1),
        ("a", "control", 2, "post_test", "forward", 1),
        ("a", "control", 9, "post_test", "attention_check", 0),
        ("b", "ig", 1, "pre_test", "forward", 0),
        ("b", "ig", 2, "pre_test", "forward", 0),
        ("b", "ig", 1, "post_test", "forward", 1),
        ("b", "ig", 2, "post_test", "counterfactual_predict", 0),
        ("c", "ig", 1, "post_test", "forward", 1),
        ("c", "ig", 2, "post_test", "forward", None),  # unanswered: not a trial
    ]
    return pd.DataFrame(rows, columns=["participant_id", "arm", "item_id", "phase", "task", "correct"])


def test_accuracy_per_participant_and_phase_excludes_attention_checks():
    acc = participant_accuracy(_trials()).set_index(["participant_id", "phase"])
    assert acc.loc[("a", "post_test"), "n_trials"] == 2  # attention check not counted
    assert acc.loc[("a", "post_test"), "accuracy"] == 1.0
    assert acc.loc[("a", "pre_test"), "accuracy"] == 0.5
    assert acc.loc[("c", "post_test"), "n_trials"] == 1
    assert acc.loc[("b", "post_test"), "arm"] == "ig"


def test_task_filter_selects_trial_types():
    acc = participant_accuracy(_trials(), tasks=["forward"]).set_index(["participant_id", "phase"])
    assert acc.loc[("b", "post_test"), "n_trials"] == 1


def test_gain_is_post_minus_pre_and_missing_phase_gives_nan():
    wide = participant_outcomes(_trials()).set_index("participant_id")
    assert wide.loc["a", "gain"] == pytest.approx(0.5)
    assert wide.loc["b", "gain"] == pytest.approx(0.5)
    assert np.isnan(wide.loc["c", "gain"])
    assert wide.loc["c", "n_post_test"] == 1
    assert list(wide["arm"]) == ["control", "ig", "ig"]


def test_participant_in_two_arms_is_a_data_error():
    trials = _trials()
    trials.loc[0, "arm"] = "ig"
    with pytest.raises(ValueError, match="more than one arm"):
        participant_accuracy(trials)


def test_missing_columns_are_reported():
    with pytest.raises(ValueError, match="correct"):
        participant_accuracy(_trials().drop(columns="correct"))


def test_one_million_trials_aggregate_and_test_in_seconds():
    # 10,000 participants x 100 trials (50 pre + 50 post).
    trials = simulate_study(
        arm_accuracy={"control": 0.6, "ig": 0.65},
        n_per_arm=5000,
        trials_per_phase=50,
        n_items=80,
        seed=20240601,
    )
    assert len(trials) == 1_000_000
    start = time.perf_counter()
    result = primary_analysis(trials, control="control", outcome="gain")
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"primary analysis took {elapsed:.2f} s"
    assert result.results["ig"].n == {"treatment": 5000, "control": 5000}
    assert result.adjusted.reject[0]


def test_analysis_package_never_imports_django():
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, studyapp.analysis as a; "
        "assert not any(m == 'django' or m.startswith('django.') for m in sys.modules), "
        "[m for m in sys.modules if m.startswith('django')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
