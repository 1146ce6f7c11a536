"""Aids that are not attributions: natural exemplars and out-of-distribution (OOD) warnings.

These are the baselines an explanation has to beat. A trivial natural-exemplar baseline helped
people more than feature visualizations, and OOD detection has been argued to serve trust and
debugging better than explanations (Elton 2021), so a study needs them as arms of their own.

Public API::

    penultimate_features(model, inputs, *, device=None, batch_size=1024) -> (N, D) float32
    build_exemplar_index(model, X_train, y_train, *, metric="euclidean", membership="label",
                         device=None, batch_size=1024) -> ExemplarIndex
    ExemplarIndex.nearest(inputs, *, k, predicted_classes, return_distances=False)
    fit_ood_detector(model, X_fit=None, y_fit=None, *, method="mahalanobis", X_calibration,
                     quantile=0.95, temperature=1.0, covariance="ledoit_wolf", device=None,
                     batch_size=1024) -> OODDetector   (.score, .flag, .threshold, .to_dict)

Both work on the model's penultimate representation ``model.features(x)`` (the architectures in
``explainers.architectures`` and ``explainers.resnet`` end ``features`` there; ``model.head``
maps it to logits). Everything runs on a private copy of the model: the caller's model is never
mutated, and later changes to it do not change a built index or a fitted detector.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.covariance import EmpiricalCovariance, LedoitWolf
from sklearn.neighbors import NearestNeighbors
from torch import nn

from explainers.methods.models import (as_float_tensor, inspect_model, private_copy,
                                       resolve_device)

__all__ = [
    "EXEMPLAR_MEMBERSHIPS",
    "EXEMPLAR_METRICS",
    "OOD_COVARIANCES",
    "OOD_METHODS",
    "ExemplarIndex",
    "OODDetector",
    "build_exemplar_index",
    "fit_ood_detector",
    "penultimate_features",
]

EXEMPLAR_METRICS = ("euclidean", "cosine")
# Which training items count as "exemplars of class c":
#   label      - items whose (true) training label is c;
#   prediction - items the model predicts as c (whatever their label);
#   agreement  - items labelled c that the model also predicts as c (unambiguous exemplars).
EXEMPLAR_MEMBERSHIPS = ("label", "prediction", "agreement")
OOD_METHODS = ("mahalanobis", "energy")
OOD_COVARIANCES = {"ledoit_wolf": LedoitWolf, "empirical": EmpiricalCovariance}


# ----------------------------------------------------------------------------- features

def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    return batch_size


def _check_has_features(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    if not isinstance(getattr(model, "features", None), nn.Module):
        raise ValueError(
            f"{type(model).__name__} has no `features` submodule, so its penultimate "
            "representation is unknown. Exemplars and Mahalanobis OOD scores need a model whose "
            "`features(x)` gives that representation and `head(...)` the logits (every "
            "built-in architecture does); use method='energy' for an OOD score from logits only.")


class _Net:
    """A private, eval-mode, frozen copy of the model on one device, with batched passes."""

    def __init__(self, model: nn.Module, device, batch_size: int) -> None:
        self.device = resolve_device(device)
        self.batch_size = _check_batch_size(batch_size)
        self.net = private_copy(model, self.device)
        self.num_classes: int | None = None

    def check(self, inputs, name: str = "inputs") -> torch.Tensor:
        try:
            x = as_float_tensor(inputs)
            info = inspect_model(self.net, x)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        self.num_classes = info.num_classes
        return x

    def run(self, x: torch.Tensor, *, features: bool, logits: bool
            ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Penultimate features (N, D) and/or logits (N, K), float32 on the CPU, no grad."""
        feats, outs = [], []
        has_head = isinstance(getattr(self.net, "head", None), nn.Module)
        with torch.no_grad():
            for start in range(0, x.shape[0], self.batch_size):
                xb = x[start:start + self.batch_size].to(self.device)
                if features:
                    f = self.net.features(xb)
                    feats.append(f.reshape(f.shape[0], -1).float().cpu())
                    if logits:
                        out = self.net.head(f) if has_head else self.net(xb)
                        outs.append(out.float().cpu())
                elif logits:
                    outs.append(self.net(xb).float().cpu())
        return (torch.cat(feats).numpy() if features else None,
                torch.cat(outs).numpy() if logits else None)


def penultimate_features(model: nn.Module, inputs: np.ndarray | torch.Tensor, *,
                         device: str | None = None, batch_size: int = 1024) -> np.ndarray:
    """The model's penultimate representation ``model.features(x)``, (N, D) float32.

    Batched, without gradients, on a private copy of the model. Raises ValueError for a model
    without a ``features`` submodule or inputs of the wrong shape.
    """
    _check_has_features(model)
    net = _Net(model, device, batch_size)
    feats, _ = net.run(net.check(inputs), features=True, logits=False)
    return feats


def _predicted_from_logits(logits: np.ndarray) -> np.ndarray:
    # Same rule as explainers.methods.predict (argmax of the softmax), so ties break alike.
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    return probs.argmax(axis=1).astype(np.int64)


def _check_labels(y, n: int, num_classes: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name} must hold one class index per input ({n}); got shape {list(y.shape)}.")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integer class indices; got dtype {y.dtype}.")
    y = y.astype(np.int64)
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.size:
        raise ValueError(f"{name} holds class {int(bad[0])}, but the model has {num_classes} "
                         f"classes (0 to {num_classes - 1}).")
    return y


# ----------------------------------------------------------------------------- exemplars

@dataclass(eq=False)
class ExemplarIndex:
    """Nearest training items per class in the model's penultimate-feature space.

    Leakage: the class whose exemplars are shown is the MODEL'S PREDICTION for the query, never
    its true label. ``nearest`` checks that ``predicted_classes`` are the model's own
    predictions, so a true label cannot slip in by mistake (it would tell participants the
    answer on exactly the items the model gets wrong).

    ``metric`` is "euclidean" (default) or "cosine" distance between feature vectors, computed
    exactly (scikit-learn ``NearestNeighbors(algorithm="brute")`` in float64, one index per
    class). Exact duplicates of a query among the training inputs (the query itself when it is
    a training item, or a byte-identical copy) are never returned; near-duplicates are.
    """

    X_train: np.ndarray  # (N_train, *input_shape) float32, what exemplar indices point into
    y_train: np.ndarray  # (N_train,) labels as given
    train_predictions: np.ndarray  # (N_train,) the model's predictions on X_train
    metric: str
    membership: str
    class_members: dict[int, np.ndarray]  # class -> sorted training indices
    _net: _Net = field(repr=False)
    _indexes: dict[int, NearestNeighbors] = field(repr=False)
    _duplicates: dict[bytes, np.ndarray] = field(repr=False)

    def class_sizes(self) -> dict[int, int]:
        return {c: int(len(m)) for c, m in self.class_members.items()}

    def to_dict(self) -> dict:
        return {
            "aid": "natural_exemplars",
            "space": "penultimate features (model.features)",
            "metric": self.metric,
            "exact": True,
            "search": "sklearn.neighbors.NearestNeighbors(algorithm='brute') per class, float64",
            "class_shown": "the model's prediction for the query (never its true label)",
            "membership": self.membership,
            "excludes": "exact duplicates of the query among the training inputs",
            "n_train": int(len(self.X_train)),
            "class_sizes": {str(c): n for c, n in self.class_sizes().items()},
        }

    def nearest(self, inputs: np.ndarray | torch.Tensor, *, k: int,
                predicted_classes: np.ndarray, return_distances: bool = False,
                check_predictions: bool = True
                ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Indices (N, k) into ``X_train`` of the k nearest items of each query's predicted
        class, nearest first (equal distances in training-index order); with
        ``return_distances`` also their distances (N, k), float64.

        ``check_predictions=False`` skips the check that ``predicted_classes`` are the model's
        predictions: only for a deliberate placebo arm (exemplars of another class), recorded
        as such by the caller.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer; got {k!r}.")
        k = int(k)
        x = self._net.check(inputs)
        if tuple(x.shape[1:]) != tuple(self.X_train.shape[1:]):
            raise ValueError(f"inputs have shape {list(x.shape[1:])} per item but the index was "
                             f"built on {list(self.X_train.shape[1:])}.")
        feats, logits = self._net.run(x, features=True, logits=True)
        classes = _check_labels(predicted_classes, len(x), logits.shape[1], "predicted_classes")
        model_says = _predicted_from_logits(logits)
        wrong = np.flatnonzero(classes != model_says)
        if wrong.size and check_predictions:
            i = int(wrong[0])
            raise ValueError(
                f"predicted_classes must be the model's own predictions: item {i} was given "
                f"class {int(classes[i])} but the model predicts {int(model_says[i])} "
                f"({wrong.size} item(s) differ). Exemplars show the predicted class; passing "
                "true labels would leak the answer.")
        raw = x.numpy()
        dup_lists = [self._duplicates.get(raw[i].tobytes(), _EMPTY) for i in range(len(raw))]

        out_idx = np.empty((len(x), k), dtype=np.int64)
        out_dist = np.empty((len(x), k), dtype=np.float64)
        for c in np.unique(classes):
            c = int(c)
            rows = np.flatnonzero(classes == c)
            members = self.class_members.get(c, _EMPTY)
            dups = [np.intersect1d(dup_lists[i], members) for i in rows]
            extra = max(len(d) for d in dups)
            if len(members) - extra < k:
                own = f", {extra} of them duplicates of the query" if extra else ""
                raise ValueError(
                    f"k={k} exemplars were asked for class {c}, but it has only "
                    f"{len(members)} training item(s){own} (membership={self.membership!r}). "
                    "Choose a smaller k.")
            dist, pos = self._indexes[c].kneighbors(feats[rows].astype(np.float64),
                                                    n_neighbors=k + extra)
            # kneighbors does not promise an order among equal distances: make it the training
            # index, so results are reproducible everywhere.
            cand = members[pos]
            order = np.lexsort((cand, dist), axis=1)
            cand = np.take_along_axis(cand, order, axis=1)
            dist = np.take_along_axis(dist, order, axis=1)
            for r, row in enumerate(rows):
                keep = ~np.isin(cand[r], dups[r])
                out_idx[row] = cand[r][keep][:k]
                out_dist[row] = dist[r][keep][:k]
        return (out_idx, out_dist) if return_distances else out_idx


_EMPTY = np.empty(0, dtype=np.int64)


def build_exemplar_index(model: nn.Module, X_train: np.ndarray, y_train: np.ndarray, *,
                         metric: str = "euclidean", membership: str = "label",
                         device: str | None = None, batch_size: int = 1024) -> ExemplarIndex:
    """Index the training inputs by class in the model's penultimate-feature space."""
    _check_has_features(model)
    if metric not in EXEMPLAR_METRICS:
        raise ValueError(f"Unknown exemplar metric {metric!r}; choose one of {list(EXEMPLAR_METRICS)}.")
    if membership not in EXEMPLAR_MEMBERSHIPS:
        raise ValueError(f"Unknown membership {membership!r}; choose one of {list(EXEMPLAR_MEMBERSHIPS)}.")
    net = _Net(model, device, batch_size)
    x = net.check(X_train, "X_train")
    feats, logits = net.run(x, features=True, logits=True)
    y = _check_labels(y_train, len(x), logits.shape[1], "y_train")
    preds = _predicted_from_logits(logits)
    if membership == "label":
        owner = y
    elif membership == "prediction":
        owner = preds
    else:
        owner = np.where(y == preds, y, -1)
    feats64 = feats.astype(np.float64)
    members, indexes = {}, {}
    for c in range(logits.shape[1]):
        idx = np.flatnonzero(owner == c)
        members[c] = idx
        if idx.size:
            indexes[c] = NearestNeighbors(algorithm="brute", metric=metric).fit(feats64[idx])
    X = x.numpy()
    groups: dict[bytes, list[int]] = {}
    for i in range(len(X)):
        groups.setdefault(X[i].tobytes(), []).append(i)
    duplicates = {key: np.asarray(v, dtype=np.int64) for key, v in groups.items()}
    return ExemplarIndex(X_train=X, y_train=y, train_predictions=preds, metric=metric,
                         membership=membership, class_members=members, _net=net,
                         _indexes=indexes, _duplicates=duplicates)


# ----------------------------------------------------------------------------- OOD warnings

@dataclass(eq=False)
class OODDetector:
    """An OOD score per input (higher = more unusual) and a threshold above which to warn.

    - ``mahalanobis`` (Lee et al. 2018): distance of the penultimate features to the nearest
      class mean under one covariance shared by all classes, estimated from the within-class
      residuals of the fit data (Ledoit-Wolf shrinkage by default: ReLU features have dead units
      and a singular sample covariance). Score = min over classes of sqrt((f - mu_c)^T P (f -
      mu_c)), with P the estimator's precision (scikit-learn computes it). No input
      preprocessing (the paper's small input perturbation is not used).
    - ``energy`` (Liu et al. 2020): E(x) = -T * logsumexp(logits / T). Needs no fit data.

    The threshold is the conformal ``quantile`` of the scores of in-distribution calibration
    inputs: the ceil((n+1)q)-th smallest of n. A new input exchangeable with the calibration set
    is flagged (score > threshold) with probability at most 1 - q and at least 1 - q - 1/(n+1),
    i.e. about 5% false alarms at q = 0.95. The calibration inputs must be held out: not used to
    train the model or fit the detector (training inputs look more typical than new ones, so a
    threshold calibrated on them warns too often).
    """

    method: str
    threshold: float
    quantile: float
    temperature: float | None
    covariance: str | None
    n_fit: int
    n_calibration: int
    calibration_flag_rate: float
    _net: _Net = field(repr=False)
    _class_means: np.ndarray | None = field(default=None, repr=False)  # (K', D)
    _classes: np.ndarray | None = field(default=None, repr=False)  # (K',)
    _estimator: object | None = field(default=None, repr=False)

    def score(self, inputs: np.ndarray | torch.Tensor) -> np.ndarray:
        """OOD score per input, (N,) float64; higher means less like the fit data."""
        x = self._net.check(inputs)
        if self.method == "energy":
            _, logits = self._net.run(x, features=False, logits=True)
            return _energy(logits, self.temperature)
        feats, _ = self._net.run(x, features=True, logits=False)
        return _mahalanobis(feats, self._class_means, self._estimator)

    def flag(self, inputs: np.ndarray | torch.Tensor) -> np.ndarray:
        """True where the OOD warning should be shown (score above the threshold)."""
        return self.score(inputs) > self.threshold

    def to_dict(self) -> dict:
        return {
            "aid": "ood_warning",
            "method": self.method,
            "score": ("min over classes of the Mahalanobis distance of penultimate features "
                      "to the class mean, shared covariance"
                      if self.method == "mahalanobis" else "energy -T*logsumexp(logits/T)"),
            "higher_means": "more out-of-distribution",
            "temperature": self.temperature,
            "covariance": self.covariance,
            "classes_fitted": None if self._classes is None else [int(c) for c in self._classes],
            "quantile": self.quantile,
            "threshold_rule": "conformal: ceil((n+1)*quantile)-th smallest calibration score; "
                              "flag when score > threshold",
            "threshold": self.threshold,
            "n_fit": self.n_fit,
            "n_calibration": self.n_calibration,
            "calibration_flag_rate": self.calibration_flag_rate,
        }


def _energy(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = torch.from_numpy(logits.astype(np.float64)) / temperature
    return (-temperature * torch.logsumexp(z, dim=1)).numpy()


def _mahalanobis(feats: np.ndarray, means: np.ndarray, estimator) -> np.ndarray:
    f = feats.astype(np.float64)
    # estimator.mahalanobis gives squared distances with the library's precision matrix.
    sq = np.stack([estimator.mahalanobis(f - mu) for mu in means], axis=1)
    return np.sqrt(np.maximum(sq.min(axis=1), 0.0))


def _check_held_out(x_fit: np.ndarray, x_cal: np.ndarray) -> None:
    # Fit inputs sit closer to the class means than new ones; a threshold calibrated on them
    # is too low and the warning fires far more often than the promised 1 - quantile. A few
    # exact duplicates between splits are normal in real data; mostly-shared sets are a bug.
    fit_rows = {row.tobytes() for row in x_fit}
    shared = sum(row.tobytes() in fit_rows for row in x_cal)
    if shared > len(x_cal) // 2:
        raise ValueError(f"{shared} of the {len(x_cal)} calibration inputs are also in X_fit. "
                         "Calibrate the threshold on held-out in-distribution inputs (not used "
                         "for training or fitting), or the warning fires too often.")


def _conformal_threshold(scores: np.ndarray, quantile: float) -> float:
    n = len(scores)
    rank = math.ceil((n + 1) * quantile)  # 1-based; <= n is checked by the caller
    return float(np.sort(scores)[rank - 1])


def fit_ood_detector(model: nn.Module, X_fit: np.ndarray | None = None,
                     y_fit: np.ndarray | None = None, *, method: str = "mahalanobis",
                     X_calibration: np.ndarray, quantile: float = 0.95,
                     temperature: float = 1.0, covariance: str = "ledoit_wolf",
                     device: str | None = None, batch_size: int = 1024) -> OODDetector:
    """Fit an OOD score on (X_fit, y_fit) and calibrate its warning threshold on X_calibration.

    ``mahalanobis`` needs X_fit and y_fit (the training inputs and their labels); ``energy``
    ignores them. ``X_calibration`` must be held-out in-distribution inputs, at least
    ceil(1 / (1 - quantile)) of them.
    """
    if method not in OOD_METHODS:
        raise ValueError(f"Unknown OOD method {method!r}; choose one of {list(OOD_METHODS)}.")
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0 < quantile < 1:
        raise ValueError(f"quantile must be strictly between 0 and 1 (e.g. 0.95 for about 5% "
                         f"false alarms); got {quantile!r}.")
    quantile = float(quantile)
    net = _Net(model, device, batch_size)
    x_cal = net.check(X_calibration, "X_calibration")
    # The conformal rank ceil((n+1)q) must not exceed n, i.e. n >= q / (1 - q) (19 at 0.95).
    if math.ceil((len(x_cal) + 1) * quantile) > len(x_cal):
        needed = max(1, math.floor(quantile / (1.0 - quantile)))
        while math.ceil((needed + 1) * quantile) > needed:
            needed += 1
        raise ValueError(f"A {quantile} quantile threshold needs at least {needed} calibration "
                         f"inputs; got {len(x_cal)}.")

    if method == "energy":
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be a positive number; got {temperature!r}.")
        det = OODDetector(method="energy", threshold=0.0, quantile=quantile,
                          temperature=float(temperature), covariance=None,
                          n_fit=0,  # energy is computed from the logits alone
                          n_calibration=int(len(x_cal)), calibration_flag_rate=0.0, _net=net)
    else:
        _check_has_features(model)
        if covariance not in OOD_COVARIANCES:
            raise ValueError(f"Unknown covariance estimator {covariance!r}; choose one of "
                             f"{list(OOD_COVARIANCES)}.")
        if X_fit is None or y_fit is None:
            raise ValueError("method='mahalanobis' needs X_fit and y_fit (training inputs and labels).")
        x_fit = net.check(X_fit, "X_fit")
        if tuple(x_fit.shape[1:]) != tuple(x_cal.shape[1:]):
            raise ValueError("X_fit and X_calibration have different input shapes.")
        _check_held_out(x_fit.numpy(), x_cal.numpy())
        feats, _ = net.run(x_fit, features=True, logits=False)
        y = _check_labels(y_fit, len(x_fit), net.num_classes, "y_fit")
        classes = np.unique(y)
        if len(classes) < 1 or len(x_fit) <= len(classes):
            raise ValueError("X_fit needs more inputs than classes to estimate a covariance.")
        f = feats.astype(np.float64)
        means = np.stack([f[y == c].mean(axis=0) for c in classes])
        residuals = f - means[np.searchsorted(classes, y)]
        estimator = OOD_COVARIANCES[covariance](assume_centered=True).fit(residuals)
        det = OODDetector(method="mahalanobis", threshold=0.0, quantile=quantile,
                          temperature=None, covariance=covariance, n_fit=int(len(x_fit)),
                          n_calibration=int(len(x_cal)), calibration_flag_rate=0.0, _net=net,
                          _class_means=means, _classes=classes, _estimator=estimator)
    cal = det.score(x_cal)
    det.threshold = _conformal_threshold(cal, quantile)
    det.calibration_flag_rate = float(np.mean(cal > det.threshold))
    return det
