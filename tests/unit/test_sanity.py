"""Adebayo et al. sanity checks: similarity metrics, randomization curves and verdicts."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from explainers import demo_data
from explainers.manipulations import label_randomized_model, randomization_layers
from explainers.sanity import (
    HEADLINE_METRICS,
    METRICS,
    PRIMARY_METRIC,
    cascading_randomization_curve,
    label_randomization_comparison,
    sanity_check,
    similarity,
    spearman_abs,
    spearman_signed,
    ssim_abs,
    topk_intersection,
)
from explainers.training import train_classifier

torch.set_num_threads(1)

N_STIMULI = 60


@pytest.fixture(scope="module")
def digits():
    """image_cnn trained a few epochs on digits (seed 0) and held-out test images."""
    data = demo_data.load_digits()
    train, test = demo_data.train_test_split_indices(len(data["y"]), test_fraction=0.25, seed=0,
                                                     stratify=data["y"])
    result = train_classifier(architecture="image_cnn", X=data["X"][train], y=data["y"][train],
                              num_classes=10, seed=0, epochs=5, X_val=data["X"][test],
                              y_val=data["y"][test])
    assert result.val_accuracy > 0.85
    return {"model": result.model, "x": data["X"][test][:N_STIMULI], "data": data,
            "train": train}


CONFIGS = {"integrated_gradients": {"n_steps": 16}}


@pytest.fixture(scope="module")
def report_of(digits):
    """report_of(method): the sanity report on the demo CNN's 60 test digits, computed once."""
    cache = {}

    def get(method: str):
        if method not in cache:
            cache[method] = sanity_check(digits["model"], digits["x"], method=method,
                                         config=CONFIGS.get(method), seed=0)
        return cache[method]

    return get


@pytest.fixture(scope="module")
def saliency_report(report_of):
    return report_of("saliency")


# --------------------------------------------------------------------------------- metrics


def _maps(seed: int = 0, shape=(4, 1, 8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_identical_maps_score_one_on_every_metric():
    maps = _maps()
    for metric, values in similarity(maps, maps).items():
        np.testing.assert_allclose(values, 1.0, err_msg=metric)


def test_a_negated_map_is_identical_on_magnitude_metrics_but_opposite_on_signed_ones():
    maps = _maps()
    np.testing.assert_allclose(spearman_abs(maps, -maps), 1.0)
    np.testing.assert_allclose(spearman_signed(maps, -maps), -1.0)
    np.testing.assert_allclose(ssim_abs(maps, -maps), 1.0)
    np.testing.assert_allclose(topk_intersection(maps, -maps), 1.0)


def test_channels_are_summed_into_one_pixel_map():
    maps = _maps(shape=(2, 3, 8, 8))
    shuffled = maps[:, ::-1]  # the same pixel maps, channels in another order
    for metric, values in similarity(maps, shuffled).items():
        np.testing.assert_allclose(values, 1.0, err_msg=metric)


def test_unrelated_random_maps_score_near_zero_rank_correlation():
    rho = spearman_signed(_maps(1, (20, 1, 16, 16)), _maps(2, (20, 1, 16, 16)))
    assert abs(rho.mean()) < 0.05


def test_topk_intersection_counts_the_shared_most_important_features():
    a = np.array([[10.0, 9.0, 8.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    b = np.array([[0.0, 9.0, -8.0, 7.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    # k = 3 (30% of 10): a's top three {0, 1, 2}, b's {1, 2, 3} by magnitude -> 2 of 3 shared
    np.testing.assert_allclose(topk_intersection(a, b, fraction=0.3), [2 / 3])


def test_a_constant_map_shares_no_ranking_with_a_real_one():
    maps = _maps()
    np.testing.assert_allclose(spearman_signed(maps, np.zeros_like(maps)), 0.0)
    with pytest.raises(ValueError, match="same shape"):
        spearman_abs(maps, maps[:2])


def test_tabular_maps_have_no_ssim():
    maps = _maps(shape=(3, 6))
    sims = similarity(maps, maps)
    assert np.all(np.isnan(sims["ssim_abs"]))
    np.testing.assert_allclose(sims["spearman_signed"], 1.0)


# ------------------------------------------------------------------------------ the checks


def test_plain_gradient_saliency_passes_the_randomization_check(saliency_report):
    report = saliency_report
    assert report.verdict == "model_sensitive"
    test = report.model_randomization["by_metric"][PRIMARY_METRIC]
    randomized = report.model_randomization["similarity"][PRIMARY_METRIC]["mean"]
    for name in ("sobel_edges", "other_input"):
        assert test["tests"][name]["mean_reference"] > randomized
    assert test["p_lower_every_reference"] < report.alpha
    assert len(report.model_randomization["similarity"][PRIMARY_METRIC]["per_stimulus"]) == N_STIMULI


def test_the_sobel_edge_detector_is_flagged_as_not_model_sensitive(report_of):
    report = report_of("sobel_edges")
    assert report.verdict == "not_model_sensitive"
    # Its maps do not change at all when the model is randomized ...
    for step in report.cascading:
        assert step["similarity"][PRIMARY_METRIC]["mean"] == pytest.approx(1.0)
    # ... and it is not used as its own null reference.
    assert "sobel_edges" not in report.model_randomization["by_metric"][PRIMARY_METRIC]["tests"]
    assert report.model_randomization["by_metric"][PRIMARY_METRIC]["tests"]["other_input"][
        "p_higher_adjusted"] < report.alpha


def test_a_model_independent_callable_method_is_flagged(digits):
    def the_input_itself(model, inputs, *, targets, seed):
        return np.asarray(inputs)

    report = sanity_check(digits["model"], digits["x"], method=the_input_itself, config=None,
                          seed=0)
    assert report.verdict == "not_model_sensitive"
    assert report.method.startswith("callable:")


@pytest.mark.parametrize(("method", "verdict"), [
    ("saliency", "model_sensitive"), ("gradcam", "model_sensitive"),
    ("guided_backprop", "not_model_sensitive"), ("sobel_edges", "not_model_sensitive")])
def test_the_demo_cnn_shows_adebayo_et_als_published_pattern_on_both_headline_metrics(
        report_of, method, verdict):
    report = report_of(method)
    assert report.verdict == verdict
    for metric in HEADLINE_METRICS:
        assert report.model_randomization["verdict_by_metric"][metric] == verdict, metric


def test_guided_backprop_is_called_not_sensitive_by_the_sobel_reference_and_says_so(report_of):
    report = report_of("guided_backprop")
    for metric in HEADLINE_METRICS:
        decision = report.model_randomization["by_metric"][metric]
        # The randomized maps sit inside the null range: above the edge map, below another
        # digit's map. Being above one model-free map is enough to fail.
        assert decision["above_references"] == ["sobel_edges"]
        assert decision["tests"]["other_input"]["p_lower"] < report.alpha
    assert "Sobel edge map" in report.verdict_reason
    assert "another input" not in report.verdict_reason


@pytest.mark.parametrize("method", ["integrated_gradients", "input_x_gradient"])
def test_input_times_gradient_maps_are_not_model_sensitive_because_their_magnitudes_survive(
        report_of, method):
    report = report_of(method)
    verdicts = report.model_randomization["verdict_by_metric"]
    # Zero pixels get zero attribution under any weights: |map| looks the same ...
    assert verdicts["spearman_abs"] == "not_model_sensitive"
    assert report.model_randomization["similarity"]["spearman_abs"]["mean"] > 0.8
    # ... while the signed map changes, which only a signed metric can see; the headline needs both.
    assert verdicts["spearman_signed"] == "model_sensitive"
    assert report.verdict == "not_model_sensitive"
    assert "|map| Spearman" in report.verdict_reason
    assert any("magnitudes do not" in note for note in report.notes)


def test_every_metric_verdict_is_said_in_words_and_marks_the_headline_metrics(report_of):
    report = report_of("integrated_gradients")
    words = {v["metric"]: v for v in report.metric_verdicts}
    assert set(words) == set(METRICS)
    for metric, v in words.items():
        assert v["verdict"] == report.model_randomization["verdict_by_metric"][metric]
        assert v["in_headline"] == (metric in HEADLINE_METRICS)
        assert v["check"] == "model_randomization"
    assert words["spearman_abs"]["sentence"].startswith(
        "|map| Spearman: the randomized model's maps stay more similar to the real maps (mean 0.9")
    assert words["spearman_abs"]["sentence"].endswith(": not model-sensitive.")
    assert "than every null reference: the Sobel edge map" in words["spearman_signed"]["sentence"]
    assert words["spearman_signed"]["sentence"].endswith(": model-sensitive.")


def test_the_cascading_curve_has_one_step_per_layer_from_the_logits_down(digits):
    curve = cascading_randomization_curve(digits["model"], digits["x"][:10], method="saliency",
                                          config={"signed": False}, targets=None, seed=0)
    layers = randomization_layers(digits["model"])
    assert [step["down_to"] for step in curve["steps"]] == layers
    for i, step in enumerate(curve["steps"]):
        assert step["layers_randomized"] == layers[:i + 1]
        assert len(step["similarity"]["spearman_abs"]["per_stimulus"]) == 10
    assert curve["config"]["signed"] is False and curve["config"]["method"] == "saliency"
    assert curve["target_source"] == "predicted by the trained model"
    json.dumps(curve, allow_nan=False)


def test_the_cascading_curve_explains_the_given_targets_throughout(digits):
    targets = np.zeros(10, dtype=np.int64)
    curve = cascading_randomization_curve(digits["model"], digits["x"][:10], method="gradcam",
                                          config=None, targets=targets, seed=0)
    assert curve["targets"] == [0] * 10 and curve["target_source"] == "given"


def test_label_randomization_comparison_runs_and_enters_the_verdict(digits):
    data, train = digits["data"], digits["train"][:300]
    shuffled, record = label_randomized_model(architecture="image_cnn", X=data["X"][train],
                                              y=data["y"][train], num_classes=10, seed=0,
                                              epochs=3, batch_size=64)
    assert record["permutation_seed"] == 0
    x = digits["x"][:20]
    comparison = label_randomization_comparison(digits["model"], shuffled, x, method="saliency",
                                                config=None, targets=None, seed=0)
    assert set(comparison["similarity"]) >= {"spearman_abs", "spearman_signed", "ssim_abs"}
    assert len(comparison["similarity"]["spearman_abs"]["per_stimulus"]) == 20

    report = sanity_check(digits["model"], x, method="saliency", config=None, seed=0,
                          randomized_label_model=shuffled)
    assert report.data_randomization is not None
    assert report.data_randomization["verdict"] in (
        "model_sensitive", "not_model_sensitive", "inconclusive")
    assert {v["check"] for v in report.metric_verdicts} == {"model_randomization",
                                                            "data_randomization"}
    model_verdict = report.model_randomization["verdict"]
    data_verdict = report.data_randomization["verdict"]
    if model_verdict == data_verdict:
        assert report.verdict == model_verdict
    else:
        assert report.verdict != "model_sensitive"


def test_the_report_is_json_and_holds_the_numbers_behind_the_verdict(saliency_report):
    d = saliency_report.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["verdict"] == "model_sensitive"
    assert d["primary_metric"] == "spearman_signed"
    assert set(d["null_references"]) == {"sobel_edges", "other_input", "random_matched"}
    tests = d["model_randomization"]["by_metric"]["spearman_signed"]["tests"]
    assert {"p_lower", "p_higher", "p_higher_adjusted", "mean_reference"} <= set(tests["other_input"])
    assert "wilcoxon" in d["rule"]["test"]
    assert d["rule"]["headline_metrics"] == ["spearman_signed", "spearman_abs"]
    assert d["headline_metrics"] == ["spearman_signed", "spearman_abs"]
    assert d["verdict_reason"].startswith("Model-sensitive: on both the signed and the |map|")
    assert d["model_randomization"]["verdict"] == "model_sensitive"
    assert d["config"]["signed"] is False  # the resolved configuration, no silent defaults


def test_seeded_sanity_checks_repeat_exactly(digits):
    x = digits["x"][:20]
    config = {"nt_samples": 4}
    first = sanity_check(digits["model"], x, method="smoothgrad", config=config, seed=3).to_dict()
    again = sanity_check(digits["model"], x, method="smoothgrad", config=config, seed=3).to_dict()
    other = sanity_check(digits["model"], x, method="smoothgrad", config=config, seed=4).to_dict()
    assert first == again
    assert first["model_randomization"]["similarity"] != other["model_randomization"]["similarity"]


def test_the_check_runs_on_a_tabular_model_without_edges_or_ssim():
    data = demo_data.load_breast_cancer()
    result = train_classifier(architecture="tabular_mlp", X=data["X"], y=data["y"], num_classes=2,
                              seed=0, epochs=5, batch_size=32, learning_rate=1e-3)
    report = sanity_check(result.model, data["X"][:30], method="saliency", config={"signed": True},
                          seed=0)
    assert set(report.null_references) == {"other_input", "random_matched"}
    assert "ssim_abs" not in report.model_randomization["verdict_by_metric"]
    assert report.verdict in ("model_sensitive", "not_model_sensitive", "inconclusive")
    json.dumps(report.to_dict(), allow_nan=False)


def test_bad_arguments_are_refused_clearly(digits):
    with pytest.raises(ValueError, match="Unknown method"):
        sanity_check(digits["model"], digits["x"], method="edges", config=None, seed=0)
    with pytest.raises(ValueError, match="seed"):
        sanity_check(digits["model"], digits["x"], method="saliency", config=None, seed=-1)
    with pytest.raises(ValueError, match="no configuration"):
        sanity_check(digits["model"], digits["x"], method="sobel_edges", config={"k": 1}, seed=0)
