"""Seeded, deterministic training of the allowlisted architectures on CPU.

Used for the built-in demo models and for the "data randomization" sanity check (a model trained
on permuted labels, Adebayo et al. 2018). Same inputs and seed, same thread count -> the same
weights, byte for byte (``state_dict_to_bytes``). We seed torch, numpy and Python's ``random``,
shuffle with a seeded ``torch.Generator``, and train in float32 on the CPU. We do not call
``torch.use_deterministic_algorithms``: CPU kernels here are already deterministic and the flag
is process-global (it breaks DeepLift on MaxPool models elsewhere in the process).
"""
from __future__ import annotations

import inspect
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from explainers.architectures import Standardize, build_model, get_architecture

__all__ = [
    "DEMO_SETTINGS",
    "TrainResult",
    "train_demo",
    "train_classifier",
    "train_label_randomized",
]

DEFAULT_EPOCHS = 40
DEFAULT_BATCH_SIZE = 64
DEFAULT_LEARNING_RATE = 3e-3
DEFAULT_WEIGHT_DECAY = 0.0
# Memorizing random labels takes far longer than learning real ones.
DEFAULT_RANDOMIZED_EPOCHS = 150
_STD_FLOOR = 1e-6  # a (near-)constant training feature gets std 1, not a division by ~0

# The built-in demo models: dataset (explainers.demo_data loader) -> training settings. The one
# source of truth: `make demo` trains through train_demo(), which reads them. test_fraction and
# seed describe the held-out split, the same seeded stratified 80/20 split the dataset import
# makes (studyapp.services.datasets SPLIT_SEED, TEST_FRACTION).
DEMO_SETTINGS: dict[str, dict] = {
    "digits": {"architecture": "image_cnn", "epochs": 20, "batch_size": 64,
               "learning_rate": 3e-3, "hyperparameters": {}, "test_fraction": 0.2, "seed": 0},
    "breast_cancer": {"architecture": "tabular_mlp", "epochs": 30, "batch_size": 32,
                      "learning_rate": 1e-3, "hyperparameters": {}, "test_fraction": 0.2,
                      "seed": 0},
}


@dataclass
class TrainResult:
    model: nn.Module  # eval mode, CPU
    config: dict  # every parameter that produced the weights (stored with the model)
    train_accuracy: float
    val_accuracy: float | None
    history: list[dict] = field(default_factory=list)  # per epoch: loss, accuracies


def train_classifier(*, architecture: str, X: np.ndarray, y: np.ndarray, num_classes: int,
                     seed: int = 0, epochs: int = DEFAULT_EPOCHS,
                     batch_size: int = DEFAULT_BATCH_SIZE,
                     learning_rate: float = DEFAULT_LEARNING_RATE,
                     weight_decay: float = DEFAULT_WEIGHT_DECAY,
                     hyperparameters: dict | None = None,
                     X_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
                     ) -> TrainResult:
    """Train ``architecture`` on raw inputs ``X`` (N, *input_shape) and labels ``y`` with Adam.

    For ``tabular_mlp`` the in-model standardization is fitted on ``X`` first, so the model
    takes raw feature values. Validation data, when given, is only evaluated, never trained on.
    """
    return _train(architecture=architecture, X=X, y=y, num_classes=num_classes, seed=seed,
                  epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                  weight_decay=weight_decay, hyperparameters=hyperparameters,
                  X_val=X_val, y_val=y_val, label_randomization=None)


def train_demo(name: str, *, X: np.ndarray, y: np.ndarray, num_classes: int,
               X_val: np.ndarray | None = None, y_val: np.ndarray | None = None) -> TrainResult:
    """Train the built-in demo model for dataset ``name`` with ``DEMO_SETTINGS[name]``, exactly;
    the config records which demo settings were used."""
    if name not in DEMO_SETTINGS:
        raise ValueError(f"No demo settings for '{name}'; known: {sorted(DEMO_SETTINGS)}.")
    settings = {k: v for k, v in DEMO_SETTINGS[name].items() if k != "test_fraction"}
    result = train_classifier(X=X, y=y, num_classes=num_classes, X_val=X_val, y_val=y_val,
                              **settings)
    result.config["demo_settings"] = name
    return result


def train_label_randomized(*, architecture: str, X: np.ndarray, y: np.ndarray, num_classes: int,
                           seed: int = 0, permutation_seed: int | None = None,
                           epochs: int = DEFAULT_RANDOMIZED_EPOCHS,
                           batch_size: int = DEFAULT_BATCH_SIZE,
                           learning_rate: float = DEFAULT_LEARNING_RATE,
                           weight_decay: float = DEFAULT_WEIGHT_DECAY,
                           hyperparameters: dict | None = None,
                           X_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
                           ) -> TrainResult:
    """Train the same way on a seeded permutation of ``y`` (the data randomization check).

    The model has to memorize, so it gets more epochs by default. ``train_accuracy`` is
    measured against the permuted labels it was trained on; ``val_accuracy`` against the true
    ``y_val`` (it should be near chance).
    """
    perm_seed = seed if permutation_seed is None else int(permutation_seed)
    y = _as_labels(y, num_classes, "y")
    permuted = y[np.random.default_rng(perm_seed).permutation(len(y))]
    return _train(architecture=architecture, X=X, y=permuted, num_classes=num_classes,
                  seed=seed, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                  weight_decay=weight_decay, hyperparameters=hyperparameters,
                  X_val=X_val, y_val=y_val,
                  label_randomization={"method": "permutation", "rng": "numpy.default_rng",
                                       "permutation_seed": perm_seed,
                                       "fraction_changed": float(np.mean(permuted != y))})


def _train(*, architecture, X, y, num_classes, seed, epochs, batch_size, learning_rate,
           weight_decay, hyperparameters, X_val, y_val, label_randomization) -> TrainResult:
    arch = get_architecture(architecture)
    X = _as_inputs(X, arch.input_rank, "X")
    y = _as_labels(y, num_classes, "y")
    if len(X) != len(y) or len(X) == 0:
        raise ValueError(f"X and y must be non-empty and the same length; got {len(X)} and {len(y)}.")
    has_val = X_val is not None and y_val is not None
    if has_val:
        X_val = _as_inputs(X_val, arch.input_rank, "X_val")
        y_val = _as_labels(y_val, num_classes, "y_val")
        if X_val.shape[1:] != X.shape[1:] or len(X_val) != len(y_val):
            raise ValueError("X_val / y_val do not match X's input shape or each other's length.")
    if epochs < 1 or batch_size < 1 or learning_rate <= 0:
        raise ValueError("epochs and batch_size must be >= 1 and learning_rate > 0.")

    _seed_everything(seed)
    input_shape = tuple(int(s) for s in X.shape[1:])
    model = build_model(architecture, input_shape=input_shape, num_classes=num_classes,
                        hyperparameters=hyperparameters)
    standardization = _fit_standardization(model, X)

    inputs, targets = torch.from_numpy(X), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(int(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    history: list[dict] = []
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(inputs), generator=generator)
        total, seen = 0.0, 0
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs[batch]), targets[batch])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
            seen += len(batch)
        history.append({"epoch": epoch, "loss": total / seen})
    model.eval()

    train_accuracy = _accuracy(model, X, y)
    val_accuracy = _accuracy(model, X_val, y_val) if has_val else None
    history[-1].update(train_accuracy=train_accuracy, val_accuracy=val_accuracy)
    config = {
        "architecture": architecture,
        "input_shape": list(input_shape),
        "num_classes": int(num_classes),
        "hyperparameters": _resolved_hyperparameters(architecture, hyperparameters),
        "seed": int(seed),
        "epochs": int(epochs),
        "batch_size": int(batch_size),
        "learning_rate": float(learning_rate),
        "weight_decay": float(weight_decay),
        "optimizer": "adam",
        "optimizer_betas": [0.9, 0.999],
        "loss": "cross_entropy",
        "shuffle": "torch.randperm per epoch with torch.Generator seeded by seed",
        "standardization": standardization,
        "n_train": int(len(X)),
        "n_val": int(len(X_val)) if has_val else 0,
        "label_randomization": label_randomization,
        "torch_version": torch.__version__,
        "device": "cpu",
        "dtype": "float32",
    }
    return TrainResult(model=model, config=config, train_accuracy=train_accuracy,
                       val_accuracy=val_accuracy, history=history)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _fit_standardization(model: nn.Module, X: np.ndarray) -> dict | None:
    """Set every Standardize layer's buffers to the training data's mean and std."""
    layers = [m for m in model.modules() if isinstance(m, Standardize)]
    if not layers:
        return None
    flat = X.reshape(len(X), -1).astype(np.float64)
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    std = np.where(std < _STD_FLOOR, 1.0, std)
    with torch.no_grad():
        for layer in layers:
            layer.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
            layer.std.copy_(torch.from_numpy(std.astype(np.float32)))
    return {"fitted_on": "training data", "std_floor": _STD_FLOOR,
            "constant_features_std_set_to": 1.0}


def _accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        predictions = model(torch.from_numpy(X)).argmax(dim=1).numpy()
    return float(np.mean(predictions == y))


def _resolved_hyperparameters(architecture: str, hyperparameters: dict | None) -> dict:
    """The builder's defaults overlaid with the given values: the full set, never implicit."""
    builder = get_architecture(architecture).builder
    resolved = {name: p.default for name, p in inspect.signature(builder).parameters.items()
                if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}
    resolved.update(hyperparameters or {})
    return resolved


def _as_inputs(X, rank: int, name: str) -> np.ndarray:
    X = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    if X.ndim != rank + 1:
        raise ValueError(f"{name} must have shape (N, {'C, H, W' if rank == 3 else 'F'}); got {X.shape}.")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return X


def _as_labels(y, num_classes: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D array of integer class indices; got {y.dtype} {y.shape}.")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} must hold class indices in [0, {num_classes - 1}].")
    return y.astype(np.int64)
