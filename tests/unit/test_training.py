"""Seeded training of the demo models, the label-randomized model, and the bundled demo data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from explainers import demo_data
from explainers.safe_loading import load_model, state_dict_to_bytes
from explainers.training import (
    DEMO_SETTINGS,
    train_classifier,
    train_label_randomized,
)

torch.set_num_threads(1)


LOADERS = {"digits": demo_data.load_digits, "breast_cancer": demo_data.load_breast_cancer}


def _split(name: str):
    data = LOADERS[name]()
    settings = dict(DEMO_SETTINGS[name])
    train, test = demo_data.train_test_split_indices(
        len(data["y"]), test_fraction=settings.pop("test_fraction"), seed=settings["seed"],
        stratify=data["y"])
    return data, settings, train, test


@pytest.fixture(scope="module")
def demo_models():
    """Both demo models trained once with their shipped settings, evaluated on held-out data."""
    results = {}
    for name in DEMO_SETTINGS:
        data, settings, train, test = _split(name)
        results[name] = (data, train_classifier(
            X=data["X"][train], y=data["y"][train], num_classes=len(data["class_names"]),
            X_val=data["X"][test], y_val=data["y"][test], **settings))
    return results


def _small_breast_cancer_run(**overrides):
    data = demo_data.load_breast_cancer()
    kwargs = dict(architecture="tabular_mlp", X=data["X"], y=data["y"], num_classes=2, seed=7,
                  epochs=3, batch_size=32, learning_rate=1e-3)
    kwargs.update(overrides)
    return train_classifier(**kwargs)


def _small_digits_run(seed: int):
    data = demo_data.load_digits()
    return train_classifier(architecture="image_cnn", X=data["X"][:300], y=data["y"][:300],
                            num_classes=10, seed=seed, epochs=2, batch_size=32)


# ---------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_safetensors_weights():
    assert state_dict_to_bytes(_small_breast_cancer_run().model) == \
        state_dict_to_bytes(_small_breast_cancer_run().model)
    assert state_dict_to_bytes(_small_digits_run(seed=4).model) == \
        state_dict_to_bytes(_small_digits_run(seed=4).model)


def test_different_seeds_give_different_weights():
    assert state_dict_to_bytes(_small_breast_cancer_run(seed=1).model) != \
        state_dict_to_bytes(_small_breast_cancer_run(seed=2).model)


def test_same_seed_gives_identical_history():
    assert _small_breast_cancer_run().history == _small_breast_cancer_run().history


# ---------------------------------------------------------------------------- demo models


def test_demo_digits_model_reaches_ninety_percent_held_out_accuracy(demo_models):
    _, result = demo_models["digits"]
    assert result.val_accuracy >= 0.9
    assert result.train_accuracy >= 0.9


def test_demo_breast_cancer_model_reaches_ninety_percent_held_out_accuracy(demo_models):
    _, result = demo_models["breast_cancer"]
    assert result.val_accuracy >= 0.9
    assert result.train_accuracy >= 0.9


def test_demo_models_round_trip_through_safe_loading(demo_models):
    for name, (data, result) in demo_models.items():
        loaded = load_model(architecture=result.config["architecture"],
                            weights=state_dict_to_bytes(result.model),
                            input_shape=result.config["input_shape"],
                            class_names=data["class_names"],
                            hyperparameters=result.config["hyperparameters"])
        x = torch.from_numpy(data["X"][:16])
        with torch.no_grad():
            assert torch.equal(loaded(x), result.model(x)), name


def test_trained_model_is_returned_in_eval_mode(demo_models):
    assert all(not result.model.training for _, result in demo_models.values())


def test_config_records_every_training_parameter(demo_models):
    _, result = demo_models["breast_cancer"]
    settings = DEMO_SETTINGS["breast_cancer"]
    config = result.config
    assert config["architecture"] == "tabular_mlp"
    assert config["input_shape"] == [6]
    assert config["num_classes"] == 2
    assert config["hyperparameters"] == {"hidden": 64}  # defaults spelled out, never implicit
    for key in ("seed", "epochs", "batch_size", "learning_rate"):
        assert config[key] == settings[key]
    assert config["optimizer"] == "adam"
    assert config["weight_decay"] == 0.0
    assert config["label_randomization"] is None
    assert config["n_train"] + config["n_val"] == 569
    assert len(result.history) == settings["epochs"]


def test_tabular_standardization_is_fitted_on_the_training_data(demo_models):
    data, result = demo_models["breast_cancer"]
    _, _, train, _ = _split("breast_cancer")
    standardize = result.model.features.standardize
    X = data["X"][train].astype(np.float64)
    np.testing.assert_allclose(standardize.mean.numpy(), X.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(standardize.std.numpy(), X.std(axis=0), rtol=1e-5)


def test_constant_feature_gets_unit_std_instead_of_dividing_by_zero():
    data = demo_data.load_breast_cancer()
    X = data["X"].copy()
    X[:, 2] = 0.1
    result = train_classifier(architecture="tabular_mlp", X=X, y=data["y"], num_classes=2, epochs=1)
    assert result.model.features.standardize.std[2].item() == 1.0
    with torch.no_grad():
        assert torch.isfinite(result.model(torch.from_numpy(X[:5]))).all()


def test_training_rejects_labels_outside_the_classes():
    data = demo_data.load_breast_cancer()
    with pytest.raises(ValueError, match="class indices"):
        train_classifier(architecture="tabular_mlp", X=data["X"], y=data["y"] + 1, num_classes=2)


def test_training_rejects_inputs_of_the_wrong_rank():
    data = demo_data.load_digits()
    with pytest.raises(ValueError, match="must have shape"):
        train_classifier(architecture="tabular_mlp", X=data["X"], y=data["y"], num_classes=10)


# ---------------------------------------------------------------------------- label randomization


def test_label_randomized_model_memorizes_permuted_labels_and_loses_real_signal(demo_models):
    data, settings, train, test = _split("breast_cancer")
    result = train_label_randomized(
        architecture="tabular_mlp", X=data["X"][train], y=data["y"][train], num_classes=2,
        X_val=data["X"][test], y_val=data["y"][test], seed=0)
    real = demo_models["breast_cancer"][1]
    assert result.train_accuracy >= 0.9  # memorized the permuted labels
    assert result.val_accuracy < real.val_accuracy - 0.2  # but learned nothing true
    randomization = result.config["label_randomization"]
    assert randomization["method"] == "permutation"
    assert randomization["permutation_seed"] == 0
    assert randomization["fraction_changed"] > 0.3


def test_label_randomized_training_is_deterministic():
    data = demo_data.load_breast_cancer()
    runs = [train_label_randomized(architecture="tabular_mlp", X=data["X"], y=data["y"],
                                   num_classes=2, seed=5, epochs=2) for _ in range(2)]
    assert state_dict_to_bytes(runs[0].model) == state_dict_to_bytes(runs[1].model)


# ---------------------------------------------------------------------------- demo data


def test_digits_are_one_channel_images_scaled_to_unit_range():
    data = demo_data.load_digits()
    assert data["X"].shape == (1797, 1, 8, 8)
    assert data["X"].dtype == np.float32
    assert data["X"].min() == 0.0 and data["X"].max() == 1.0
    assert data["y"].dtype == np.int64
    assert data["class_names"] == [str(d) for d in range(10)]


def test_breast_cancer_has_six_readable_features_in_raw_units():
    data = demo_data.load_breast_cancer()
    assert data["X"].shape == (569, 6)
    assert data["X"].dtype == np.float32
    assert data["class_names"] == ["malignant", "benign"]
    assert data["feature_names"][0] == "Mean radius"
    assert data["feature_units"][0] == "px"
    assert len(data["feature_descriptions"]) == len(data["feature_units"]) == 6
    assert all(d.strip() for d in data["feature_descriptions"])
    # raw units, not standardized: mean radius is in the teens of pixels
    assert 10 < data["X"][:, 0].mean() < 20


def test_breast_cancer_accepts_chosen_features_and_rejects_unknown_ones():
    data = demo_data.load_breast_cancer(features=["worst area", "radius error"])
    assert data["feature_names"] == ["Worst area", "Radius (standard error)"]
    assert data["feature_units"] == ["px²", "px"]
    with pytest.raises(ValueError, match="Unknown breast cancer feature"):
        demo_data.load_breast_cancer(features=["tumour colour"])


def test_split_is_deterministic_disjoint_and_stratified():
    y = demo_data.load_breast_cancer()["y"]
    train, test = demo_data.train_test_split_indices(len(y), test_fraction=0.25, seed=3, stratify=y)
    again = demo_data.train_test_split_indices(len(y), test_fraction=0.25, seed=3, stratify=y)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert not set(train) & set(test)
    assert len(train) + len(test) == len(y)
    assert abs(y[test].mean() - y.mean()) < 0.02
    other = demo_data.train_test_split_indices(len(y), test_fraction=0.25, seed=4, stratify=y)
    assert not np.array_equal(test, other[1])
