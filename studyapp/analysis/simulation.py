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
power, each with its Clopper-Pearson interval over the simulated studies (statsmodels
``proportion_confint(method="beta")``; R: ``binom.test``). ``null_only=True`` runs only the
null half (a family-wise error check costs half as much). Study i of the null half draws from
child i of ``numpy.random.SeedSequence(seed).spawn(2 * n_studies)`` and study i of the
alternative half from child ``n_studies + i``, so the results are the same whatever the number
of ``workers`` (processes of a ``concurrent.futures.ProcessPoolExecutor``) and whether the
alternative half runs.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit, logit
from statsmodels.stats.proportion import proportion_confint

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
    """Family-wise false-positive rate under the null and power under the alternative.

    Intervals are Clopper-Pearson (exact binomial) at ``params["confidence_level"]`` over the
    simulated studies. With ``null_only`` the power fields are None.
    """

    n_studies: int
    alpha: float
    fwer_null: float
    fwer_null_ci: tuple[float, float]
    power_any: float | None
    power_per_arm: dict[str, float] | None
    params: dict[str, Any]
    power_any_ci: tuple[float, float] | None = None
    power_per_arm_ci: dict[str, tuple[float, float]] | None = None


def _clopper_pearson(successes: int, n: int, confidence_level: float) -> tuple[float, float]:
    low, high = proportion_confint(successes, n, alpha=1 - confidence_level, method="beta")
    return float(low), float(high)


def _rejections(task: tuple) -> np.ndarray:
    """One simulated study analysed by the real primary analysis: which arms were rejected."""
    accuracy, child, design, analysis, arms = task
    trials = simulate_study(arm_accuracy=accuracy, seed=child, **design)
    return primary_analysis(trials, arms=arms, **analysis).adjusted.reject


def _worker_start() -> None:
    # Unpickling this function imported this module, and with it pandas, scipy and statsmodels:
    # freeze them, as calibrate does in the calling process (see there).
    gc.freeze()


def _run_all(tasks: list[tuple], workers: int) -> np.ndarray:
    if workers == 1 or len(tasks) < 2:
        return np.array([_rejections(t) for t in tasks])
    # "spawn": forking a process that runs threads (a web server, a Celery worker) can copy a
    # held lock into the child and hang it. Chunks amortise the pickling of the tasks; the
    # results come back in task order, so they do not depend on the scheduling.
    context = multiprocessing.get_context("spawn")
    chunksize = max(1, math.ceil(len(tasks) / (4 * workers)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_start) as pool:
        return np.array(list(pool.map(_rejections, tasks, chunksize=chunksize)))


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
    null_only: bool = False,
    workers: int = 1,
    confidence_level: float = 0.95,
) -> CalibrationResult:
    """Family-wise false-positive rate under the null and power under ``arm_accuracy``.

    With two or more phases the first is the pre-test and the default outcome is the gain
    (last phase minus first); with one phase the outcome is that phase's accuracy.
    ``null_only`` skips the alternative half (power fields None); ``workers`` > 1 runs the
    studies in that many processes with identical results (``workers`` is therefore not in
    ``params``). Scripts that use ``workers`` > 1 need the ``if __name__ == "__main__":``
    guard of every multiprocessing program (the workers are spawned, and import the script).
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must lie between 0 and 1, got {confidence_level}")
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
    # Always 2 * n_studies children: the null half gets the same seeds with or without the
    # alternative half, so a null-only run reproduces the null half of a full run.
    children = np.random.SeedSequence(seed).spawn(2 * n_studies)
    arms = [a for a in arm_accuracy if a != control]
    tasks = [(null_accuracy, c, design, analysis, arms) for c in children[:n_studies]]
    if not null_only:
        tasks += [(dict(arm_accuracy), c, design, analysis, arms) for c in children[n_studies:]]

    # statsmodels' Holm branch calls gc.collect() on every call (~50 ms with pandas and scipy
    # loaded). Freezing the objects that exist now keeps those collections cheap; objects
    # created inside the loop are still collected normally. Worker processes freeze theirs
    # when they start.
    gc.freeze()
    try:
        rejections = _run_all(tasks, workers)
    finally:
        gc.unfreeze()
    null_rejections = rejections[:n_studies]
    any_null = int(null_rejections.any(axis=1).sum())
    power_any = power_per_arm = power_any_ci = power_per_arm_ci = None
    if not null_only:
        alt_rejections = rejections[n_studies:]
        any_alt = int(alt_rejections.any(axis=1).sum())
        per_arm = alt_rejections.sum(axis=0)
        power_any = any_alt / n_studies
        power_any_ci = _clopper_pearson(any_alt, n_studies, confidence_level)
        power_per_arm = {arm: float(per_arm[i]) / n_studies for i, arm in enumerate(arms)}
        power_per_arm_ci = {
            arm: _clopper_pearson(int(per_arm[i]), n_studies, confidence_level)
            for i, arm in enumerate(arms)
        }
    return CalibrationResult(
        n_studies=n_studies,
        alpha=alpha,
        fwer_null=any_null / n_studies,
        fwer_null_ci=_clopper_pearson(any_null, n_studies, confidence_level),
        power_any=power_any,
        power_per_arm=power_per_arm,
        power_any_ci=power_any_ci,
        power_per_arm_ci=power_per_arm_ci,
        params={
            "seed": seed,
            "arm_accuracy": dict(arm_accuracy),
            **design,
            **analysis,
            "null_only": null_only,
            "confidence_level": confidence_level,
            "interval": "Clopper-Pearson (statsmodels proportion_confint, method='beta')",
        },
    )
