"""Participant-level outcomes of a run, from the answered-trials frame.

Measures: ``test``, ``pre_test``, ``post_test`` (accuracy on ``forward`` trials of that phase),
``gain`` (post-test minus pre-test accuracy) and ``counterfactual`` (accuracy on
``counterfactual_*`` trials of every phase except practice and learning). The participant is the
unit: every descriptive and every test here is over per-participant values.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
from statsmodels.stats.weightstats import DescrStatsW

from .aggregate import participant_accuracy, participant_outcomes
from .comparisons import chance_level_test
from .flow import several_arms_reason
from .run_results import OK, not_computed

COUNTERFACTUAL_TASKS = ("counterfactual_predict", "counterfactual_choose")
FORWARD_PHASES = ("pre_test", "post_test", "test")
OUTCOME_MEASURE = {"test_accuracy": "test", "gain": "gain", "counterfactual_accuracy": "counterfactual"}
VALUE_COLUMNS = ["participant_id", "arm", "value"]
# What measure_rows and participant accuracy read: per-arm descriptives select their rows from
# these columns only, not from the whole trial frame.
ACCURACY_COLUMNS = ("participant_id", "arm", "phase", "task", "correct")


def trial_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The long trial frame (``studyapp.selectors.trials_long_frame``, answered trials) in the
    analysis package's column names, scored, with ``item_id`` = stimulus (+ edit).

    Nullable integer columns become float64 with NaN, the numpy types the statistics expect.
    """
    frame = frame.rename(columns={"participant": "participant_id", "response": "answer"})
    correct = frame["correct"].astype("float64")
    # A response stored without a verdict is scored against the expected answer, when there is one.
    derivable = correct.isna() & frame["expected_answer"].notna()
    correct[derivable] = (frame.loc[derivable, "answer"] == frame.loc[derivable, "expected_answer"]).astype(float)
    frame["correct"] = correct
    # Zero-padded so that sorting item ids (the bootstrap does) follows stimulus order, not "10" < "2".
    # Formatted once per distinct (stimulus, edit), not once per trial.
    stimulus_codes, stimuli = pd.factorize(frame["stimulus"])
    edit_codes, edits = pd.factorize(frame["edit"])  # missing edit: code -1
    codes, pairs = pd.factorize(stimulus_codes * (len(edits) + 1) + edit_codes + 1)
    stimulus_of, edit_of = np.divmod(pairs, len(edits) + 1)
    labels = np.array([f"{stimuli[s]:012d}" + (f":{edits[e - 1]}" if e else "") for s, e in zip(stimulus_of, edit_of)],
                      dtype=object)
    frame["item_id"] = pd.array(labels[codes], dtype="str")
    nullable = [c for c in frame.columns if isinstance(frame[c].dtype, pd.Int64Dtype)]
    frame[nullable] = frame[nullable].astype("float64")
    return frame


def measure_rows(trials: pd.DataFrame, measure: str) -> tuple[pd.DataFrame, str, str | None]:
    """Trials of one accuracy measure, the phase to model and the pre-phase (gain only)."""
    if measure == "counterfactual":
        rows = trials.loc[trials["task"].isin(COUNTERFACTUAL_TASKS) & ~trials["phase"].isin(["practice", "learning"])]
        return rows.assign(phase="counterfactual"), "counterfactual", None
    if measure == "gain":
        rows = trials.loc[(trials["task"] == "forward") & trials["phase"].isin(["pre_test", "post_test"])]
        return rows, "post_test", "pre_test"
    return trials.loc[(trials["task"] == "forward") & (trials["phase"] == measure)], measure, None


def accuracy(rows: pd.DataFrame, phase: str) -> pd.DataFrame:
    """participant_id, arm, value = the participant's accuracy in ``phase``."""
    acc = participant_accuracy(rows, phases=[phase])
    return acc[["participant_id", "arm", "accuracy"]].rename(columns={"accuracy": "value"})


def outcome_values(trials: pd.DataFrame, likert: pd.DataFrame, *, outcome: str, likert_item: str,
                   measured: tuple[pd.DataFrame, str, str | None] | None = None) -> pd.DataFrame:
    """One row per analysed participant: participant_id, arm, value.

    ``measured``: ``measure_rows(trials, <the outcome's measure>)`` when the caller has it already
    (``AnalysedOutcomes`` shares it with the secondary analyses).
    """
    if outcome == "likert":
        rows = likert.loc[likert["item"] == likert_item]
        return rows[VALUE_COLUMNS].astype({"value": "float64"})
    measure = OUTCOME_MEASURE[outcome]
    rows, phase, pre = measured if measured is not None else measure_rows(trials, measure)
    if rows.empty:
        return pd.DataFrame(columns=VALUE_COLUMNS)
    if measure != "gain":
        return accuracy(rows, phase)
    wide = participant_outcomes(rows, pre_phase=pre, post_phase=phase)
    if "gain" not in wide.columns:
        return pd.DataFrame(columns=VALUE_COLUMNS)
    return wide[["participant_id", "arm", "gain"]].rename(columns={"gain": "value"}).dropna()


class AnalysedOutcomes:
    """The measures (``measure_rows``) and outcome values (``outcome_values``) of one set of analysed
    trials and ratings, each computed the first time it is asked for.

    Hypotheses analysing the same participants (the same exclusion rules) share one: each measure is
    then selected from the million-row trial frame once per run, not once per hypothesis and again
    for its secondary analyses. The frames handed out are shared: read them, never change them in place.
    """

    def __init__(self, trials: pd.DataFrame, likert: pd.DataFrame):
        self.trials, self.likert = trials, likert
        self._rows: dict[str, tuple[pd.DataFrame, str, str | None]] = {}
        self._values: dict[tuple[str, str], pd.DataFrame] = {}

    def rows(self, measure: str) -> tuple[pd.DataFrame, str, str | None]:
        """``measure_rows(trials, measure)``."""
        if measure not in self._rows:
            self._rows[measure] = measure_rows(self.trials, measure)
        return self._rows[measure]

    def values(self, *, outcome: str, likert_item: str) -> pd.DataFrame:
        """``outcome_values(trials, likert, outcome=..., likert_item=...)``. A failure (a ValueError for
        a participant in two arms) is not remembered: it is raised again on the next call."""
        key = (outcome, likert_item if outcome == "likert" else "")
        if key not in self._values:
            measured = None if outcome == "likert" else self.rows(OUTCOME_MEASURE[outcome])
            self._values[key] = outcome_values(self.trials, self.likert, outcome=outcome, likert_item=likert_item,
                                               measured=measured)
        return self._values[key]


def arm_values(values: pd.DataFrame, arm: str) -> np.ndarray:
    return values.loc[values["arm"] == arm, "value"].to_numpy(dtype="float64")


def describe(x: np.ndarray, confidence_level: float = 0.95) -> dict:
    """n, mean, SD and a two-sided t interval for the mean (statsmodels DescrStatsW)."""
    out = {"n": int(x.size), "mean": float(x.mean()) if x.size else None,
           "sd": float(x.std(ddof=1)) if x.size > 1 else None, "ci_low": None, "ci_high": None,
           "confidence_level": confidence_level}
    if x.size > 1:
        low, high = DescrStatsW(np.asarray(x, dtype=float)).tconfint_mean(alpha=1 - confidence_level)
        out.update(ci_low=float(low), ci_high=float(high))
    return out


def chance_and_descriptives(trials: pd.DataFrame, arms: list[str], *, num_classes: int, cf_chance: float | None,
                            several_arms: Mapping[str, list[str]]) -> tuple[dict, dict]:
    """Accuracy per arm and measure, and each arm against chance. An arm that shares a participant
    with another arm (a data error) is not computed, with the reason; the other arms are."""
    # Each measure's rows below are copied five columns wide, not with every column of the frame.
    trials = trials[[c for c in ACCURACY_COLUMNS if c in trials.columns]]
    analysed = set(trials["participant_id"].unique()) if several_arms else set()
    several = {p: a for p, a in several_arms.items() if p in analysed}
    refused = {arm for found in several.values() for arm in found}
    reason = several_arms_reason(several) if several else ""
    chance, descriptives = {}, {}
    for measure in (*FORWARD_PHASES, "counterfactual"):
        rows, phase, _ = measure_rows(trials, measure)
        rows = rows.loc[rows["correct"].notna()]
        if rows.empty:
            continue
        if refused:
            rows = rows.loc[~rows["arm"].isin(refused)]
        values = accuracy(rows, phase) if len(rows) else pd.DataFrame(columns=VALUE_COLUMNS)
        level = cf_chance if measure == "counterfactual" else 1.0 / num_classes
        descriptives[measure] = {arm: describe(arm_values(values, arm)) for arm in arms}
        chance[measure] = {}
        for arm in arms:
            x = arm_values(values, arm)
            if arm in refused:
                descriptives[measure][arm] = {"n": None, "mean": None, "sd": None, "ci_low": None, "ci_high": None,
                                              "status": "not_run", "reason": reason}
                chance[measure][arm] = not_computed(reason, "not_run")
            elif x.size < 2 or level is None:
                chance[measure][arm] = not_computed("fewer than 2 analysed participants", "not_run")
            else:
                chance[measure][arm] = {"status": OK,
                                        **chance_level_test(x, chance=level, alternative="greater").to_dict()}
    return chance, descriptives


def counterfactual_chance(trials: pd.DataFrame, *, num_classes: int,
                          candidate_edits: Callable[[Iterable], Mapping]) -> float | None:
    """Mean chance level of the counterfactual trials: 1 / the options each one offered.

    A trial records how many options it offered (``n_options``). For trials without it, choosing
    among edits falls back to the number of candidate edits of that stimulus
    (``candidate_edits(stimuli)`` -> {stimulus: count}), and predicting an edit's output to the
    number of classes.
    """
    rows = trials.loc[trials["task"].isin(COUNTERFACTUAL_TASKS)]
    if rows.empty:
        return None
    options = rows["n_options"].astype("float64")
    choose = options.isna() & (rows["task"] == "counterfactual_choose")
    if choose.any():
        n_edits = candidate_edits(rows.loc[choose, "stimulus"].unique().tolist())
        options[choose] = rows.loc[choose, "stimulus"].map(lambda s: max(n_edits.get(s, 1), 1))
    options = options.fillna(float(num_classes))  # predicting an edit's output: one of the classes
    return float((1.0 / options.clip(lower=1)).mean())
