"""The documented verdict rule."""

import math

import pytest

from studyapp.analysis import HypothesisSpec, decide

GREATER = HypothesisSpec(name="ig_beats_control", kind="greater", alpha=0.05)
EQUIV = HypothesisSpec(name="placebo_like_control", kind="equivalence", alpha=0.05, margin=0.05)


def test_significant_directional_hypothesis_is_supported():
    assert decide(GREATER, p_adjusted=0.01).verdict == "supported"
    assert decide(GREATER, p_adjusted=0.05).verdict == "supported"  # p <= alpha


def test_non_significant_result_without_equivalence_is_inconclusive():
    assert decide(GREATER, p_adjusted=0.2).verdict == "inconclusive"
    assert decide(GREATER, p_adjusted=0.2, p_equivalence_adjusted=0.3).verdict == "inconclusive"


def test_equivalence_within_margin_means_the_directional_claim_is_not_supported():
    decision = decide(GREATER, p_adjusted=0.4, p_equivalence_adjusted=0.01)
    assert decision.verdict == "not_supported"
    assert "TOST" in decision.reason


def test_equivalence_hypothesis_verdicts():
    assert decide(EQUIV, p_adjusted=0.01).verdict == "equivalent"
    assert decide(EQUIV, p_adjusted=0.3, p_difference_adjusted=0.001).verdict == "not_supported"
    assert decide(EQUIV, p_adjusted=0.3, p_difference_adjusted=0.2).verdict == "inconclusive"


def test_nan_p_value_is_inconclusive():
    assert decide(GREATER, p_adjusted=math.nan).verdict == "inconclusive"


def test_spec_validation():
    with pytest.raises(ValueError):
        HypothesisSpec(name="x", kind="equivalence")  # margin required
    with pytest.raises(ValueError):
        HypothesisSpec(name="x", kind="bigger")
