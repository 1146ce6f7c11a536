"""Two-stage block bootstrap CI for the difference in accuracy between two arms.

Both participants and items are samples from larger populations (crossed design), and a CI
that resamples only trials or only participants is too narrow when item difficulty varies.
Each replicate:

1. resamples participants with replacement *within each arm* (arm sizes stay fixed, as in
   the randomised design);
2. resamples items with replacement from the study's item pool; the same item draw is used for
   both arms, since both arms answered the same item pool;
3. recomputes each resampled participant's accuracy over the resampled items they answered
   (an item drawn twice counts twice; a participant left with no answered item drops out of
   that replicate), then the difference of the two arm means.

The interval is the percentile interval of ``n_resamples`` replicates. Replicates are computed
with matrix products (participants x items) in batches, not with Python loops over
participants; the generator is ``numpy.random.default_rng(seed)`` and the seed is stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .aggregate import participant_arms, select_trials


@dataclass(frozen=True)
class BootstrapResult:
    estimate: float
    ci_low: float
    ci_high: float
    confidence_level: float
    n_resamples: int
    n_valid: int  # replicates in which both arms kept at least one participant
    seed: int
    method: str
    n: dict[str, int]
    params: dict[str, Any]


def _participant_item_matrices(rows: pd.DataFrame):
    """(participants x items) sums of correct answers and counts of answers, plus arms."""
    pid_codes, pids = pd.factorize(rows["participant_id"], sort=True)
    item_codes, items = pd.factorize(rows["item_id"], sort=True)
    n_p, n_i = pids.size, items.size
    flat = pid_codes * n_i + item_codes
    correct = rows["correct"].to_numpy(dtype="float64")
    sums = np.bincount(flat, weights=correct, minlength=n_p * n_i).reshape(n_p, n_i)
    counts = np.bincount(flat, minlength=n_p * n_i).reshape(n_p, n_i).astype("float64")
    # A participant in both arms (a within-subject design) is refused, never silently given its first arm.
    arms = participant_arms(rows).reindex(pids).to_numpy()
    return sums, counts, arms


def two_stage_bootstrap(
    trials: pd.DataFrame,
    *,
    treatment: str,
    control: str,
    phase: str,
    seed: int,
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
    batch_size: int = 500,
) -> BootstrapResult:
    """Percentile CI for mean participant accuracy (treatment) - (control) in one phase."""
    rows = select_trials(trials, phases=[phase])
    rows = rows.loc[rows["arm"].isin([treatment, control]) & rows["correct"].notna()]
    if "item_id" not in rows.columns:
        raise ValueError("the two-stage bootstrap needs an 'item_id' column")
    sums, counts, arms = _participant_item_matrices(rows)
    in_t = arms == treatment
    in_c = arms == control
    if in_t.sum() < 2 or in_c.sum() < 2:
        raise ValueError("each arm needs at least 2 participants")

    acc = sums.sum(axis=1) / counts.sum(axis=1)
    estimate = float(acc[in_t].mean() - acc[in_c].mean())

    rng = np.random.default_rng(seed)
    n_items = sums.shape[1]
    idx_t, idx_c = np.flatnonzero(in_t), np.flatnonzero(in_c)
    diffs = np.empty(n_resamples)
    for start in range(0, n_resamples, batch_size):
        b = min(batch_size, n_resamples - start)
        # Item weights: multiplicities of a with-replacement draw of n_items items.
        w_items = rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=b).T
        # Participant multiplicities within each arm.
        w_t = rng.multinomial(idx_t.size, np.full(idx_t.size, 1.0 / idx_t.size), size=b).T
        w_c = rng.multinomial(idx_c.size, np.full(idx_c.size, 1.0 / idx_c.size), size=b).T
        means = []
        for idx, w_p in ((idx_t, w_t), (idx_c, w_c)):
            num = sums[idx] @ w_items  # (participants, b)
            den = counts[idx] @ w_items
            with np.errstate(invalid="ignore", divide="ignore"):
                acc_b = num / den
            valid = den > 0
            weight = np.where(valid, w_p, 0.0)
            total = weight.sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                means.append((np.where(valid, acc_b, 0.0) * weight).sum(axis=0) / total)
        diffs[start : start + b] = means[0] - means[1]

    finite = diffs[np.isfinite(diffs)]
    tail = (1.0 - confidence_level) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail]) if finite.size else (math.nan, math.nan)
    return BootstrapResult(
        estimate=estimate,
        ci_low=float(low),
        ci_high=float(high),
        confidence_level=confidence_level,
        n_resamples=n_resamples,
        n_valid=int(finite.size),
        seed=seed,
        method="two-stage bootstrap (participants within arm, then items), percentile interval",
        n={"treatment": int(in_t.sum()), "control": int(in_c.sum()), "items": int(n_items)},
        params={
            "treatment": treatment,
            "control": control,
            "phase": phase,
            "seed": seed,
            "n_resamples": n_resamples,
            "confidence_level": confidence_level,
            "batch_size": batch_size,
        },
    )
