"""Attribution methods: correctness, full recorded configuration, determinism, clear errors."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from explainers import demo_data
from explainers.architectures import build_model
from explainers.methods import (METHODS, config_sha256, data_reference_overrides,
                                default_config, explain, predict, resolve_config)
from explainers.resnet import ResNet18Like
from explainers.training import train_classifier

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits(digits_cnn):
    model, data = digits_cnn
    return model, data["X"][600:612]


@pytest.fixture(scope="module")
def cancer():
    data = demo_data.load_breast_cancer()
    model = train_classifier(architecture="tabular_mlp", X=data["X"][:400], y=data["y"][:400],
                             num_classes=2, seed=0, epochs=10).model
    return model, data["X"][:400], data["X"][400:406]


def _logits(model, x) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x)).numpy()


QUICK = {"kernel_shap": {"n_samples": 40}, "lime": {"n_samples": 40},
         "smoothgrad": {"nt_samples": 8}}


def test_integrated_gradients_of_a_linear_model_equal_input_minus_baseline_times_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3))
    x = np.random.RandomState(0).randn(4, 5).astype(np.float32)
    baseline = [0.5, -1.0, 2.0, 0.0, 3.0]
    res = explain(model, x, method="integrated_gradients", targets=[0, 1, 2, 1],
                  config={"baseline": "custom", "baseline_values": baseline})
    w = model[0].weight.detach().numpy()
    expected = (x - np.array(baseline, dtype=np.float32)) * w[[0, 1, 2, 1]]
    np.testing.assert_allclose(res.attributions, expected, rtol=1e-5, atol=1e-6)
    assert res.attributions.dtype == np.float32


def test_integrated_gradients_are_complete_on_a_trained_image_cnn(digits):
    model, x = digits
    res = explain(model, x, method="integrated_gradients")
    rows = np.arange(len(x))
    gap = _logits(model, x)[rows, res.targets] - _logits(model, np.zeros_like(x[:1]))[0, res.targets]
    sums = res.attributions.reshape(len(x), -1).sum(axis=1)
    np.testing.assert_allclose(sums, gap, rtol=0.02, atol=0.02)
    np.testing.assert_allclose(res.convergence_delta, sums - gap, atol=1e-3)


def test_default_targets_are_the_predicted_classes(digits):
    model, x = digits
    res = explain(model, x, method="saliency")
    np.testing.assert_array_equal(res.targets, _logits(model, x).argmax(axis=1))
    assert res.config["execution"]["target_source"] == "predicted"


def test_signed_saliency_keeps_the_sign_and_unsigned_is_its_magnitude(digits):
    model, x = digits
    signed = explain(model, x, method="saliency", config={"signed": True}).attributions
    magnitude = explain(model, x, method="saliency", config={"signed": False}).attributions
    assert (signed < 0).any() and (signed > 0).any()
    assert (magnitude >= 0).all()
    np.testing.assert_allclose(magnitude, np.abs(signed), rtol=1e-6, atol=1e-8)


def test_gradcam_has_the_input_spatial_size_and_is_non_negative(digits):
    model, x = digits
    res = explain(model, x, method="gradcam")
    assert res.attributions.shape == x.shape
    assert (res.attributions >= 0).all() and res.attributions.max() > 0
    assert res.config["layer"] == "features.relu2" and res.config["relu_attributions"] is True
    assert res.config["execution"]["layer_source"].startswith("architecture default")


def test_gradcam_upsamples_a_coarse_layer_bilinearly_to_the_input_size():
    torch.manual_seed(0)
    model = ResNet18Like(num_classes=4)
    x = np.random.RandomState(0).rand(2, 3, 64, 64).astype(np.float32)
    res = explain(model, x, method="gradcam")  # features.layer4 is 2x2 here
    assert res.attributions.shape == x.shape and (res.attributions >= 0).all()
    assert res.config["layer"] == "features.layer4"
    # Nearest upsampling would give at most 4 values per map; bilinear gives a smooth ramp.
    assert len(np.unique(res.attributions[0, 0])) > 16
    np.testing.assert_array_equal(res.attributions[:, 0], res.attributions[:, 2])


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_on_image_cnn_and_returns_the_input_shape(digits, method):
    model, x = digits
    res = explain(model, x[:3], method=method, config=QUICK.get(method))
    assert res.attributions.shape == x[:3].shape and res.attributions.dtype == np.float32
    assert np.isfinite(res.attributions).all() and np.abs(res.attributions).sum() > 0


@pytest.mark.parametrize("method", [m for m, info in METHODS.items() if "tabular" in info.modalities])
def test_every_tabular_method_runs_on_tabular_mlp_and_returns_the_input_shape(cancer, method):
    model, x_train, x = cancer
    config = {**data_reference_overrides(method, x_train, modality="tabular"), **QUICK.get(method, {})}
    res = explain(model, x, method=method, config=config)
    assert res.attributions.shape == x.shape and res.attributions.dtype == np.float32
    assert np.isfinite(res.attributions).all() and np.abs(res.attributions).sum() > 0


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_image_only_methods_are_refused_on_tabular_models(cancer, method):
    model, _, x = cancer
    with pytest.raises(ValueError, match=f"'{method}' does not apply to tabular models"):
        explain(model, x, method=method)


def test_tabular_training_mean_baseline_makes_the_mean_row_attribution_zero(cancer):
    model, x_train, _ = cancer
    overrides = data_reference_overrides("integrated_gradients", x_train, modality="tabular")
    mean_row = np.asarray(overrides["baseline_values"], dtype=np.float32)[None]
    res = explain(model, mean_row, method="integrated_gradients", config=overrides)
    np.testing.assert_allclose(res.attributions, 0.0, atol=1e-6)
    assert res.config["baseline"] == "training_mean"


def test_smoothgrad_with_tiny_noise_equals_signed_saliency_in_raw_tabular_units(cancer):
    # Checks that per-feature noise scaling converts gradients back to raw units correctly.
    model, x_train, x = cancer
    ranges = data_reference_overrides("smoothgrad", x_train, modality="tabular")["feature_ranges"]
    sg = explain(model, x, method="smoothgrad", config={
        "signed": True, "noise_fraction": 1e-7, "nt_samples": 3, "feature_ranges": ranges})
    sal = explain(model, x, method="saliency", config={"signed": True})
    np.testing.assert_allclose(sg.attributions, sal.attributions, rtol=1e-3, atol=1e-7)
    assert sg.config["noise_stdev"] == pytest.approx([1e-7 * r for r in ranges])


def test_smoothgrad_noise_is_a_fraction_of_the_image_input_range():
    config = resolve_config("smoothgrad", {"noise_fraction": 0.2, "input_range": [0.0, 2.0]},
                            modality="image")
    assert config["noise_stdev"] == pytest.approx(0.4)
    assert config["nt_samples"] == 25 and config["nt_type"] == "smoothgrad"


def test_the_full_config_records_every_parameter(digits):
    model, x = digits
    expected = {
        "integrated_gradients": {"n_steps": 50, "integration": "gausslegendre", "baseline": "zeros"},
        "saliency": {"signed": False},
        "smoothgrad": {"nt_samples": 25, "noise_fraction": 0.15, "noise_stdev": 0.15,
                       "nt_type": "smoothgrad", "base": "saliency", "input_range": [0.0, 1.0]},
        "gradcam": {"layer": "features.relu2", "relu_attributions": True,
                    "interpolation": "bilinear", "align_corners": False},
        "occlusion": {"window": [2, 2], "stride": [2, 2], "baseline": "zeros"},
        "kernel_shap": {"n_samples": 200, "feature_mask": "grid", "grid_cells": [4, 4]},
        "lime": {"n_samples": 200, "kernel_width": 0.25, "kernel_distance": "cosine",
                 "interpretable_model": "ridge", "interpretable_model_alpha": 1.0},
        "deeplift": {"eps": 1e-10, "multiply_by_inputs": True, "baseline": "zeros"},
    }
    for method, values in expected.items():
        res = explain(model, x[:1], method=method)
        for key, value in values.items():
            assert res.config[key] == value, (method, key)
        nulls = [k for k, v in res.config.items() if v is None and k != "baseline_values"]
        assert nulls == [], (method, nulls)
        execution = res.config["execution"]
        assert execution["seed"] == 0 and execution["device"] == "cpu" and execution["max_batch"] > 0
        assert "stimuli_per_call" in execution["batching"]
        json.dumps(res.config, allow_nan=False)
        # A stored configuration can be passed back in and resolves to itself.
        again = resolve_config(method, res.config, modality="image")
        assert again == {k: v for k, v in res.config.items() if k != "execution"}


def test_default_config_lists_every_key_of_the_resolved_config():
    for method, info in METHODS.items():
        for modality in info.modalities:
            defaults = default_config(method, modality=modality)
            assert defaults["method"] == method and defaults["modality"] == modality
            if not (method == "smoothgrad" and modality == "tabular"):
                assert resolve_config(method, {}, modality=modality) == defaults


def test_config_hash_is_canonical():
    a = {"method": "saliency", "modality": "image", "signed": True}
    b = {"signed": True, "modality": "image", "method": "saliency"}
    assert config_sha256(a) == config_sha256(b)
    assert config_sha256(a) != config_sha256({**a, "signed": False})
    assert len(config_sha256(a)) == 64


@pytest.mark.parametrize("method", ["smoothgrad", "kernel_shap", "lime"])
def test_seeded_runs_repeat_exactly_and_other_seeds_differ(digits, method):
    model, x = digits
    config = QUICK[method]
    first = explain(model, x[:3], method=method, config=config, seed=7).attributions
    torch.manual_seed(123)  # the caller's global state must not matter
    np.random.seed(123)
    second = explain(model, x[:3], method=method, config=config, seed=7).attributions
    other = explain(model, x[:3], method=method, config=config, seed=8).attributions
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_explain_leaves_the_callers_random_streams_alone(digits):
    model, x = digits
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    explain(model, x[:2], method="smoothgrad", config=QUICK["smoothgrad"], seed=99)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]


def test_batched_integrated_gradients_equal_one_stimulus_at_a_time(digits):
    model, x = digits
    batched = explain(model, x, method="integrated_gradients")
    # max_batch smaller than the steps forces Captum's internal step batching, too.
    chunked = explain(model, x, method="integrated_gradients", max_batch=20)
    singles = np.concatenate([explain(model, x[i:i + 1], method="integrated_gradients").attributions
                              for i in range(len(x))])
    np.testing.assert_allclose(batched.attributions, singles, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(chunked.attributions, singles, rtol=1e-4, atol=1e-6)
    assert batched.config["execution"]["batching"]["stimuli_per_call"] >= len(x)
    assert chunked.config["execution"]["batching"] == {"stimuli_per_call": 1, "internal_batch_size": 20}


def test_integrated_gradients_equal_captums_own_per_row_gradients_in_the_usual_layout(digits):
    # explain() takes gradients of the summed outputs (one autograd root); Captum's default takes
    # one root per row. They agree. The demo CNN's convolutions are narrow: it runs NCHW on CPU.
    from captum.attr import IntegratedGradients
    model, x = digits
    res = explain(model, x, method="integrated_gradients")
    xt = torch.as_tensor(x).requires_grad_(True)
    expected = IntegratedGradients(model.eval()).attribute(
        xt, baselines=torch.zeros_like(xt), target=torch.as_tensor(res.targets), n_steps=50,
        method="gausslegendre")
    np.testing.assert_allclose(res.attributions, expected.detach().numpy(), rtol=1e-4, atol=1e-6)
    assert res.config["execution"]["memory_format"] == "contiguous_format"
    assert res.attributions.flags.c_contiguous  # callers index it as (N, C, H, W)


def test_perturbation_methods_give_the_same_result_in_big_or_small_batches(digits):
    model, x = digits
    big = explain(model, x, method="occlusion").attributions
    small = explain(model, x, method="occlusion", max_batch=3).attributions
    np.testing.assert_allclose(big, small, rtol=1e-4, atol=1e-5)


def test_the_callers_model_is_not_modified(digits):
    model, x = digits
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method in ("deeplift", "guided_backprop", "gradcam", "integrated_gradients"):
        explain(model, x[:2], method=method)
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.is_contiguous() for p in model.parameters())  # layout changed on the copy only
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    model.eval()


def test_predict_returns_classes_and_probabilities_in_batches(digits):
    model, x = digits
    classes, probs = predict(model, x, batch_size=5)
    assert classes.dtype == np.int64 and probs.dtype == np.float32 and probs.shape == (len(x), 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(classes, _logits(model, x).argmax(axis=1))


def test_unknown_method_lists_the_known_ones(digits):
    model, x = digits
    with pytest.raises(ValueError, match=r"Unknown method 'shap'.*integrated_gradients.*lime"):
        explain(model, x, method="shap")


def test_inputs_of_the_wrong_shape_are_refused_with_the_expected_shape(digits):
    model, x = digits
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\).*\[1, 8, 8\].*batch dimension"):
        explain(model, x[0], method="saliency")
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\) images; got shape \[2, 3, 8, 8\]"):
        explain(model, np.zeros((2, 3, 8, 8), np.float32), method="saliency")
    with pytest.raises(ValueError, match="NaN"):
        explain(model, np.full((1, 1, 8, 8), np.nan, np.float32), method="saliency")


def test_a_target_out_of_range_is_refused(digits):
    model, x = digits
    with pytest.raises(ValueError, match=r"Target 10 is out of range: the model has 10 classes"):
        explain(model, x[:2], method="saliency", targets=[1, 10])
    with pytest.raises(ValueError, match="one class index per stimulus"):
        explain(model, x[:2], method="saliency", targets=[1])


def test_bad_configurations_are_refused_with_clear_messages(cancer):
    with pytest.raises(ValueError, match=r"Unknown parameter\(s\) for saliency.*\['n_steps'\]"):
        resolve_config("saliency", {"n_steps": 10}, modality="image")
    with pytest.raises(ValueError, match="'n_steps' must be an integer"):
        resolve_config("integrated_gradients", {"n_steps": 0}, modality="image")
    with pytest.raises(ValueError, match="'nt_type' must be one of"):
        resolve_config("smoothgrad", {"nt_type": "smooth"}, modality="image")
    with pytest.raises(ValueError, match="needs 'baseline_values'"):
        resolve_config("deeplift", {"baseline": "custom"}, modality="image")
    with pytest.raises(ValueError, match="needs 'feature_ranges'"):
        resolve_config("smoothgrad", {}, modality="tabular")
    with pytest.raises(ValueError, match="'relu_attributions' must be true or false"):
        resolve_config("gradcam", {"relu_attributions": "yes"}, modality="image")
    model, _, x = cancer
    with pytest.raises(ValueError, match="do not fit inputs of shape"):
        explain(model, x, method="integrated_gradients",
                config={"baseline": "custom", "baseline_values": [1.0, 2.0]})


def test_an_unknown_gradcam_layer_lists_the_convolutional_layers(digits):
    model, x = digits
    with pytest.raises(ValueError, match=r"'features.conv9'.*\['features.conv1', 'features.conv2'\]"):
        explain(model, x, method="gradcam", config={"layer": "features.conv9"})


def test_a_recorded_config_with_another_seed_is_not_silently_rerun(digits):
    model, x = digits
    res = explain(model, x[:2], method="smoothgrad", config=QUICK["smoothgrad"], seed=3)
    with pytest.raises(ValueError, match="recorded with seed 3"):
        explain(model, x[:2], method="smoothgrad", config=res.config, seed=0)
    again = explain(model, x[:2], method="smoothgrad", config=res.config, seed=3)
    np.testing.assert_array_equal(again.attributions, res.attributions)


def test_an_untrained_architecture_model_works_with_torch_tensors_too():
    model = build_model("image_cnn", input_shape=(3, 16, 16), num_classes=4)
    x = torch.rand(2, 3, 16, 16)
    res = explain(model, x, method="input_x_gradient", device="auto")
    assert res.attributions.shape == (2, 3, 16, 16)
    assert res.config["execution"]["device"] in ("cpu", "cuda")
