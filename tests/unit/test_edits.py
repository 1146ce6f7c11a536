"""Counterfactual edits, the model's output on them, and candidate selection (explainers.edits)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from explainers import demo_data
from explainers.edits import (EditOutcomes, counterfactual_choose_candidates,
                              counterfactual_predict_edits, evaluate_edits,
                              feature_quantile_edits, grid_occlusion_edits)
from explainers.methods import predict
from explainers.training import train_classifier

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits(digits_cnn):
    model, data = digits_cnn
    return model, data["X"][600:630]


@pytest.fixture(scope="module")
def cancer():
    data = demo_data.load_breast_cancer()
    model = train_classifier(architecture="tabular_mlp", X=data["X"][:400], y=data["y"][:400],
                             num_classes=2, seed=0, epochs=20, batch_size=32,
                             learning_rate=1e-3).model
    return model, data["X"][:400], data["X"][400:430], data["feature_names"]


@pytest.fixture(scope="module")
def digit_outcomes(digits):
    model, X = digits
    batch = grid_occlusion_edits(X, grid=(4, 4), fill="zero")
    return batch, evaluate_edits(model, batch)


def _images(n=3, c=2, h=8, w=8):
    # Strictly positive pixels, so a zero fill changes every pixel of the occluded cell.
    return np.random.default_rng(0).uniform(0.05, 1.0, (n, c, h, w)).astype(np.float32)


def _synthetic_outcomes(flips: np.ndarray, changes_input: np.ndarray | None = None) -> EditOutcomes:
    flips = np.asarray(flips, dtype=bool)
    n, e = flips.shape
    valid = np.ones_like(flips)
    return EditOutcomes(
        original_classes=np.zeros(n, dtype=np.int64),
        original_probabilities=np.tile(np.array([[0.9, 0.1]], dtype=np.float32), (n, 1)),
        classes=flips.astype(np.int64), probabilities=np.full((n, e, 2), 0.5, np.float32),
        changes_prediction=flips, valid=valid,
        changes_input=valid if changes_input is None else np.asarray(changes_input, bool))


# ----------------------------------------------------------------------------- occlusion

def test_each_occlusion_edit_changes_exactly_its_cell_to_the_fill_value():
    x = _images()
    batch = grid_occlusion_edits(x, grid=(4, 4), fill="zero")
    assert batch.edited.shape == (3, 16, 2, 8, 8)
    assert batch.counts.tolist() == [16, 16, 16] and batch.valid.all()
    for i in range(3):
        assert [(p["cell_row"], p["cell_col"]) for p in batch.params[i]] == \
            [(r, c) for r in range(4) for c in range(4)]
        for j, p in enumerate(batch.params[i]):
            top, left, h, w = p["box"]
            assert (top, left, h, w) == (2 * p["cell_row"], 2 * p["cell_col"], 2, 2)
            expected_changed = np.zeros((2, 8, 8), dtype=bool)
            expected_changed[:, top:top + h, left:left + w] = True
            changed = batch.edited[i, j] != x[i]
            np.testing.assert_array_equal(changed, expected_changed)
            assert np.all(batch.edited[i, j][expected_changed] == 0.0)
    assert (batch.changed_elements() == 2 * 2 * 2).all()


def test_mean_fill_is_the_stimulus_mean_and_is_recorded():
    x = _images()
    batch = grid_occlusion_edits(x, grid=2, fill="mean")
    for i in range(3):
        mean = float(x[i].mean(dtype=np.float64))
        for j, p in enumerate(batch.params[i]):
            assert p["fill"] == "mean" and p["fill_value"] == pytest.approx(mean, abs=1e-6)
            top, left, h, w = p["box"]
            np.testing.assert_allclose(batch.edited[i, j, :, top:top + h, left:left + w], mean,
                                       atol=1e-6)
    numeric = grid_occlusion_edits(x, grid=2, fill=0.25)
    assert numeric.params[0][0]["fill_value"] == 0.25 and numeric.params[0][0]["fill"] == "value"


def test_cell_size_and_grid_describe_the_same_edits_and_cells_restrict_them():
    x = _images(c=1, h=8, w=12)
    by_grid = grid_occlusion_edits(x, grid=(2, 3), fill="zero")
    by_size = grid_occlusion_edits(x, cell_size=(4, 4), fill="zero")
    np.testing.assert_array_equal(by_grid.edited, by_size.edited)
    assert by_grid.params == by_size.params
    some = grid_occlusion_edits(x, grid=(2, 3), fill="zero", cells=[(1, 2), (0, 0)])
    assert some.edited.shape[1] == 2
    np.testing.assert_array_equal(some.edited[:, 0], by_grid.edited[:, 5])
    np.testing.assert_array_equal(some.edited[:, 1], by_grid.edited[:, 0])


def test_occlusion_params_and_config_are_json_serializable():
    batch = grid_occlusion_edits(_images(), grid=(4, 4))
    again = json.loads(json.dumps({"params": batch.params, "config": batch.config}))
    assert again["params"][1][5]["box"] == batch.params[1][5]["box"]
    assert again["config"]["grid"] == [4, 4] and again["config"]["cell_size"] == [2, 2]


def test_bad_occlusion_settings_raise_clear_errors():
    x = _images()
    with pytest.raises(ValueError, match="3x3 grid does not divide the 8x8 image"):
        grid_occlusion_edits(x, grid=3)
    with pytest.raises(ValueError, match="does not tile the 8x8 image"):
        grid_occlusion_edits(x, cell_size=(3, 2))
    with pytest.raises(ValueError, match="not both"):
        grid_occlusion_edits(x, grid=2, cell_size=4)
    with pytest.raises(ValueError, match="add a batch dimension"):
        grid_occlusion_edits(x[0])
    with pytest.raises(ValueError, match="shape"):
        grid_occlusion_edits(np.zeros((2, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="fill"):
        grid_occlusion_edits(x, fill="blur")
    with pytest.raises(ValueError, match="fill"):
        grid_occlusion_edits(x, fill=float("nan"))
    with pytest.raises(ValueError, match="outside the 4x4 grid"):
        grid_occlusion_edits(x, cells=[(4, 0)])
    with pytest.raises(ValueError, match="repeat"):
        grid_occlusion_edits(x, cells=[(1, 1), (1, 1)])
    with pytest.raises(ValueError, match="positive integers"):
        grid_occlusion_edits(x, grid=(0, 2))


# ----------------------------------------------------------------------------- feature edits

def test_each_feature_edit_moves_exactly_one_feature_to_the_stated_reference_quantile(cancer):
    _model, X_ref, X, names = cancer
    batch = feature_quantile_edits(X, X_reference=X_ref, feature_names=names)
    assert batch.kind == "feature_quantile" and batch.edited.shape[1] <= 6 * 3
    for i in range(len(X)):
        assert batch.counts[i] == len(batch.params[i]) > 0
        for j, p in enumerate(batch.params[i]):
            f = p["feature"]
            changed = np.flatnonzero(batch.edited[i, j] != X[i])
            assert changed.tolist() == [f]
            expected = np.float32(np.quantile(X_ref[:, f].astype(np.float64), p["quantile"]))
            assert batch.edited[i, j, f] == expected == np.float32(p["to_value"])
            assert p["from_value"] == float(X[i, f]) and p["feature_name"] == names[f]
            assert p["quantile"] in (0.1, 0.5, 0.9)
            assert 0.0 <= p["from_rank"] <= 1.0
        # Padding slots are unedited copies and are marked invalid.
        for j in range(batch.counts[i], batch.edited.shape[1]):
            assert not batch.valid[i, j]
            np.testing.assert_array_equal(batch.edited[i, j], X[i])
    json.dumps({"params": batch.params, "config": batch.config})


def test_a_feature_edit_that_would_not_change_the_value_meaningfully_is_skipped():
    ref = np.stack([np.arange(101, dtype=np.float32), np.array([0.0] * 60 + [1.0] * 41,
                                                               dtype=np.float32)], axis=1)
    # Feature 0 sits at its reference median; feature 1 is binary, so its 0.1 and 0.5
    # quantiles are both 0 (the row's own value) and only 0.9 -> 1 is a real edit.
    x = np.array([[50.0, 0.0], [50.5, 0.0]], dtype=np.float32)
    batch = feature_quantile_edits(x, X_reference=ref, quantiles=(0.1, 0.5, 0.9))
    moves = [[(p["feature"], p["quantile"]) for p in row] for row in batch.params]
    assert moves[0] == [(0, 0.1), (0, 0.9), (1, 0.9)]
    # 0.5 away from the median is under 5% of the reference std (about 29): also skipped.
    assert moves[1] == [(0, 0.1), (0, 0.9), (1, 0.9)]
    strict = feature_quantile_edits(x, X_reference=ref, quantiles=(0.1, 0.5, 0.9), min_change=0)
    assert (0, 0.5) in [(p["feature"], p["quantile"]) for p in strict.params[1]]


def test_ties_between_quantiles_of_a_discrete_feature_give_one_edit():
    ref = np.array([[0.0]] * 5 + [[1.0]] * 95, dtype=np.float32)
    batch = feature_quantile_edits(np.array([[0.0]], dtype=np.float32), X_reference=ref,
                                   quantiles=(0.5, 0.9))
    assert [(p["quantile"], p["to_value"]) for p in batch.params[0]] == [(0.5, 1.0)]


def test_features_can_be_chosen_by_index_or_name(cancer):
    _model, X_ref, X, names = cancer
    by_index = feature_quantile_edits(X[:5], X_reference=X_ref, features=[3, 0])
    by_name = feature_quantile_edits(X[:5], X_reference=X_ref, features=[names[3], names[0]],
                                     feature_names=names)
    assert {p["feature"] for row in by_index.params for p in row} <= {0, 3}
    np.testing.assert_array_equal(by_index.edited, by_name.edited)


def test_bad_feature_edit_settings_raise_clear_errors(cancer):
    _model, X_ref, X, names = cancer
    with pytest.raises(ValueError, match="X_reference has 5 features but inputs have 6"):
        feature_quantile_edits(X, X_reference=X_ref[:, :5])
    with pytest.raises(ValueError, match="quantiles"):
        feature_quantile_edits(X, X_reference=X_ref, quantiles=(0.5, 1.5))
    with pytest.raises(ValueError, match="Unknown feature 'height'"):
        feature_quantile_edits(X, X_reference=X_ref, features=["height"], feature_names=names)
    with pytest.raises(ValueError, match="not an index"):
        feature_quantile_edits(X, X_reference=X_ref, features=[6])
    with pytest.raises(ValueError, match="add a batch dimension"):
        feature_quantile_edits(X[0], X_reference=X_ref)
    with pytest.raises(ValueError, match="feature_names has 2 names"):
        feature_quantile_edits(X, X_reference=X_ref, feature_names=["a", "b"])


# ----------------------------------------------------------------------------- model outputs

def test_evaluate_edits_equals_evaluating_each_edit_on_its_own(digits, digit_outcomes):
    model, X = digits
    batch, out = digit_outcomes
    orig_classes, orig_probs = predict(model, X)
    np.testing.assert_array_equal(out.original_classes, orig_classes)
    np.testing.assert_allclose(out.original_probabilities, orig_probs, atol=1e-6)
    for i in range(0, len(X), 3):
        for j in range(0, batch.edited.shape[1], 2):
            cls, probs = predict(model, batch.edited[i, j][None])
            assert out.classes[i, j] == cls[0]
            np.testing.assert_allclose(out.probabilities[i, j], probs[0], atol=1e-6)


def test_changes_prediction_marks_exactly_the_edits_whose_class_differs(digit_outcomes):
    _batch, out = digit_outcomes
    expected = out.classes != out.original_classes[:, None]
    np.testing.assert_array_equal(out.changes_prediction, expected)
    assert out.changes_prediction.any() and not out.changes_prediction.all()


def test_tabular_outcomes_leave_padding_unevaluated(cancer):
    model, X_ref, X, _names = cancer
    x = X[:6].copy()
    x[0] = np.median(X_ref, axis=0)  # at every median: the 0.5 edits are skipped
    batch = feature_quantile_edits(x, X_reference=X_ref)
    out = evaluate_edits(model, batch, batch_size=7)
    assert batch.counts[0] < batch.edited.shape[1]
    pad = ~batch.valid
    assert (out.classes[pad] == -1).all() and np.isnan(out.probabilities[pad]).all()
    assert not out.changes_prediction[pad].any()
    flat, stim, slot = batch.flat()
    cls, _ = predict(model, flat)
    np.testing.assert_array_equal(out.classes[stim, slot], cls)
    with pytest.raises(ValueError, match="EditBatch"):
        evaluate_edits(model, batch.edited)


# ----------------------------------------------------------------------------- selection

def test_choose_candidates_have_exactly_one_edit_that_flips_the_prediction(digit_outcomes):
    _batch, out = digit_outcomes
    sets = counterfactual_choose_candidates(out, n_candidates=4, seed=3)
    assert len(sets) == out.n_stimuli and any(s is not None for s in sets)
    for i, s in enumerate(sets):
        flips = out.changes_prediction[i] & out.changes_input[i]
        stays = ~out.changes_prediction[i] & out.changes_input[i]
        if s is None:
            assert flips.sum() == 0 or stays.sum() < 3
            continue
        assert s.stimulus == i and len(s.edits) == 4 and len(set(s.edits)) == 4
        assert [bool(out.changes_prediction[i, e]) for e in s.edits] == list(s.changes_prediction)
        assert sum(s.changes_prediction) == 1
        assert s.changes_prediction[s.correct_position]
        assert all(out.changes_input[i, e] for e in s.edits)
        json.dumps(s.to_dict())


def test_choose_candidates_are_seeded_and_keyed_per_stimulus(digit_outcomes):
    _batch, out = digit_outcomes
    a = counterfactual_choose_candidates(out, seed=1)
    assert a == counterfactual_choose_candidates(out, seed=1)
    assert a != counterfactual_choose_candidates(out, seed=2)
    # With stable keys, a stimulus gets the same set whatever else is in the batch.
    keys = list(range(100, 100 + out.n_stimuli))
    full = counterfactual_choose_candidates(out, seed=1, stimulus_keys=keys)
    rows = [i for i, s in enumerate(full) if s is not None][:3]
    sub = EditOutcomes(*(getattr(out, f)[rows] for f in (
        "original_classes", "original_probabilities", "classes", "probabilities",
        "changes_prediction", "valid", "changes_input")))
    part = counterfactual_choose_candidates(sub, seed=1, stimulus_keys=[keys[r] for r in rows])
    assert [s.edits for s in part] == [full[r].edits for r in rows]


def test_choose_candidates_are_none_when_one_flip_plus_distractors_is_impossible():
    out = _synthetic_outcomes(np.array([
        [False, False, False, False],  # nothing flips
        [True, True, True, False],  # only one non-flipping distractor
        [True, False, False, False],  # exactly possible
    ]))
    sets = counterfactual_choose_candidates(out, n_candidates=4)
    assert sets[0] is None and sets[1] is None
    assert sorted(sets[2].edits) == [0, 1, 2, 3] and sets[2].edits[sets[2].correct_position] == 0
    # An edit that changes nothing, or one excluded by the caller, is never a candidate.
    no_op = _synthetic_outcomes(out.changes_prediction,
                                changes_input=np.array([[True] * 4] * 2 + [[True, True, True, False]]))
    assert counterfactual_choose_candidates(no_op, n_candidates=4)[2] is None
    exclude = np.zeros((3, 4), dtype=bool)
    exclude[2, 1] = True
    assert counterfactual_choose_candidates(out, n_candidates=4, exclude=exclude)[2] is None
    assert counterfactual_choose_candidates(out, n_candidates=3, exclude=exclude)[2].edits is not None
    with pytest.raises(ValueError, match="n_candidates"):
        counterfactual_choose_candidates(out, n_candidates=1)
    with pytest.raises(ValueError, match="exclude"):
        counterfactual_choose_candidates(out, exclude=np.zeros((3, 3), dtype=bool))
    with pytest.raises(ValueError, match="stimulus_keys"):
        counterfactual_choose_candidates(out, stimulus_keys=[0, 1])


def test_predict_edits_mix_flipping_and_non_flipping_edits_as_asked():
    flips = np.zeros((400, 6), dtype=bool)
    flips[:, :3] = True  # every stimulus has 3 flipping and 3 non-flipping edits
    out = _synthetic_outcomes(flips)
    two = counterfactual_predict_edits(out, per_stimulus=2, flip_fraction=0.5, seed=0)
    assert all(sorted(s.changes_prediction) == [False, True] for s in two)
    one = counterfactual_predict_edits(out, per_stimulus=1, flip_fraction=0.3, seed=0)
    share = np.mean([s.changes_prediction[0] for s in one])
    assert abs(share - 0.3) < 3 * np.sqrt(0.3 * 0.7 / 400)
    assert one == counterfactual_predict_edits(out, per_stimulus=1, flip_fraction=0.3, seed=0)
    assert one != counterfactual_predict_edits(out, per_stimulus=1, flip_fraction=0.3, seed=1)
    for s in one:
        assert [bool(out.changes_prediction[s.stimulus, e]) for e in s.edits] == \
            list(s.changes_prediction)
    never = counterfactual_predict_edits(_synthetic_outcomes(np.zeros((5, 4), bool)),
                                         per_stimulus=2, flip_fraction=0.5)
    assert never == [None] * 5
    with pytest.raises(ValueError, match="flip_fraction"):
        counterfactual_predict_edits(out, flip_fraction=1.5)


def test_predict_edits_on_real_digit_occlusions_are_consistent(digit_outcomes):
    _batch, out = digit_outcomes
    chosen = counterfactual_predict_edits(out, per_stimulus=2, flip_fraction=0.5, seed=0)
    usable = [s for s in chosen if s is not None]
    assert usable
    for s in usable:
        assert sum(s.changes_prediction) == 1 and len(set(s.edits)) == 2
