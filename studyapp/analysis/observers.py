"""Trivial observers next to human accuracy: rules that need no explanation, which an explanation
that helps should beat - always the true label, always the model's most frequent output, and a
cross-validated logistic regression that sees only the explanation's raw attributions.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from .outcomes import FORWARD_PHASES
from .run_results import OK, not_computed
from .secondary import guard

CV_MAX_FOLDS = 5
NO_EXPLANATION = ("control", "ood_warning")  # arm kinds that show no explanation
# (arm name, stimulus ids) -> {stimulus id: raw attributions}; the caller reads the stored explanations.
Attributions = Callable[[str, list], Mapping[int, np.ndarray]]


def explanation_observer(arm: Mapping, items: pd.DataFrame, seed: int, *, attributions: Attributions) -> dict:
    """How well the model's output on ``items`` (stimulus, model_output) can be predicted from the arm's
    explanations alone: stratified cross-validated accuracy of a logistic regression."""
    if arm["kind"] in NO_EXPLANATION:
        return not_computed(f"the {arm['kind']} arm shows no explanation")
    stored = attributions(arm["name"], items["stimulus"].tolist())
    if not stored:
        return not_computed("no explanations are stored for this arm's items")
    rows = items.loc[items["stimulus"].isin(stored)]
    arrays = [np.asarray(stored[s]).ravel() for s in rows["stimulus"]]
    if len({a.size for a in arrays}) != 1:
        return not_computed("the explanations of this arm's items differ in size")
    y = rows["model_output"].to_numpy(dtype="int64")
    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2 or counts.min() < 2:
        return not_computed("cross-validation needs at least 2 items of each of at least 2 model outputs")
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = int(min(CV_MAX_FOLDS, counts.min()))
    scores = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
                             np.stack(arrays), y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return {"status": OK, "accuracy": float(scores.mean()), "fold_accuracies": [float(s) for s in scores],
            "n_items": int(len(rows)), "n_items_without_explanation": int(len(items) - len(rows)),
            "method": "standardized raw attributions -> logistic regression (scikit-learn), stratified "
                      f"{folds}-fold cross-validation predicting the model's output", "seed": seed}


def baselines(trials: pd.DataFrame, arms: list[Mapping], descriptives: Mapping, seed: int, *,
              attributions: Attributions) -> dict:
    """{phase: observers and human accuracy per arm} for each forward phase with model outputs."""
    out = {}
    for phase in FORWARD_PHASES:
        # Only the three columns read here are copied, not every column of half a million trials.
        rows = trials.loc[(trials["task"] == "forward") & (trials["phase"] == phase) & trials["model_output"].notna(),
                          ["stimulus", "truth", "model_output"]]
        if rows.empty:
            continue
        items = rows.drop_duplicates("stimulus")
        outputs = items["model_output"].astype(int)
        majority = int(outputs.value_counts().sort_index().idxmax())
        out[phase] = {
            "n_items": int(len(items)),
            "true_label_observer": {
                "accuracy": float((items["truth"].astype(int) == outputs).mean()),
                "description": "always answers the true label (the model's accuracy on these items)"},
            "majority_class_observer": {
                "accuracy": float((outputs == majority).mean()), "class": majority,
                "description": "always answers the model's most frequent output on these items"},
            "explanation_only_observer": {arm["name"]: guard(lambda a=arm: explanation_observer(
                a, items, seed, attributions=attributions)) for arm in arms},
            "human_accuracy": {arm: d["mean"] for arm, d in descriptives.get(phase, {}).items()},
        }
    return out
