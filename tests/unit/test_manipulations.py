"""Manipulated and placebo explanations: which layers change, which values move, and records."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from explainers import demo_data
from explainers.architectures import build_model
from explainers.manipulations import (
    invert,
    label_randomized_model,
    other_input,
    random_matched,
    randomization_layers,
    randomize_cascading,
    randomize_independent,
    sobel_edges,
)

torch.set_num_threads(1)

IMAGE_LAYERS = ["head.fc2", "features.fc1", "features.conv2", "features.conv1"]
TABULAR_LAYERS = ["head.fc3", "features.fc2", "features.fc1"]


def _image_model():
    torch.manual_seed(123)
    return build_model("image_cnn", input_shape=(1, 8, 8), num_classes=10)


def _tabular_model():
    torch.manual_seed(321)
    model = build_model("tabular_mlp", input_shape=(6,), num_classes=2)
    with torch.no_grad():  # fitted-looking standardization, not the all-0 / all-1 defaults
        model.features.standardize.mean.copy_(torch.arange(6, dtype=torch.float32) + 0.5)
        model.features.standardize.std.copy_(torch.arange(6, dtype=torch.float32) + 2.0)
    return model


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed_layers(before: dict, model) -> set[str]:
    after = model.state_dict()
    return {k.rsplit(".", 1)[0] for k in before if not torch.equal(before[k], after[k])}


# ------------------------------------------------------------------- model randomization


def test_randomization_layers_run_from_the_logits_down_and_skip_buffer_only_modules():
    assert randomization_layers(_image_model()) == IMAGE_LAYERS
    assert randomization_layers(_tabular_model()) == TABULAR_LAYERS  # no features.standardize


@pytest.mark.parametrize("down_to", IMAGE_LAYERS)
def test_cascading_randomization_changes_exactly_the_layers_down_to_the_named_one(down_to):
    model = _image_model()
    before = _snapshot(model)
    randomized, record = randomize_cascading(model, down_to=down_to, seed=0)

    expected = IMAGE_LAYERS[:IMAGE_LAYERS.index(down_to) + 1]
    assert _changed_layers(before, randomized) == set(expected)
    for key, value in randomized.state_dict().items():
        if key.rsplit(".", 1)[0] not in expected:
            assert torch.equal(value, before[key]), key  # bit-identical
    assert _changed_layers(before, model) == set()  # the caller's model is untouched
    assert randomized is not model
    assert record["layers_randomized"] == expected
    assert record["layers_kept"] == IMAGE_LAYERS[len(expected):]
    assert record["down_to"] == down_to and record["mode"] == "cascading"


def test_cascading_randomization_of_all_layers_leaves_the_standardize_buffers_alone():
    model = _tabular_model()
    before = _snapshot(model)
    randomized, record = randomize_cascading(model, down_to=None, seed=4)

    assert _changed_layers(before, randomized) == set(TABULAR_LAYERS)
    assert torch.equal(randomized.features.standardize.mean, before["features.standardize.mean"])
    assert torch.equal(randomized.features.standardize.std, before["features.standardize.std"])
    assert record["layers_randomized"] == TABULAR_LAYERS
    assert record["buffers_only_modules_untouched"] == ["features.standardize"]
    assert _changed_layers(before, model) == set()


def test_independent_randomization_changes_only_the_one_layer():
    model = _image_model()
    before = _snapshot(model)
    randomized, record = randomize_independent(model, layer="features.conv2", seed=0)

    assert _changed_layers(before, randomized) == {"features.conv2"}
    assert record["mode"] == "independent" and record["layers_randomized"] == ["features.conv2"]
    assert _changed_layers(before, model) == set()


def test_a_layer_gets_the_same_new_weights_at_every_cascading_step_and_independently():
    model = _image_model()
    top, _ = randomize_cascading(model, down_to="head.fc2", seed=9)
    deeper, _ = randomize_cascading(model, down_to="features.conv2", seed=9)
    alone, _ = randomize_independent(model, layer="head.fc2", seed=9)
    assert torch.equal(top.head.fc2.weight, deeper.head.fc2.weight)
    assert torch.equal(top.head.fc2.weight, alone.head.fc2.weight)


def test_randomization_is_seeded_and_leaves_the_global_random_stream_alone():
    model = _image_model()
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    a, record_a = randomize_cascading(model, down_to=None, seed=1)
    assert torch.equal(torch.rand(3), expected_next)
    b, record_b = randomize_cascading(model, down_to=None, seed=1)
    c, _ = randomize_cascading(model, down_to=None, seed=2)

    for (name, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(),
                                            c.named_parameters()):
        assert torch.equal(pa, pb), name
        assert not torch.equal(pa, pc), name
    assert record_a == record_b


def test_randomization_record_is_json_and_names_seeds_and_init_scheme():
    _, record = randomize_cascading(_image_model(), down_to="features.fc1", seed=3)
    assert json.loads(json.dumps(record)) == record
    assert record["seed"] == 3
    assert set(record["layer_seeds"]) == {"head.fc2", "features.fc1"}
    assert "reset_parameters" in record["init_scheme"]
    assert record["init_per_layer"]["features.fc1"] == "Linear.reset_parameters"


def test_randomizing_an_unknown_or_buffer_only_layer_is_refused_with_the_layer_list():
    with pytest.raises(ValueError, match="head.fc3"):
        randomize_cascading(_tabular_model(), down_to="features.standardize", seed=0)
    with pytest.raises(ValueError, match="not a parameterized layer"):
        randomize_independent(_image_model(), layer="features.relu1", seed=0)
    with pytest.raises(ValueError, match="seed"):
        randomize_cascading(_image_model(), down_to=None, seed=-1)


def test_label_randomized_model_records_its_permutation_seed():
    data = demo_data.load_breast_cancer()
    model, record = label_randomized_model(
        architecture="tabular_mlp", X=data["X"][:120], y=data["y"][:120], num_classes=2,
        seed=0, permutation_seed=11, epochs=2, batch_size=32)
    assert isinstance(model, torch.nn.Module)
    assert record["permutation_seed"] == 11
    assert record["training"]["label_randomization"]["permutation_seed"] == 11
    assert record["training"]["epochs"] == 2
    assert 0 < record["label_randomization"]["fraction_changed"] <= 1
    json.dumps(record)


# -------------------------------------------------------------------------- map inversion


def test_inverting_a_signed_map_negates_it():
    maps = np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)
    inverted, record = invert(maps, signed=True)
    np.testing.assert_array_equal(inverted, -maps)
    assert record["signed"] is True


def test_inverting_an_unsigned_map_reverses_its_ranks_and_keeps_its_histogram():
    maps = np.abs(np.random.default_rng(1).normal(size=(4, 3, 6, 5))).astype(np.float32)
    inverted, record = invert(maps, signed=False)

    for real, inv in zip(maps, inverted):
        np.testing.assert_array_equal(np.sort(inv, axis=None), np.sort(real, axis=None))
        assert np.argmax(inv) == np.argmin(real) and np.argmin(inv) == np.argmax(real)
        assert stats.spearmanr(real.ravel(), inv.ravel()).statistic == pytest.approx(-1.0)
    assert inverted.min() >= 0
    assert record["signed"] is False


def test_inverting_an_unsigned_map_with_negative_values_is_refused():
    with pytest.raises(ValueError, match="signed=True"):
        invert(np.array([[1.0, -2.0, 3.0]]), signed=False)


# ---------------------------------------------------------------------- random matched maps


def _smooth_maps(n: int = 3) -> np.ndarray:
    """Blurry blobs (spatially autocorrelated) with many exact zeros."""
    from scipy import ndimage
    rng = np.random.default_rng(7)
    raw = ndimage.gaussian_filter(rng.normal(size=(n, 1, 16, 16)), sigma=(0, 0, 2, 2))
    return np.clip(raw, 0, None).astype(np.float32)


def _digit_like(n: int = 12, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Inputs with a blank background and input x gradient maps (zero where the input is 0)."""
    from scipy import ndimage
    rng = np.random.default_rng(seed)
    x = np.clip(ndimage.gaussian_filter(rng.normal(size=(n, 1, 12, 12)), sigma=(0, 0, 1.5, 1.5)) * 4, 0, 1)
    grad = ndimage.gaussian_filter(rng.normal(size=x.shape), sigma=(0, 0, 1, 1)) + 0.2
    return (x * grad).astype(np.float32), x.astype(np.float32)


def test_random_matched_maps_take_another_stimulus_values():
    maps = _smooth_maps(6)
    fake, record = random_matched(maps, seed=0)
    assert fake.shape == maps.shape and fake.dtype == maps.dtype
    assert record["algorithm"] == "surrogate" and record["input_relation"] == "none"
    for i, (f, donor) in enumerate(zip(fake, record["donors"])):
        assert donor != i
        np.testing.assert_allclose(np.sort(f, axis=None), np.sort(maps[donor], axis=None), rtol=1e-6)
    assert json.loads(json.dumps(record)) == record


@pytest.mark.parametrize("n", [12, 40])  # 40: each fold has 32 others, enough to calibrate
def test_a_stimulus_placebo_does_not_depend_on_its_own_real_map(n):
    maps, x = _digit_like(n)
    changed = maps.copy()
    rng = np.random.default_rng(1)
    changed[3] = -2.5 * maps[3] * rng.random(maps[3].shape)  # other values, signs and positions
    a, record_a = random_matched(maps, seed=0, inputs=x)
    b, record_b = random_matched(changed, seed=0, inputs=x)
    assert record_a["input_relation"] == record_b["input_relation"] == "times_input"
    assert all(fold["calibrated"] is (n == 40) for fold in record_a["fold_models"])
    np.testing.assert_array_equal(a[3], b[3])
    assert not np.array_equal(a, b)  # its real map still feeds the other stimuli's placebos
    smooth = _smooth_maps(6)
    other = smooth.copy()
    other[2] = smooth[2][..., ::-1, :] * 3
    np.testing.assert_array_equal(random_matched(smooth, seed=4)[0][2], random_matched(other, seed=4)[0][2])


def test_random_matched_maps_of_input_times_gradient_methods_are_zero_where_the_input_is():
    maps, x = _digit_like()
    fake, record = random_matched(maps, seed=2, inputs=x)
    assert record["input_relation"] == "times_input"
    assert np.any(x == 0) and not np.any(fake[x == 0])
    assert np.all(fake[x != 0] != 0)


def test_random_matched_maps_are_seeded():
    maps = _smooth_maps(6)
    a, record_a = random_matched(maps, seed=3)
    b, record_b = random_matched(maps, seed=3)
    c, _ = random_matched(maps, seed=4)
    np.testing.assert_array_equal(a, b)
    assert record_a == record_b
    assert not np.array_equal(a, c)


def _lag1(maps: np.ndarray) -> float:
    m = maps[:, 0]
    pairs = [(m[:, :, :-1], m[:, :, 1:]), (m[:, :-1, :], m[:, 1:, :])]
    return float(np.mean([np.corrcoef(np.concatenate([u[i].ravel() for u, _ in pairs]),
                                      np.concatenate([v[i].ravel() for _, v in pairs]))[0, 1]
                          for i in range(len(m))]))


@pytest.mark.parametrize("n", [16, 60])
def test_random_matched_maps_match_the_real_maps_smoothness(n):
    smooth = _smooth_maps(n)
    white = np.abs(np.random.default_rng(2).normal(size=(n, 1, 16, 16))).astype(np.float32)
    fake_smooth, record = random_matched(smooth, seed=0)
    fake_white, _ = random_matched(white, seed=0)
    # With 16 maps each fold has 12-13 others: too few to calibrate, the donors' texture is
    # used as it is; with 60, 48 others: calibrated to their average power spectrum.
    assert all(fold["calibrated"] is (n == 60) for fold in record["fold_models"])
    assert _lag1(fake_smooth) > _lag1(fake_white) + 0.5
    # Lag 1 of one 16x16 map has a sampling sd of about 0.045.
    assert _lag1(fake_smooth) == pytest.approx(_lag1(smooth), abs=0.05)
    assert _lag1(fake_white) == pytest.approx(_lag1(white), abs=0.05)


def test_random_matched_takes_a_smoothness_sigma_only_in_the_legacy_algorithm():
    _, record = random_matched(_smooth_maps(2), seed=0, smoothness_sigma=1.5, algorithm="legacy")
    assert record["sigma_source"] == "given"
    assert record["smoothness_sigma"] == [1.5, 1.5]
    with pytest.raises(ValueError, match="legacy"):
        random_matched(_smooth_maps(2), seed=0, smoothness_sigma=1.5)


def test_random_matched_of_a_single_stimulus_falls_back_to_the_legacy_algorithm_and_says_so():
    fake, record = random_matched(_smooth_maps(1), seed=0)
    assert record["algorithm"] == "legacy" and "single stimulus" in record["fallback"]
    assert fake.shape == (1, 1, 16, 16)


def test_random_matched_tabular_maps_permute_another_stimulus_values_across_features():
    maps = np.random.default_rng(0).normal(size=(5, 6))
    fake, record = random_matched(maps, seed=1)
    for i, (f, donor) in enumerate(zip(fake, record["donors"])):
        assert donor != i
        np.testing.assert_array_equal(np.sort(f), np.sort(maps[donor]))
    assert record["modality"] == "tabular"


# ------------------------------------------------------------------------------- baselines


def test_sobel_edges_have_the_inputs_shape_and_ignore_flat_regions():
    x = np.zeros((2, 3, 8, 9), dtype=np.float32)
    x[0, :, :, 4:] = 1.0  # a vertical edge in the first image; the second is blank
    edges, record = sobel_edges(x)
    assert edges.shape == x.shape
    assert np.all(edges[1] == 0)
    assert edges[0, :, :, 3:5].min() > 0 and np.all(edges[0, :, :, :2] == 0)
    assert record["model_independent"] is True
    with pytest.raises(ValueError, match="images"):
        sobel_edges(np.zeros((2, 6)))


def test_other_input_donors_share_the_predicted_class_and_differ_from_the_recipient():
    predicted = np.array([0, 1, 0, 2, 1, 0, 2, 2, 1, 0])
    maps = np.arange(10, dtype=np.float32)[:, None, None, None] * np.ones((10, 1, 2, 2))
    donated, donors, record = other_input(maps, predicted=predicted, seed=0)

    assert np.all(donors != np.arange(10))
    np.testing.assert_array_equal(predicted[donors], predicted)
    np.testing.assert_array_equal(donated, maps[donors])
    assert record["donors"] == donors.tolist() and record["fallback_stimuli"] == []
    again, donors_again, _ = other_input(maps, predicted=predicted, seed=0)
    np.testing.assert_array_equal(donors_again, donors)


def test_other_input_can_take_donors_of_another_class():
    predicted = np.array([0, 1, 0, 2, 1, 0, 2, 2, 1, 0])
    _, donors, record = other_input(np.ones((10, 3)), predicted=predicted, seed=1,
                                    same_class=False)
    assert np.all(predicted[donors] != predicted)
    assert record["same_class"] is False


def test_other_input_falls_back_to_any_other_stimulus_for_a_class_of_one():
    predicted = np.array([0, 0, 1])
    _, donors, record = other_input(np.ones((3, 4)), predicted=predicted, seed=0)
    assert donors[2] in (0, 1)
    assert record["fallback_stimuli"] == [2]
    with pytest.raises(ValueError, match="at least two"):
        other_input(np.ones((1, 4)), predicted=[0], seed=0)


def _times_input_sample(seed: int, n: int = 12):
    """Sparse 'digits' and maps that are a gradient field times the input (zero off the ink)."""
    rng = np.random.default_rng(seed)
    x = (rng.random((n, 1, 6, 6)) < 0.4) * rng.uniform(0.2, 1.0, (n, 1, 6, 6))
    return x, x * rng.normal(size=(n, 1, 6, 6))


def test_other_input_fills_the_donors_blank_positions_with_the_gradients_of_its_pool_at_that_position():
    x, maps = _times_input_sample(0)
    predicted = np.array([0, 1] * 6)
    donated, donors, record = other_input(maps, predicted=predicted, seed=3, inputs=x)
    ratio = np.where(x != 0, maps / np.where(x != 0, x, 1), np.nan)

    assert record["input_relation"] == "times_input"
    assert not np.any(donated[x == 0])
    for i, (donor, used, sources) in enumerate(zip(donors, record["field_donors"], record["field_sources"])):
        assert used[0] == donor and i not in used
        assert all(predicted[j] == predicted[i] for j in used)
        pool = (predicted == predicted[i]) & (np.arange(12) != i)
        # Every inked position of i that some stimulus of the pool has ink at takes the
        # multiplier of one of the stimuli used, at that very position.
        covered = (x[pool] != 0).any(axis=0)
        for pos in zip(*np.nonzero((x[i] != 0) & covered)):
            candidates = [x[i][pos] * ratio[j][pos] for j in used if x[j][pos] != 0]
            assert candidates and np.isclose(donated[i][pos], candidates, rtol=1e-5).any()
        uncovered = ((x[i] != 0) & ~covered).sum() / (x[i] != 0).sum()
        assert sources["nearest_position"] == pytest.approx(uncovered, abs=1e-6)
        assert sources["donor"] + sources["pool"] + sources["nearest_position"] == pytest.approx(1, abs=1e-5)


def test_other_input_ignores_the_stimulus_own_map():
    x, maps = _times_input_sample(1)
    predicted = np.array([0, 1, 2] * 4)
    changed = maps.copy()
    changed[4] = x[4] * np.random.default_rng(9).normal(size=x[4].shape)  # another map, same input
    a, donors_a, _ = other_input(maps, predicted=predicted, seed=0, inputs=x)
    b, donors_b, _ = other_input(changed, predicted=predicted, seed=0, inputs=x)
    np.testing.assert_array_equal(donors_a, donors_b)
    np.testing.assert_array_equal(a[4], b[4])
