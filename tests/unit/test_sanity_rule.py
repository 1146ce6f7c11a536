"""The sanity-check decision rule on made-up similarities: per metric against every null
reference, and the headline over the signed and |map| Spearman correlations."""
from __future__ import annotations

import numpy as np
import pytest

from explainers.sanity import RULE, _decide, _headline, _metric_sentence

ALPHA = 0.05
N = 30


def _around(mean: float, seed: int) -> np.ndarray:
    return mean + np.random.default_rng(seed).normal(scale=0.05, size=N)


def test_randomized_maps_above_one_reference_are_not_model_sensitive_even_below_another():
    decision = _decide(_around(0.55, 0), {"sobel_edges": _around(0.30, 1),
                                          "other_input": _around(0.90, 2)}, ALPHA)
    assert decision["verdict"] == "not_model_sensitive"
    assert decision["above_references"] == ["sobel_edges"]
    assert decision["tests"]["other_input"]["p_lower"] < ALPHA


def test_randomized_maps_below_only_the_closest_reference_are_inconclusive():
    # Below another input's map but level with the edge map: not shown to be below every
    # model-free map (the old "closest reference" rule called this model-sensitive).
    randomized = _around(0.30, 0)
    decision = _decide(randomized, {"sobel_edges": randomized + np.random.default_rng(3).normal(
        scale=0.001, size=N), "other_input": _around(0.90, 2)}, ALPHA)
    assert decision["verdict"] == "inconclusive"
    assert decision["p_lower_every_reference"] >= ALPHA


def test_randomized_maps_below_every_reference_are_model_sensitive():
    decision = _decide(_around(0.05, 0), {"sobel_edges": _around(0.25, 1),
                                          "other_input": _around(0.80, 2)}, ALPHA)
    assert decision["verdict"] == "model_sensitive"
    assert decision["p_lower_every_reference"] == max(
        t["p_lower"] for t in decision["tests"].values())


def test_without_any_reference_the_verdict_is_inconclusive_and_says_why():
    decision = _decide(_around(0.05, 0), {}, ALPHA)
    assert decision["verdict"] == "inconclusive"
    sentence = _metric_sentence("spearman_signed", decision, 0.05, "the randomized model's", ALPHA)
    assert sentence == ("Signed Spearman: there is no null reference to compare the randomized "
                        "model's maps (mean 0.05) with (too few stimuli): inconclusive.")


@pytest.mark.parametrize(("signed", "absolute", "headline"), [
    ("model_sensitive", "model_sensitive", "model_sensitive"),
    ("model_sensitive", "not_model_sensitive", "not_model_sensitive"),
    ("not_model_sensitive", "model_sensitive", "not_model_sensitive"),
    ("model_sensitive", "inconclusive", "inconclusive"),
    ("inconclusive", "not_model_sensitive", "not_model_sensitive"),
])
def test_the_headline_needs_both_spearman_metrics_and_fails_on_either(signed, absolute, headline):
    # SSIM and top-k overlap are reported but do not move the headline.
    verdicts = {"spearman_signed": signed, "spearman_abs": absolute,
                "ssim_abs": "not_model_sensitive", "topk_intersection": "not_model_sensitive"}
    assert _headline(verdicts) == headline
    assert set(RULE["headline_metrics"]) == {"spearman_signed", "spearman_abs"}


def test_an_inconclusive_metric_names_the_references_it_is_not_below():
    decision = _decide(_around(0.30, 0), {"sobel_edges": _around(0.30, 5),
                                          "other_input": _around(0.90, 2)}, ALPHA)
    assert decision["verdict"] == "inconclusive"
    sentence = _metric_sentence("spearman_abs", decision, 0.30, "the randomized model's", ALPHA)
    assert "not shown to be less similar to the real maps than the Sobel edge map" in sentence
    assert "another input" not in sentence and sentence.endswith(": inconclusive.")
