"""Simulated studies, and calibration of the real analysis on them.

Generative model (logistic, crossed random effects, as in the mixed model of ``mixed.py``)::

    logit P(correct) = logit(accuracy[arm, phase]) + u_participant + v_item
    u ~ Normal(0, participant_sd),  v ~ Normal(0, item_sd)

``accuracy[arm, phase]`` is the configured true accuracy of the arm in every phase except
the pre-test, where all arms share ``baseline_accuracy`` (before the intervention arms cannot
differ). It is the accuracy of a typical participant on a typical item (random effects 0); the
population-average accuracy is pulled slightly towards 0.5 by the random effects. A
participant's ability ``u`` is shared by all phases and each participant sees the same items
in every phase (Hase & Bansal's pre/post design), so the gain removes the ability variance.

``calibrate`` pushes N simulated studies through :func:`primary_analysis` (the real test and
the real correction over the family) under the null (every arm at the control's accuracy) and
under the configured alternative, and returns the family-wise false-positive rate and the
power. Every study draws from its own child of one ``numpy.random.SeedSequence``.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import expit, logit

from .multiplicity import DEFAULT_METHOD
from .primary import primary_analysis


def _generator(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def simulate_study(
    *,
    arm_accuracy: Mapping[str, float],
    n_per_arm: int | Mapping[str, int],
    trials_per_phase: int = 40,
    n_items: int | None = None,
    phases: Sequence[str] = ("pre_test", "post_test"),
    pre_phase: str | None = "pre_test",
    baseline_accuracy: float | None = None,
    control: str = "control",
    participant_sd: float = 0.5,
    item_sd: float = 0.5,
    task: str = "forward",
    seed,
) -> pd.DataFrame:
    """Long-format trials of one simulated study.

    Columns: ``participant_id`` (int), ``arm``, ``item_id`` (int), ``phase``, ``task``,
    ``correct`` (0/1). Each participant answers ``trials_per_phase`` distinct items drawn
    from ``n_items`` (default: all items) in every phase.
    """
    rng = _generator(seed)
    arms = list(arm_accuracy)
    if control not in arm_accuracy:
        raise ValueError(f"control arm {control!r} missing from arm_accuracy")
    sizes = (
        {a: int(n_per_arm) for a in arms}
        if isinstance(n_per_arm, (int, np.integer))
        else {a: int(n_per_arm[a]) for a in arms}
    )
    n_items = trials_per_phase if n_items is None else int(n_items)
    if n_items < trials_per_phase:
        raise ValueError("n_items must be at least trials_per_phase")
    for acc in list(arm_accuracy.values()) + [baseline_accuracy]:
        if acc is not None and not 0 < acc < 1:
            raise ValueError("accuracies must lie strictly between 0 and 1")
    baseline = arm_accuracy[control] if baseline_accuracy is None else baseline_accuracy

    arm_index = np.repeat(np.arange(len(arms)), [sizes[a] for a in arms])
    n_participants = arm_index.size
    k = trials_per_phase
    ability = rng.normal(0.0, participant_sd, n_participants)
    difficulty = rng.normal(0.0, item_sd, n_items)
    if n_items == k:
        items = np.broadcast_to(np.arange(n_items), (n_participants, k))
    else:
        items = np.argpartition(rng.random((n_participants, n_items)), k - 1, axis=1)[:, :k]

    arm_logit = logit(np.array([arm_accuracy[a] for a in arms], dtype="float64"))
    base_eta = ability[:, None] + difficulty[items]  # (participants, k)
    correct = np.empty((n_participants, len(phases), k), dtype="int8")
    for j, phase in enumerate(phases):
        level = np.full(len(arms), logit(baseline)) if phase == pre_phase else arm_logit
        prob = expit(base_eta + level[arm_index][:, None])
        correct[:, j, :] = rng.random(prob.shape) < prob

    n_phases = len(phases)
    rows = n_participants * n_phases * k
    participant_ids = np.repeat(np.arange(n_participants), n_phases * k)
    return pd.DataFrame(
        {
            "participant_id": participant_ids,
            "arm": pd.Categorical.from_codes(arm_index, categories=arms)[participant_ids],
            "item_id": np.broadcast_to(items[:, None, :], correct.shape).reshape(rows),
            "phase": pd.Categorical.from_codes(
                np.tile(np.repeat(np.arange(n_phases), k), n_participants),
                categories=list(phases),
            ),
            "task": task,
            "correct": correct.reshape(rows),
        }
    )


@dataclass(frozen=True)
class CalibrationResult:
    n_studies: int
    alpha: float
    fwer_null: float
    fwer_null_ci: tuple[float, float]  # Clopper-Pearson 95% interval over the simulated studies
    power_any: float
    power_per_arm: dict[str, float]
    params: dict[str, Any]


def calibrate(
    *,
    arm_accuracy: Mapping[str, float],
    n_per_arm: int | Mapping[str, int],
    n_studies: int = 200,
    seed: int,
    control: str = "control",
    outcome: str | None = None,
    alternative: str = "greater",
    correction: str = DEFAULT_METHOD,
    alpha: float = 0.05,
    trials_per_phase: int = 40,
    n_items: int | None = None,
    phases: Sequence[str] = ("pre_test", "post_test"),
    baseline_accuracy: float | None = None,
    participant_sd: float = 0.5,
    item_sd: float = 0.5,
) -> CalibrationResult:
    """Family-wise false-positive rate under the null and power under ``arm_accuracy``.

    With two or more phases the first is the pre-test and the default outcome is the gain
    (last phase minus first); with one phase the outcome is that phase's accuracy.
    """
    pre_phase = phases[0] if len(phases) > 1 else None
    if outcome is None:
        outcome = "gain" if pre_phase is not None else phases[0]
    design = {
        "n_per_arm": n_per_arm,
        "trials_per_phase": trials_per_phase,
        "n_items": n_items,
        "phases": tuple(phases),
        "pre_phase": pre_phase,
        "baseline_accuracy": baseline_accuracy,
        "control": control,
        "participant_sd": participant_sd,
        "item_sd": item_sd,
    }
    analysis = {
        "control": control,
        "outcome": outcome,
        "alternative": alternative,
        "correction": correction,
        "alpha": alpha,
    }
    if pre_phase is not None:
        analysis.update(pre_phase=pre_phase, post_phase=phases[-1])
    null_accuracy = {arm: arm_accuracy[control] for arm in arm_accuracy}
    children = np.random.SeedSequence(seed).spawn(2 * n_studies)
    arms = [a for a in arm_accuracy if a != control]

    def run(accuracy, child) -> np.ndarray:
        trials = simulate_study(arm_accuracy=accuracy, seed=child, **design)
        result = primary_analysis(trials, arms=arms, **analysis)
        return result.adjusted.reject

    # statsmodels' Holm branch calls gc.collect() on every call (~50 ms with pandas and scipy
    # loaded). Freezing the objects that exist now keeps those collections cheap; objects
    # created inside the loop are still collected normally.
    gc.freeze()
    try:
        null_rejections = np.array([run(null_accuracy, c) for c in children[:n_studies]])
        alt_rejections = np.array([run(arm_accuracy, c) for c in children[n_studies:]])
    finally:
        gc.unfreeze()
    any_null = int(null_rejections.any(axis=1).sum())
    ci = stats.binomtest(any_null, n_studies).proportion_ci(method="exact")
    return CalibrationResult(
        n_studies=n_studies,
        alpha=alpha,
        fwer_null=any_null / n_studies,
        fwer_null_ci=(float(ci.low), float(ci.high)),
        power_any=float(alt_rejections.any(axis=1).mean()),
        power_per_arm={arm: float(alt_rejections[:, i].mean()) for i, arm in enumerate(arms)},
        params={
            "seed": seed,
            "arm_accuracy": dict(arm_accuracy),
            **design,
            **analysis,
        },
    )
