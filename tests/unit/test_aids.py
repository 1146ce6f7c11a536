"""Aids that are not attributions: natural exemplars and OOD warnings (explainers.aids)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.covariance import LedoitWolf
from torch import nn

from explainers import demo_data
from explainers.aids import build_exemplar_index, fit_ood_detector, penultimate_features
from explainers.edits import grid_occlusion_edits
from explainers.methods import predict
from explainers.training import train_classifier

torch.set_num_threads(1)


def _split(data):
    train, test = demo_data.train_test_split_indices(len(data["y"]), test_fraction=0.4, seed=0,
                                                     stratify=data["y"])
    # Held-out half for calibrating the OOD threshold, the other half to measure false alarms.
    return train, test[::2], test[1::2]


@pytest.fixture(scope="module")
def digits():
    data = demo_data.load_digits()
    train, cal, held = _split(data)
    model = train_classifier(architecture="image_cnn", X=data["X"][train], y=data["y"][train],
                             num_classes=10, seed=0, epochs=8).model
    return {"model": model, "X": data["X"], "y": data["y"], "train": train, "cal": cal,
            "held": held}


@pytest.fixture(scope="module")
def cancer():
    data = demo_data.load_breast_cancer()
    train, cal, held = _split(data)
    model = train_classifier(architecture="tabular_mlp", X=data["X"][train], y=data["y"][train],
                             num_classes=2, seed=0, epochs=30, batch_size=32,
                             learning_rate=1e-3).model
    return {"model": model, "X": data["X"], "y": data["y"], "train": train, "cal": cal,
            "held": held, "feature_names": data["feature_names"]}


@pytest.fixture(scope="module")
def digit_index(digits):
    d = digits
    return build_exemplar_index(d["model"], d["X"][d["train"]], d["y"][d["train"]])


def _brute_nearest(train_feats, train_owner, query_feats, classes, k, *, metric="euclidean",
                   exclude=None):
    """Sorted distances and index sets by direct computation over every training item."""
    result = []
    for i, (f, c) in enumerate(zip(query_feats, classes)):
        members = np.flatnonzero(train_owner == c)
        if exclude is not None:
            members = members[~np.isin(members, exclude[i])]
        d = cdist(f[None].astype(np.float64), train_feats[members].astype(np.float64),
                  metric=metric)[0]
        order = np.argsort(d, kind="stable")
        result.append((members[order[:k]], d[order], members))
    return result


# ----------------------------------------------------------------------------- features

def test_penultimate_features_are_the_features_module_output_in_any_batch_size(digits):
    x = digits["X"][:37]
    with torch.no_grad():
        expected = digits["model"].features(torch.from_numpy(x)).numpy()
    small_batches = penultimate_features(digits["model"], x, batch_size=5)
    assert small_batches.shape == (37, 64) and small_batches.dtype == np.float32
    np.testing.assert_allclose(small_batches, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(penultimate_features(digits["model"], x), expected,
                               rtol=1e-5, atol=1e-6)


def test_a_model_without_a_features_module_is_rejected_with_a_clear_error():
    bare = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="no `features` submodule"):
        penultimate_features(bare, np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="no `features` submodule"):
        build_exemplar_index(bare, np.zeros((3, 4), dtype=np.float32), np.array([0, 1, 0]))


def test_inputs_of_the_wrong_shape_are_rejected(digits, digit_index):
    with pytest.raises(ValueError, match="shape"):
        penultimate_features(digits["model"], np.zeros((2, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        digit_index.nearest(np.zeros((1, 8, 8), dtype=np.float32), k=3, predicted_classes=[0])
    with pytest.raises(ValueError, match="batch_size"):
        penultimate_features(digits["model"], digits["X"][:2], batch_size=0)


# ----------------------------------------------------------------------------- exemplars

def test_exemplars_are_training_items_of_the_predicted_class(digits, digit_index):
    queries = digits["X"][digits["held"][:60]]
    predicted, _ = predict(digits["model"], queries)
    idx = digit_index.nearest(queries, k=5, predicted_classes=predicted)
    assert idx.shape == (60, 5) and idx.dtype == np.int64
    y_train = digits["y"][digits["train"]]
    assert np.all(y_train[idx] == predicted[:, None])
    assert all(len(set(row)) == 5 for row in idx.tolist())


def test_exemplars_are_the_true_nearest_neighbours_in_feature_space(digits, digit_index):
    queries = digits["X"][digits["held"][:40]]
    predicted, _ = predict(digits["model"], queries)
    k = 6
    idx, dist = digit_index.nearest(queries, k=k, predicted_classes=predicted,
                                    return_distances=True)
    train_feats = penultimate_features(digits["model"], digits["X"][digits["train"]])
    query_feats = penultimate_features(digits["model"], queries)
    brute = _brute_nearest(train_feats, digits["y"][digits["train"]], query_feats, predicted, k)
    for row, (expected_idx, sorted_d, _members) in enumerate(brute):
        np.testing.assert_allclose(dist[row], sorted_d[:k], rtol=1e-6, atol=1e-6)
        # The returned items really are at the returned distances...
        own = np.linalg.norm(train_feats[idx[row]].astype(np.float64)
                             - query_feats[row].astype(np.float64), axis=1)
        np.testing.assert_allclose(own, dist[row], rtol=1e-6, atol=1e-6)
        # ...and, when the k-th and (k+1)-th distances are not tied, exactly the brute-force set.
        if sorted_d[k] - sorted_d[k - 1] > 1e-6:
            assert set(idx[row].tolist()) == set(expected_idx.tolist())


def test_cosine_exemplars_are_the_nearest_by_cosine_distance(digits):
    d = digits
    index = build_exemplar_index(d["model"], d["X"][d["train"]], d["y"][d["train"]],
                                 metric="cosine")
    queries = d["X"][d["held"][:20]]
    predicted, _ = predict(d["model"], queries)
    _idx, dist = index.nearest(queries, k=4, predicted_classes=predicted, return_distances=True)
    train_feats = penultimate_features(d["model"], d["X"][d["train"]])
    brute = _brute_nearest(train_feats, d["y"][d["train"]],
                           penultimate_features(d["model"], queries), predicted, 4,
                           metric="cosine")
    for row, (_e, sorted_d, _m) in enumerate(brute):
        np.testing.assert_allclose(dist[row], sorted_d[:4], rtol=1e-6, atol=1e-7)
    assert index.to_dict()["metric"] == "cosine"


def test_a_training_item_never_gets_itself_or_an_exact_copy_as_an_exemplar(digits):
    d = digits
    X_train, y_train = d["X"][d["train"]], d["y"][d["train"]]
    # Append byte-identical copies of the first three training items (same labels).
    X_dup = np.concatenate([X_train, X_train[:3]])
    y_dup = np.concatenate([y_train, y_train[:3]])
    index = build_exemplar_index(d["model"], X_dup, y_dup)
    queries = X_train[:25]
    predicted, _ = predict(d["model"], queries)
    k = 5
    idx, dist = index.nearest(queries, k=k, predicted_classes=predicted, return_distances=True)
    n = len(X_train)
    copies = {0: n, 1: n + 1, 2: n + 2}
    for row in range(25):
        assert row not in idx[row]
        if row in copies:
            assert copies[row] not in idx[row]
        assert not any(np.array_equal(X_dup[j], queries[row]) for j in idx[row])
    # Apart from the exclusion, they are the brute-force nearest neighbours.
    exclude = [[r] + ([copies[r]] if r in copies else []) for r in range(25)]
    brute = _brute_nearest(penultimate_features(d["model"], X_dup), y_dup,
                           penultimate_features(d["model"], queries), predicted, k,
                           exclude=exclude)
    for row, (_e, sorted_d, _m) in enumerate(brute):
        np.testing.assert_allclose(dist[row], sorted_d[:k], rtol=1e-6, atol=1e-6)


def test_misclassified_items_get_exemplars_of_the_models_class_and_true_labels_are_refused(
        digits, digit_index):
    queries = digits["X"][digits["held"]]
    truth = digits["y"][digits["held"]]
    predicted, _ = predict(digits["model"], queries)
    wrong = np.flatnonzero(predicted != truth)
    assert wrong.size > 0, "the test needs at least one misclassified held-out digit"
    idx = digit_index.nearest(queries[wrong], k=3, predicted_classes=predicted[wrong])
    y_train = digits["y"][digits["train"]]
    assert np.all(y_train[idx] == predicted[wrong][:, None])
    assert np.all(y_train[idx] != truth[wrong][:, None])
    with pytest.raises(ValueError, match="model's own predictions.*leak"):
        digit_index.nearest(queries[wrong], k=3, predicted_classes=truth[wrong])
    # A deliberate placebo arm (exemplars of another class) has to say so explicitly.
    other = digit_index.nearest(queries[wrong], k=3, predicted_classes=truth[wrong],
                                check_predictions=False)
    assert np.all(y_train[other] == truth[wrong][:, None])


def test_asking_for_more_exemplars_than_the_class_has_raises(digits, digit_index):
    query = digits["X"][digits["held"][:1]]
    predicted, _ = predict(digits["model"], query)
    size = digit_index.class_sizes()[int(predicted[0])]
    with pytest.raises(ValueError, match=f"only {size} training item.*smaller k"):
        digit_index.nearest(query, k=size + 1, predicted_classes=predicted)
    # A training item cannot be its own exemplar, so its class offers one item fewer.
    small_X = digits["X"][digits["train"][:40]]
    small_pred, _ = predict(digits["model"], small_X)
    small = build_exemplar_index(digits["model"], small_X, small_pred, membership="label")
    c = int(small_pred[0])
    n_c = small.class_sizes()[c]
    assert small.nearest(small_X[:1], k=n_c - 1, predicted_classes=small_pred[:1]).shape == (1, n_c - 1)
    with pytest.raises(ValueError, match="duplicates of the query"):
        small.nearest(small_X[:1], k=n_c, predicted_classes=small_pred[:1])
    with pytest.raises(ValueError, match="positive integer"):
        digit_index.nearest(query, k=0, predicted_classes=predicted)


def test_agreement_membership_uses_only_training_items_the_model_gets_right(digits):
    d = digits
    index = build_exemplar_index(d["model"], d["X"][d["train"]], d["y"][d["train"]],
                                 membership="agreement")
    queries = d["X"][d["held"][:30]]
    predicted, _ = predict(d["model"], queries)
    idx = index.nearest(queries, k=4, predicted_classes=predicted)
    assert np.all(index.y_train[idx] == predicted[:, None])
    assert np.all(index.train_predictions[idx] == predicted[:, None])
    record = index.to_dict()
    assert record["membership"] == "agreement" and "prediction" in record["class_shown"]
    json.dumps(record)
    with pytest.raises(ValueError, match="membership"):
        build_exemplar_index(d["model"], d["X"][:10], d["y"][:10], membership="truth")


def test_exemplar_search_is_deterministic(digits, digit_index):
    d = digits
    again = build_exemplar_index(d["model"], d["X"][d["train"]], d["y"][d["train"]])
    queries = d["X"][d["held"][:30]]
    predicted, _ = predict(d["model"], queries)
    np.testing.assert_array_equal(digit_index.nearest(queries, k=5, predicted_classes=predicted),
                                  again.nearest(queries, k=5, predicted_classes=predicted))


def test_tabular_exemplars_work_in_the_mlps_feature_space(cancer):
    c = cancer
    index = build_exemplar_index(c["model"], c["X"][c["train"]], c["y"][c["train"]])
    queries = c["X"][c["held"][:15]]
    predicted, _ = predict(c["model"], queries)
    idx = index.nearest(queries, k=3, predicted_classes=predicted)
    assert np.all(c["y"][c["train"]][idx] == predicted[:, None])


# ----------------------------------------------------------------------------- OOD warnings

def _false_alarm_tolerance(n_cal: int, n_eval: int, rate: float = 0.05) -> float:
    # The threshold and the held-out rate are both binomial estimates: 3 standard errors of
    # their difference, plus the conformal rule's 1/(n+1) slack.
    return 3 * math.sqrt(rate * (1 - rate) * (1 / n_cal + 1 / n_eval)) + 1 / (n_cal + 1)


@pytest.mark.parametrize("method", ["mahalanobis", "energy"])
@pytest.mark.parametrize("dataset", ["digits", "cancer"])
def test_ood_warning_flags_about_five_percent_of_held_out_in_distribution_inputs(
        method, dataset, request):
    d = request.getfixturevalue(dataset)
    det = fit_ood_detector(d["model"], d["X"][d["train"]], d["y"][d["train"]], method=method,
                           X_calibration=d["X"][d["cal"]], quantile=0.95)
    rate = float(det.flag(d["X"][d["held"]]).mean())
    assert abs(rate - 0.05) <= _false_alarm_tolerance(len(d["cal"]), len(d["held"])), rate
    assert det.calibration_flag_rate <= 0.05


@pytest.mark.parametrize("method, noise_min, inverted_min", [("mahalanobis", 0.8, 0.9),
                                                             ("energy", 0.4, 0.1)])
def test_ood_warning_flags_most_noise_images_and_inverted_digits(digits, method, noise_min,
                                                                 inverted_min):
    d = digits
    det = fit_ood_detector(d["model"], d["X"][d["train"]], d["y"][d["train"]], method=method,
                           X_calibration=d["X"][d["cal"]])
    noise = np.random.default_rng(0).uniform(0, 1, (300, 1, 8, 8)).astype(np.float32)
    inverted = 1.0 - d["X"][d["held"]]
    in_dist = det.flag(d["X"][d["held"]]).mean()
    assert det.flag(noise).mean() >= max(noise_min, 4 * in_dist)
    assert det.flag(inverted).mean() >= inverted_min


def test_mahalanobis_flags_tabular_rows_far_outside_the_feature_ranges(cancer):
    c = cancer
    det = fit_ood_detector(c["model"], c["X"][c["train"]], c["y"][c["train"]],
                           method="mahalanobis", X_calibration=c["X"][c["cal"]])
    X_train = c["X"][c["train"]]
    lo, hi = X_train.min(axis=0), X_train.max(axis=0)
    span = hi - lo
    rows = c["X"][c["held"]]
    far_up, far_down = rows + 3 * span, rows - 3 * span
    # Only one feature far out of range per row, cycling through the features.
    one = rows.copy()
    j = np.arange(len(rows)) % rows.shape[1]
    one[np.arange(len(rows)), j] = hi[j] + 3 * span[j]
    for far in (far_up, far_down, one):
        assert det.flag(far).mean() >= 0.9


def test_energy_score_is_minus_temperature_times_logsumexp_of_scaled_logits(digits):
    d = digits
    det = fit_ood_detector(d["model"], method="energy", X_calibration=d["X"][d["cal"]],
                           temperature=2.0)
    x = d["X"][:20]
    with torch.no_grad():
        logits = d["model"](torch.from_numpy(x)).double()
    expected = (-2.0 * torch.logsumexp(logits / 2.0, dim=1)).numpy()
    np.testing.assert_allclose(det.score(x), expected, rtol=1e-5, atol=1e-5)


def test_mahalanobis_score_is_the_distance_to_the_nearest_class_mean_under_shared_covariance(
        cancer):
    c = cancer
    X_fit, y_fit = c["X"][c["train"]], c["y"][c["train"]]
    det = fit_ood_detector(c["model"], X_fit, y_fit, X_calibration=c["X"][c["cal"]])
    feats = penultimate_features(c["model"], X_fit).astype(np.float64)
    means = np.stack([feats[y_fit == k].mean(axis=0) for k in (0, 1)])
    precision = LedoitWolf(assume_centered=True).fit(feats - means[y_fit]).get_precision()
    q = penultimate_features(c["model"], c["X"][c["held"][:10]]).astype(np.float64)
    expected = cdist(q, means, metric="mahalanobis", VI=precision).min(axis=1)
    np.testing.assert_allclose(det.score(c["X"][c["held"][:10]]), expected, rtol=1e-6)


def test_threshold_is_the_conformal_quantile_of_calibration_scores(digits):
    d = digits
    det = fit_ood_detector(d["model"], d["X"][d["train"]], d["y"][d["train"]],
                           X_calibration=d["X"][d["cal"]], quantile=0.9)
    scores = np.sort(det.score(d["X"][d["cal"]]))
    n = len(scores)
    assert det.threshold == pytest.approx(scores[math.ceil((n + 1) * 0.9) - 1])
    # n - ceil((n+1)q) of the n calibration scores lie above it: just under 1 - q.
    assert 0.1 - 2 / n <= np.mean(scores > det.threshold) <= 0.1


def test_detector_record_is_json_and_names_method_quantile_threshold_and_sizes(digits):
    d = digits
    for method in ("mahalanobis", "energy"):
        det = fit_ood_detector(d["model"], d["X"][d["train"]], d["y"][d["train"]],
                               method=method, X_calibration=d["X"][d["cal"]])
        record = json.loads(json.dumps(det.to_dict()))
        assert record["method"] == method and record["quantile"] == 0.95
        assert record["threshold"] == det.threshold
        assert record["n_calibration"] == len(d["cal"])
        assert record["n_fit"] == (len(d["train"]) if method == "mahalanobis" else 0)
        assert record["temperature"] == (1.0 if method == "energy" else None)
        assert record["covariance"] == ("ledoit_wolf" if method == "mahalanobis" else None)


def test_ood_scores_work_on_edited_inputs(digits):
    d = digits
    det = fit_ood_detector(d["model"], d["X"][d["train"]], d["y"][d["train"]],
                           X_calibration=d["X"][d["cal"]])
    batch = grid_occlusion_edits(d["X"][d["held"][:5]], grid=(2, 2), fill="zero")
    flat, stimulus, _edit = batch.flat()
    scores = det.score(flat)
    assert scores.shape == (20,) and np.isfinite(scores).all()
    assert det.flag(flat).shape == (20,)


def test_energy_needs_no_features_module_but_mahalanobis_does():
    torch.manual_seed(0)
    bare = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    X = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    det = fit_ood_detector(bare, method="energy", X_calibration=X)
    assert det.score(X[:3]).shape == (3,)
    with pytest.raises(ValueError, match="no `features` submodule"):
        fit_ood_detector(bare, X, np.zeros(40, dtype=np.int64), X_calibration=X)


def test_bad_detector_settings_raise_clear_errors(digits):
    d = digits
    X_fit, y_fit, X_cal = d["X"][d["train"]], d["y"][d["train"]], d["X"][d["cal"]]
    with pytest.raises(ValueError, match="quantile"):
        fit_ood_detector(d["model"], X_fit, y_fit, X_calibration=X_cal, quantile=1.0)
    with pytest.raises(ValueError, match="at least 19 calibration"):
        fit_ood_detector(d["model"], X_fit, y_fit, X_calibration=X_cal[:18])
    assert fit_ood_detector(d["model"], X_fit, y_fit, X_calibration=X_cal[:19]).threshold > 0
    with pytest.raises(ValueError, match="Unknown OOD method"):
        fit_ood_detector(d["model"], X_fit, y_fit, method="odin", X_calibration=X_cal)
    with pytest.raises(ValueError, match="needs X_fit and y_fit"):
        fit_ood_detector(d["model"], method="mahalanobis", X_calibration=X_cal)
    with pytest.raises(ValueError, match="temperature"):
        fit_ood_detector(d["model"], method="energy", X_calibration=X_cal, temperature=0)
    with pytest.raises(ValueError, match="X_calibration.*shape"):
        fit_ood_detector(d["model"], X_fit, y_fit, X_calibration=X_cal[:, 0])
    with pytest.raises(ValueError, match="y_fit"):
        fit_ood_detector(d["model"], X_fit, y_fit[:-1], X_calibration=X_cal)
    with pytest.raises(ValueError, match="calibration inputs are also in X_fit"):
        fit_ood_detector(d["model"], X_fit, y_fit, X_calibration=X_fit[:100])
    with pytest.raises(ValueError, match="covariance"):
        fit_ood_detector(d["model"], X_fit, y_fit, X_calibration=X_cal, covariance="mcd")
