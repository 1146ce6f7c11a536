"""Counterfactual edits of stimuli, the model's output on them, and trial candidate selection.

Public API::

    grid_occlusion_edits(inputs, *, grid=None, cell_size=None, fill="mean", cells=None)
        -> EditBatch            every cell of a grid over each image, one cell per edit
    feature_quantile_edits(inputs, *, X_reference, quantiles=(0.1, 0.5, 0.9), features=None,
                           feature_names=None, min_change=0.05) -> EditBatch
    evaluate_edits(model, batch, *, device=None, batch_size=1024) -> EditOutcomes
    counterfactual_choose_candidates(outcomes, *, n_candidates=4, seed=0, stimulus_keys=None,
                                     exclude=None) -> list[CandidateSet | None]
        exactly one edit that changes the prediction, n_candidates - 1 that do not
    counterfactual_predict_edits(outcomes, *, per_stimulus=1, flip_fraction=0.5, seed=0,
                                 stimulus_keys=None, exclude=None) -> list[CandidateSet | None]

An ``EditBatch`` holds N stimuli with up to E edits each, packed first: edits of stimulus i are
``edited[i, :counts[i]]`` with ``params[i][j]`` (JSON-serializable) describing edit j. Slots past
``counts[i]`` (only feature edits skip, so only they have any) hold an unedited copy and are
never evaluated. Everything is deterministic; selection is seeded per stimulus.

Memory: ``edited`` is (N, E, *input_shape) float32. For big images call per chunk of stimuli
(the worker prepares in chunks anyway).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from explainers.methods.models import predict

__all__ = [
    "CandidateSet",
    "EditBatch",
    "EditOutcomes",
    "counterfactual_choose_candidates",
    "counterfactual_predict_edits",
    "evaluate_edits",
    "feature_quantile_edits",
    "grid_occlusion_edits",
]

QUANTILE_METHOD = "linear"  # numpy.quantile's default, named so it is recorded


@dataclass(frozen=True)
class EditBatch:
    kind: str  # "occlusion" or "feature_quantile"
    originals: np.ndarray  # (N, *input_shape) float32
    edited: np.ndarray  # (N, E, *input_shape) float32, valid edits packed first
    counts: np.ndarray  # (N,) int64, number of valid edits per stimulus
    params: list[list[dict]]  # params[i][j] for j < counts[i]
    config: dict  # how the batch was made (JSON-serializable)

    @property
    def n_stimuli(self) -> int:
        return int(self.originals.shape[0])

    @property
    def valid(self) -> np.ndarray:
        """(N, E) bool: True for real edits, False for padding."""
        return np.arange(self.edited.shape[1])[None, :] < self.counts[:, None]

    def changed_elements(self) -> np.ndarray:
        """(N, E) int64: input elements each edit changes (0 for padding, and for an occlusion
        whose cell already had the fill value everywhere)."""
        diff = self.edited != self.originals[:, None]
        return diff.reshape(diff.shape[0], diff.shape[1], -1).sum(axis=2).astype(np.int64) * self.valid

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inputs (M, *input_shape), stimulus index (M,), edit index (M,)) of the valid edits,
        e.g. for OOD scores or explanations of edits."""
        stim, slot = np.nonzero(self.valid)
        return self.edited[stim, slot], stim.astype(np.int64), slot.astype(np.int64)


@dataclass(frozen=True)
class EditOutcomes:
    original_classes: np.ndarray  # (N,) int64
    original_probabilities: np.ndarray  # (N, K) float32
    classes: np.ndarray  # (N, E) int64, -1 in padding
    probabilities: np.ndarray  # (N, E, K) float32, NaN in padding
    changes_prediction: np.ndarray  # (N, E) bool, False in padding
    valid: np.ndarray  # (N, E) bool
    changes_input: np.ndarray  # (N, E) bool: the edit changes at least one input element

    @property
    def n_stimuli(self) -> int:
        return int(self.original_classes.shape[0])


@dataclass(frozen=True)
class CandidateSet:
    """Edits chosen for one stimulus's trial, in the order they are to be shown."""

    stimulus: int  # row in the batch
    key: int  # the seed key used (stimulus_keys[stimulus])
    edits: tuple[int, ...]  # edit indices (slots) into the batch
    changes_prediction: tuple[bool, ...]  # per chosen edit
    correct_position: int | None  # counterfactual_choose: position of the one flipping edit

    def to_dict(self) -> dict:
        return {"stimulus": self.stimulus, "key": self.key, "edits": list(self.edits),
                "changes_prediction": list(self.changes_prediction),
                "correct_position": self.correct_position}


# ----------------------------------------------------------------------------- checks

def _as_array(inputs, rank: int, what: str) -> np.ndarray:
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.detach().cpu().numpy()
    try:
        x = np.ascontiguousarray(np.asarray(inputs, dtype=np.float32))
    except (TypeError, ValueError):
        raise ValueError(f"inputs must be a numeric array of {what}.") from None
    if x.ndim != rank + 1 or x.shape[0] == 0 or 0 in x.shape:
        hint = " (add a batch dimension for a single stimulus)" if x.ndim == rank else ""
        raise ValueError(f"inputs must be a non-empty batch of {what}; got shape {list(x.shape)}{hint}.")
    if not np.isfinite(x).all():
        raise ValueError("inputs contain NaN or infinite values.")
    return x


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a (rows, columns) pair; got {value!r}.") from None
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in (a, b)):
        raise ValueError(f"{name} must hold positive integers; got {value!r}.")
    return int(a), int(b)


# ----------------------------------------------------------------------------- image edits

def grid_occlusion_edits(inputs: np.ndarray | torch.Tensor, *,
                         grid: int | tuple[int, int] | None = None,
                         cell_size: int | tuple[int, int] | None = None,
                         fill: str | float = "mean",
                         cells: Sequence[tuple[int, int]] | None = None) -> EditBatch:
    """Occlude one grid cell per edit (all channels), every cell of the grid per stimulus.

    Give ``grid`` (rows, columns) or ``cell_size`` (height, width) in pixels; the default is a
    4x4 grid. The cells must tile the image exactly (ValueError otherwise), so every edit hides
    the same area. ``fill``: "mean" (the stimulus's own mean pixel value over all channels, a
    flat patch of its average brightness), "zero", or a number. ``cells``: (row, column) pairs
    to restrict the candidates to, in that order; default all cells, row-major.
    Per edit params: cell_row, cell_col, box [top, left, height, width] in input pixels (what
    ``rendering.render_edit`` takes), fill, fill_value.
    """
    x = _as_array(inputs, 3, "images (N, C, H, W)")
    n, c, h, w = x.shape
    if grid is not None and cell_size is not None:
        raise ValueError("Give grid or cell_size, not both.")
    if cell_size is not None:
        ch, cw = _pair(cell_size, "cell_size")
        if h % ch or w % cw:
            raise ValueError(f"cell_size {ch}x{cw} does not tile the {h}x{w} image exactly; "
                             f"choose a size that divides both height and width.")
        rows, cols = h // ch, w // cw
    else:
        rows, cols = _pair((4, 4) if grid is None else grid, "grid")
        if h % rows or w % cols:
            raise ValueError(f"A {rows}x{cols} grid does not divide the {h}x{w} image into "
                             f"equal cells; choose a grid whose rows divide {h} and whose "
                             f"columns divide {w}.")
        ch, cw = h // rows, w // cols

    if cells is None:
        chosen = [(r, q) for r in range(rows) for q in range(cols)]
    else:
        try:
            chosen = [(int(r), int(q)) for r, q in cells]
        except (TypeError, ValueError):
            raise ValueError("cells must be a sequence of (row, column) pairs.") from None
        if not chosen:
            raise ValueError("cells must not be empty.")
        bad = [rc for rc in chosen if not (0 <= rc[0] < rows and 0 <= rc[1] < cols)]
        if bad:
            raise ValueError(f"cell {bad[0]} lies outside the {rows}x{cols} grid.")
        if len(set(chosen)) != len(chosen):
            raise ValueError("cells must not repeat.")

    if isinstance(fill, str):
        if fill == "mean":
            fill_values = x.reshape(n, -1).mean(axis=1, dtype=np.float64).astype(np.float32)
        elif fill == "zero":
            fill_values = np.zeros(n, dtype=np.float32)
        else:
            raise ValueError(f"fill must be 'mean', 'zero' or a number; got {fill!r}.")
    elif isinstance(fill, (int, float, np.floating, np.integer)) and not isinstance(fill, bool) \
            and math.isfinite(float(fill)):
        fill_values = np.full(n, fill, dtype=np.float32)
    else:
        raise ValueError(f"fill must be 'mean', 'zero' or a finite number; got {fill!r}.")

    edited = np.repeat(x[:, None], len(chosen), axis=1)
    params: list[list[dict]] = [[] for _ in range(n)]
    for j, (r, q) in enumerate(chosen):
        top, left = r * ch, q * cw
        edited[:, j, :, top:top + ch, left:left + cw] = fill_values[:, None, None, None]
        for i in range(n):
            params[i].append({"kind": "occlusion", "cell_row": r, "cell_col": q,
                              "box": [top, left, ch, cw],
                              "fill": fill if isinstance(fill, str) else "value",
                              "fill_value": float(fill_values[i])})
    config = {"kind": "occlusion", "grid": [rows, cols], "cell_size": [ch, cw],
              "fill": fill if isinstance(fill, str) else float(fill),
              "fill_mean_over": "all pixels and channels of the stimulus" if fill == "mean" else None,
              "cells": [list(rc) for rc in chosen], "input_shape": [c, h, w]}
    return EditBatch(kind="occlusion", originals=x, edited=edited,
                     counts=np.full(n, len(chosen), dtype=np.int64), params=params, config=config)


# ----------------------------------------------------------------------------- tabular edits

def feature_quantile_edits(inputs: np.ndarray | torch.Tensor, *, X_reference: np.ndarray,
                           quantiles: Sequence[float] = (0.1, 0.5, 0.9),
                           features: Sequence[int | str] | None = None,
                           feature_names: Sequence[str] | None = None,
                           min_change: float = 0.05) -> EditBatch:
    """Set one feature to a quantile of its reference (training) distribution per edit.

    Candidates per stimulus: for each feature in ``features`` (indices, or names when
    ``feature_names`` is given; default all) and each quantile, the value
    ``numpy.quantile(X_reference[:, f], q, method="linear")``. An edit is skipped when it would
    not change the value meaningfully: |to - from| <= min_change * (reference standard deviation
    of the feature), or when an earlier quantile of the same feature gave the same value (ties
    in discrete features). Per edit params: feature index, feature name, from_value, to_value,
    quantile, from_rank (fraction of reference values <= from_value).
    """
    x = _as_array(inputs, 1, "rows (N, F)")
    n, f = x.shape
    ref = _as_array(X_reference, 1, "reference rows (N_ref, F)")
    if ref.shape[1] != f:
        raise ValueError(f"X_reference has {ref.shape[1]} features but inputs have {f}.")
    try:
        qs = [float(q) for q in quantiles]
    except (TypeError, ValueError):
        qs = None
    if not qs or any(not 0.0 <= q <= 1.0 for q in qs) or len(set(qs)) != len(qs):
        raise ValueError(f"quantiles must be distinct numbers in [0, 1]; got {quantiles!r}.")
    if isinstance(min_change, bool) or not isinstance(min_change, (int, float)) or min_change < 0:
        raise ValueError(f"min_change must be a non-negative number; got {min_change!r}.")
    names = None
    if feature_names is not None:
        names = [str(s) for s in feature_names]
        if len(names) != f:
            raise ValueError(f"feature_names has {len(names)} names for {f} features.")
    if features is None:
        feats = list(range(f))
    else:
        feats = []
        for item in features:
            if isinstance(item, str):
                if names is None or item not in names:
                    raise ValueError(f"Unknown feature {item!r}"
                                     + ("; pass feature_names to refer to features by name."
                                        if names is None else f"; known: {names}."))
                feats.append(names.index(item))
            elif isinstance(item, (int, np.integer)) and not isinstance(item, bool) and 0 <= item < f:
                feats.append(int(item))
            else:
                raise ValueError(f"Feature {item!r} is not an index in [0, {f - 1}] or a known name.")
        if not feats or len(set(feats)) != len(feats):
            raise ValueError("features must be a non-empty list without repeats.")

    ref64 = ref.astype(np.float64)
    targets = {j: np.quantile(ref64[:, j], qs, method=QUANTILE_METHOD).astype(np.float32)
               for j in feats}
    scales = {j: float(ref64[:, j].std()) for j in feats}
    max_e = len(feats) * len(qs)
    edited = np.repeat(x[:, None], max_e, axis=1)
    counts = np.zeros(n, dtype=np.int64)
    params: list[list[dict]] = [[] for _ in range(n)]
    sorted_ref = {j: np.sort(ref64[:, j]) for j in feats}
    # Fraction of reference values <= the stimulus's own value (its percentile rank).
    ranks = {j: np.searchsorted(sorted_ref[j], x[:, j].astype(np.float64), side="right")
             / len(ref) for j in feats}
    for i in range(n):
        for j in feats:
            seen: set[float] = set()
            old = x[i, j]
            for q, new in zip(qs, targets[j]):
                if float(new) in seen or abs(float(new) - float(old)) <= min_change * scales[j]:
                    continue
                seen.add(float(new))
                slot = counts[i]
                edited[i, slot, j] = new
                counts[i] += 1
                params[i].append({"kind": "feature_quantile", "feature": j,
                                  "feature_name": None if names is None else names[j],
                                  "from_value": float(old), "to_value": float(new),
                                  "quantile": q,
                                  "from_rank": float(ranks[j][i])})
    width = int(counts.max()) if n else 0
    config = {"kind": "feature_quantile", "quantiles": qs, "features": feats,
              "feature_names": names, "quantile_method": QUANTILE_METHOD,
              "min_change": float(min_change),
              "min_change_rule": "skip when |to - from| <= min_change * reference std",
              "reference_std": [scales[j] for j in feats], "n_reference": int(len(ref)),
              "targets": {str(j): [float(v) for v in targets[j]] for j in feats}}
    return EditBatch(kind="feature_quantile", originals=x, edited=edited[:, :max(width, 1)],
                     counts=counts, params=params, config=config)


# ----------------------------------------------------------------------------- model outputs

def evaluate_edits(model: nn.Module, batch: EditBatch, *, device: str | None = None,
                   batch_size: int = 1024) -> EditOutcomes:
    """The model's class and probabilities on every stimulus and every valid edit, in one
    batched prediction over originals + edits (``explainers.methods.predict``)."""
    if not isinstance(batch, EditBatch):
        raise ValueError(f"batch must be an EditBatch; got {type(batch).__name__}.")
    flat, stim, slot = batch.flat()
    n = batch.n_stimuli
    everything = np.concatenate([batch.originals, flat], axis=0)
    classes, probs = predict(model, everything, device=device, batch_size=batch_size)
    k = probs.shape[1]
    e = batch.edited.shape[1]
    out_classes = np.full((n, e), -1, dtype=np.int64)
    out_probs = np.full((n, e, k), np.nan, dtype=np.float32)
    out_classes[stim, slot] = classes[n:]
    out_probs[stim, slot] = probs[n:]
    valid = batch.valid
    changes = valid & (out_classes != classes[:n, None])
    return EditOutcomes(original_classes=classes[:n], original_probabilities=probs[:n],
                        classes=out_classes, probabilities=out_probs,
                        changes_prediction=changes, valid=valid,
                        changes_input=batch.changed_elements() > 0)


# ----------------------------------------------------------------------------- trial selection

def _keys(stimulus_keys, n: int) -> list[int]:
    if stimulus_keys is None:
        return list(range(n))
    keys = list(stimulus_keys)
    if len(keys) != n or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0
                             for k in keys):
        raise ValueError(f"stimulus_keys must be {n} non-negative integers (e.g. stimulus ids).")
    return [int(k) for k in keys]


def _pools(outcomes: EditOutcomes, exclude) -> tuple[np.ndarray, np.ndarray]:
    """(flipping, non-flipping) eligibility masks (N, E). Edits that change no input element are
    never candidates: an occluded cell that was already blank is a give-away distractor."""
    eligible = outcomes.valid & outcomes.changes_input
    if exclude is not None:
        exclude = np.asarray(exclude)
        if exclude.shape != eligible.shape or exclude.dtype != bool:
            raise ValueError(f"exclude must be a boolean mask of shape {list(eligible.shape)} "
                             "(stimuli x edits).")
        eligible = eligible & ~exclude
    return eligible & outcomes.changes_prediction, eligible & ~outcomes.changes_prediction


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}.")
    return int(seed)


def counterfactual_choose_candidates(outcomes: EditOutcomes, *, n_candidates: int = 4,
                                     seed: int = 0, stimulus_keys: Sequence[int] | None = None,
                                     exclude: np.ndarray | None = None
                                     ) -> list[CandidateSet | None]:
    """Per stimulus: exactly one edit that changes the prediction and n_candidates - 1 that do
    not, drawn uniformly and shown in a random order; None where that is impossible (no
    flipping edit, or too few non-flipping ones). Edits that change no input element, and those
    marked in the optional (N, E) boolean ``exclude`` mask (e.g. OOD-flagged edits), are never
    drawn.

    Randomness is seeded per stimulus by (seed, key), keys defaulting to the row index; pass
    stable ``stimulus_keys`` (stimulus ids) so a stimulus gets the same set whatever else is in
    the batch.
    """
    if isinstance(n_candidates, bool) or not isinstance(n_candidates, (int, np.integer)) \
            or n_candidates < 2:
        raise ValueError(f"n_candidates must be an integer >= 2; got {n_candidates!r}.")
    seed = _check_seed(seed)
    keys = _keys(stimulus_keys, outcomes.n_stimuli)
    flip_mask, stay_mask = _pools(outcomes, exclude)
    result: list[CandidateSet | None] = []
    for i, key in enumerate(keys):
        flips, stays = np.flatnonzero(flip_mask[i]), np.flatnonzero(stay_mask[i])
        if len(flips) < 1 or len(stays) < n_candidates - 1:
            result.append(None)
            continue
        rng = np.random.default_rng([seed, key])
        picked = np.concatenate([rng.choice(flips, 1),
                                 rng.choice(stays, n_candidates - 1, replace=False)])
        order = rng.permutation(n_candidates)
        picked = picked[order]
        result.append(CandidateSet(
            stimulus=i, key=key, edits=tuple(int(s) for s in picked),
            changes_prediction=tuple(bool(outcomes.changes_prediction[i, s]) for s in picked),
            correct_position=int(np.flatnonzero(order == 0)[0])))
    return result


def counterfactual_predict_edits(outcomes: EditOutcomes, *, per_stimulus: int = 1,
                                 flip_fraction: float = 0.5, seed: int = 0,
                                 stimulus_keys: Sequence[int] | None = None,
                                 exclude: np.ndarray | None = None
                                 ) -> list[CandidateSet | None]:
    """Per stimulus: ``per_stimulus`` edits whose output participants will predict, a seeded
    mix of edits that change the prediction and edits that do not.

    The number of flipping edits is floor(per_stimulus * flip_fraction) plus one with
    probability equal to the fractional part, so over many stimuli the share of flipping items
    is flip_fraction (answering "unchanged" every time then scores only 1 - flip_fraction).
    None where the stimulus lacks enough edits of the kind drawn. Seeded and filtered (``exclude``,
    edits that change nothing) as in ``counterfactual_choose_candidates``.
    """
    if isinstance(per_stimulus, bool) or not isinstance(per_stimulus, (int, np.integer)) \
            or per_stimulus < 1:
        raise ValueError(f"per_stimulus must be a positive integer; got {per_stimulus!r}.")
    if isinstance(flip_fraction, bool) or not isinstance(flip_fraction, (int, float)) \
            or not 0.0 <= flip_fraction <= 1.0:
        raise ValueError(f"flip_fraction must be in [0, 1]; got {flip_fraction!r}.")
    seed = _check_seed(seed)
    keys = _keys(stimulus_keys, outcomes.n_stimuli)
    flip_mask, stay_mask = _pools(outcomes, exclude)
    result: list[CandidateSet | None] = []
    for i, key in enumerate(keys):
        rng = np.random.default_rng([seed, key])
        target = per_stimulus * flip_fraction
        n_flip = int(math.floor(target)) + int(rng.random() < target - math.floor(target))
        flips, stays = np.flatnonzero(flip_mask[i]), np.flatnonzero(stay_mask[i])
        if len(flips) < n_flip or len(stays) < per_stimulus - n_flip:
            result.append(None)
            continue
        picked = np.concatenate([rng.choice(flips, n_flip, replace=False),
                                 rng.choice(stays, per_stimulus - n_flip, replace=False)])
        picked = picked[rng.permutation(per_stimulus)]
        result.append(CandidateSet(
            stimulus=i, key=key, edits=tuple(int(s) for s in picked),
            changes_prediction=tuple(bool(outcomes.changes_prediction[i, s]) for s in picked),
            correct_position=None))
    return result
