"""Analysis runs: the frozen plan (confirmatory) or any other request (exploratory), on the database.

The statistics live in ``studyapp.analysis`` (Django-free); this service only loads data, applies
the exclusion rules (blind to arm, ``studyapp.services.exclusions``), maps each hypothesis to the
right test, and stores one :class:`AnalysisRun` whose ``results`` hold everything a report needs.

Hypothesis -> test (the participant is the unit of analysis; only completed participants that no
exclusion rule removes are analysed):

* outcome ``test_accuracy``: a participant's accuracy on ``forward`` trials of the ``test`` phase;
  ``gain``: post-test minus pre-test accuracy on ``forward`` trials (Hase & Bansal 2020);
  ``counterfactual_accuracy``: accuracy on ``counterfactual_*`` trials of every phase except
  practice and learning; ``likert``: the participant's rating of ``likert_item``.
* comparison ``arm_vs_control`` (comparator = the plan's control arm unless one is named),
  ``arm_vs_arm``, or ``arm_vs_chance`` (one-sample test against 1/num_classes for accuracy, the
  mean per-trial chance for counterfactual trials, 0 for a gain; not defined for Likert).
* direction ``greater``/``less``/``two_sided``: the named test (``welch_t`` = Welch's t-test,
  ``permutation`` = seeded permutation test, ``mann_whitney``; a Likert outcome always uses
  Mann-Whitney) in that direction; with an equivalence margin a TOST is run too, so a null result
  can become "not_supported". ``equivalence``: TOST with the margin, plus the two-sided test.
* correction: hypotheses are grouped by ``family`` and their p-values adjusted within the family
  with the family's method (each kind of p-value - directional, TOST, two-sided - separately,
  over the hypotheses that have one); ``decide`` turns the adjusted p-values into verdicts.
* ``exclusion_rules`` of a hypothesis are added to (and override) the study's rules for that
  hypothesis only.

Within or between participants (recorded on each hypothesis as ``contrast``): arms are assigned
between participants (one arm per person), so arm-vs-arm and arm-vs-control comparisons, gains
included (one post-minus-pre gain per participant, compared between arms), use the independent-
groups tests above. The gain of one arm against 0 asks whether that arm's participants improved
from pre-test to post-test: each participant is on both sides, so it runs the paired family of
``studyapp.analysis.paired`` on each participant's post-test and pre-test accuracy, with the named
test mapped to its paired equivalent (``welch_t`` -> paired t, ``mann_whitney`` -> Wilcoxon signed-
rank, ``permutation`` -> sign-flip permutation; a margin -> paired TOST); a participant without
both is refused by name, never dropped. A participant found in more than one arm contradicts the
design: every hypothesis about those arms is refused with the reason (and their arms' descriptives
are not computed) instead of guessing where they belong.

Secondary, never used for verdicts: crossed-random-effects logistic model (participants and items;
only with at least MIXED_MIN_TRIALS trials), GEE clustered by participant, two-stage bootstrap CI
(single-phase outcomes), accuracy against chance per arm, and trivial observers next to human
accuracy (always the true label, always the model's majority output, and a cross-validated
logistic regression that sees only the explanation's raw attributions).
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import io
import math
import platform
import uuid
from collections import defaultdict

import numpy as np
from statsmodels.stats.weightstats import DescrStatsW
import pandas as pd
from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max
from django.utils import timezone

from studyapp import analysis as stats
from studyapp.design import StudyDesign
from studyapp.models import AnalysisRun, Explanation, Participant, QuestionnaireAnswer, Study
from studyapp.selectors import ANALYSIS_COLUMNS, study_edits, trials_long_frame
from studyapp.services.errors import ServiceError
from studyapp.services.exclusions import EXCLUSION_RULES, participant_exclusions
from studyapp.services.preregistration import (
    analysis_request_check,
    analysis_request_resolve,
    deviation_as_dict,
    hypothesis_value_problems,
    preregistration_drift,
    study_deviations,
)
from studyapp.selectors.plans import study_plan_document

N_PERMUTATIONS = 9999
N_BOOTSTRAP = 2000
N_ATTRITION_RESAMPLES = 100_000
MIXED_MIN_TRIALS = 200
CV_MAX_FOLDS = 5
COUNTERFACTUAL_TASKS = ("counterfactual_predict", "counterfactual_choose")
FORWARD_PHASES = ("pre_test", "post_test", "test")
SOFTWARE = ("numpy", "scipy", "statsmodels", "gpboost", "pandas", "django", "scikit-learn")
# The paired equivalent of each test a hypothesis can name, for a contrast within participants
# (anything else, e.g. the older "welch", is a t-test as in _two_sample).
PAIRED_TESTS = {"mann_whitney": "wilcoxon_signed_rank", "permutation": "sign_flip_permutation"}
PAIRED_TEST_WORDS = {"paired_t": "paired t-test", "wilcoxon_signed_rank": "Wilcoxon signed-rank test",
                     "sign_flip_permutation": "sign-flip permutation test"}
NAMED_TEST_WORDS = {"welch_t": "Welch's t-test", "welch": "Welch's t-test", "mann_whitney": "the Mann-Whitney U test",
                    "permutation": "a permutation test"}
LABELS = {"confirmatory": "CONFIRMATORY: the pre-registered plan, frozen at launch",
          "exploratory": "EXPLORATORY: not part of the pre-registered plan"}


def software_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in SOFTWARE:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _jsonable(value):
    """Plain JSON: numpy scalars to Python, NaN/inf to None, UUIDs and keys to strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _not_available(reason: str, status: str = "not_available") -> dict:
    return {"status": status, "reason": reason}


# ---------------------------------------------------------------- data


def _trials(study: Study) -> pd.DataFrame:
    """Answered trials in the analysis package's column names; ``item_id`` = stimulus (+ edit).

    Participant ids are canonical UUID text (as in ``_Data``): text hashes in C, ``uuid.UUID``
    objects in Python, which cost seconds in every groupby and isin over a million trials.
    Nullable integer columns become float64 with NaN, the numpy types the statistics expect.
    """
    frame = trials_long_frame(study=study, answered_only=True, columns=ANALYSIS_COLUMNS, uuid_text=True)
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


def _measure_rows(trials: pd.DataFrame, measure: str) -> tuple[pd.DataFrame, str, str | None]:
    """Trials of one accuracy measure, the phase to model and the pre-phase (gain only)."""
    if measure == "counterfactual":
        rows = trials.loc[trials["task"].isin(COUNTERFACTUAL_TASKS) & ~trials["phase"].isin(["practice", "learning"])]
        return rows.assign(phase="counterfactual"), "counterfactual", None
    if measure == "gain":
        rows = trials.loc[(trials["task"] == "forward") & trials["phase"].isin(["pre_test", "post_test"])]
        return rows, "post_test", "pre_test"
    return trials.loc[(trials["task"] == "forward") & (trials["phase"] == measure)], measure, None


def _accuracy(rows: pd.DataFrame, phase: str) -> pd.DataFrame:
    acc = stats.participant_accuracy(rows, phases=[phase])
    return acc[["participant_id", "arm", "accuracy"]].rename(columns={"accuracy": "value"})


OUTCOME_MEASURE = {"test_accuracy": "test", "gain": "gain", "counterfactual_accuracy": "counterfactual"}


def _values(trials, likert, *, outcome: str, likert_item: str) -> pd.DataFrame:
    """One row per analysed participant: participant_id, arm, value."""
    if outcome == "likert":
        rows = likert.loc[likert["item"] == likert_item]
        return rows[["participant_id", "arm", "value"]].astype({"value": "float64"})
    measure = OUTCOME_MEASURE[outcome]
    rows, phase, pre = _measure_rows(trials, measure)
    if rows.empty:
        return pd.DataFrame(columns=["participant_id", "arm", "value"])
    if measure != "gain":
        return _accuracy(rows, phase)
    wide = stats.participant_outcomes(rows, pre_phase=pre, post_phase=phase)
    if "gain" not in wide.columns:
        return pd.DataFrame(columns=["participant_id", "arm", "value"])
    return wide[["participant_id", "arm", "gain"]].rename(columns={"gain": "value"}).dropna()


def _arm_values(values: pd.DataFrame, arm: str) -> np.ndarray:
    return values.loc[values["arm"] == arm, "value"].to_numpy(dtype="float64")


def _describe(x: np.ndarray, confidence_level: float = 0.95) -> dict:
    """n, mean, SD and a two-sided t interval for the mean (statsmodels DescrStatsW)."""
    out = {"n": int(x.size), "mean": float(x.mean()) if x.size else None,
           "sd": float(x.std(ddof=1)) if x.size > 1 else None, "ci_low": None, "ci_high": None,
           "confidence_level": confidence_level}
    if x.size > 1:
        low, high = DescrStatsW(np.asarray(x, dtype=float)).tconfint_mean(alpha=1 - confidence_level)
        out.update(ci_low=float(low), ci_high=float(high))
    return out


# ---------------------------------------------------------------- one hypothesis


def _hypothesis_problems(h: dict, arm_names: list[str], control: str | None) -> list[str]:
    problems = []
    for field in ("comparison", "arm", "comparator", "outcome", "direction", "equivalence_margin", "test",
                  "alpha", "correction", "exclusion_rules"):
        problems += hypothesis_value_problems(field=field, value=h.get(field), arm_names=arm_names)
    if h["direction"] == "equivalence" and h.get("equivalence_margin") is None:
        problems.append("an equivalence hypothesis needs an equivalence_margin")
    if h["outcome"] == "likert" and not h.get("likert_item"):
        problems.append("a Likert outcome needs likert_item")
    if h["comparison"] == "arm_vs_arm" and not h.get("comparator"):
        problems.append("arm_vs_arm needs a comparator arm")
    if h["comparison"] == "arm_vs_control" and not h.get("comparator") and control is None:
        problems.append("the plan has no control arm to compare with")
    if h["comparison"] == "arm_vs_chance" and h["outcome"] == "likert":
        problems.append("arm_vs_chance is not defined for a Likert outcome")
    if h["comparison"] != "arm_vs_chance" and (h.get("comparator") or control) == h.get("arm"):
        problems.append("the arm cannot be compared with itself")
    return problems


# Also checked before Launch (studyapp/services/plan_checks.py): a plan that fails here is never frozen.
hypothesis_plan_problems = _hypothesis_problems


def _two_sample(test: str, x, y, *, alternative: str, seed: int, likert: bool):
    if likert or test == "mann_whitney":
        return stats.likert_mann_whitney(x, y, alternative=alternative)
    if test == "permutation":
        return stats.permutation_test(x, y, alternative=alternative, n_resamples=N_PERMUTATIONS, seed=seed)
    return stats.welch_t_test(x, y, alternative=alternative)


def _one_sample_tost(x, *, chance: float, margin: float, alpha: float) -> dict:
    """TOST of mean(x) against chance +- margin (statsmodels DescrStatsW.ttost_mean)."""
    from statsmodels.stats.weightstats import DescrStatsW

    p, lower, upper = DescrStatsW(np.asarray(x, dtype="float64")).ttost_mean(chance - margin, chance + margin)
    return {"method": "one-sample TOST (statsmodels DescrStatsW.ttost_mean)", "p_value": float(p),
            "alternative": "equivalence", "n": {"participants": int(len(x))},
            "params": {"chance": chance, "margin_low": chance - margin, "margin_high": chance + margin,
                       "alpha": alpha},
            "extra": {"lower_test": {"statistic": float(lower[0]), "p_value": float(lower[1])},
                      "upper_test": {"statistic": float(upper[0]), "p_value": float(upper[1])}}}


def _test_hypothesis(h: dict, values: pd.DataFrame, *, comparator: str | None, chance: float | None,
                     seed: int) -> dict:
    """Raw p-values and effect sizes of one hypothesis (adjustment and verdict come later)."""
    direction, margin, alpha = h["direction"], h.get("equivalence_margin"), h["alpha"]
    likert = h["outcome"] == "likert"
    alt = "two-sided" if direction == "equivalence" else direction
    x = _arm_values(values, h["arm"])
    out = {"descriptives": {h["arm"]: _describe(x)}, "p_value": math.nan, "p_equivalence": None,
           "p_difference": None, "tests": {}, "effect_sizes": {}}
    if comparator is None:  # against chance
        out["descriptives"]["chance"] = chance
        difference = stats.chance_level_test(x, chance=chance, alternative=alt)
        out["effect_sizes"]["mean"] = difference.effect.to_dict()
        out["effect_sizes"]["difference_from_chance"] = float(x.mean() - chance)
        tost = _one_sample_tost(x, chance=chance, margin=margin, alpha=alpha) if margin is not None else None
    else:
        y = _arm_values(values, comparator)
        out["descriptives"][comparator] = _describe(y)
        difference = _two_sample(h["test"], x, y, alternative=alt, seed=seed, likert=likert)
        tost = (stats.tost_equivalence(x, y, margin=margin, alpha=alpha).to_dict() if margin is not None else None)
        if likert:
            out["effect_sizes"]["rank_biserial"] = difference.effect.to_dict()
        welch = difference if difference.method.startswith("Welch") else stats.welch_t_test(x, y)
        out["effect_sizes"]["mean_difference"] = welch.effect.to_dict()
        out["effect_sizes"]["cohens_d"] = stats.cohens_d(x, y).to_dict()
    out["tests"]["difference"] = difference.to_dict()
    _with_equivalence(out, difference=difference, tost=tost, direction=direction)
    return out


def _with_equivalence(out: dict, *, difference, tost: dict | None, direction: str) -> None:
    """The hypothesis's p-value: the equivalence test's for an equivalence hypothesis, else the difference test's."""
    if tost is not None:
        out["tests"]["equivalence"] = tost
    if direction == "equivalence":
        out["p_value"], out["p_difference"] = tost["p_value"], difference.p_value
    else:
        out["p_value"] = difference.p_value
        out["p_equivalence"] = tost["p_value"] if tost is not None else None


# ---------------------------------------------------------------- within or between participants


@dataclasses.dataclass(frozen=True)
class _Contrast:
    """What one hypothesis compares, and whether the same participants are on both sides."""

    kind: str  # between_participants, within_participants or against_a_value
    factor: str | None  # the column that tells the two sides apart: arm or phase
    condition: str | None
    comparator: str | None
    why: str


def _contrast(h: dict, comparator: str | None, design: str) -> _Contrast:
    arm = h["arm"]
    if h["comparison"] == "arm_vs_chance" and h["outcome"] == "gain":
        return _Contrast(
            "within_participants", "phase", "post_test", "pre_test",
            f"the gain of '{arm}' against 0 asks whether its participants improved from pre-test to post-test; "
            f"each of them answered both, so each one's post-test accuracy is paired with their own pre-test "
            f"accuracy (design: {design})")
    if comparator is None:
        return _Contrast("against_a_value", None, arm, None,
                         f"the participants of '{arm}' against a fixed value, one value per participant")
    values = ("gains (post-test minus pre-test, one per participant)" if h["outcome"] == "gain"
              else "values, one per participant")
    return _Contrast("between_participants", "arm", arm, comparator,
                     f"each participant is assigned to one arm, so '{arm}' and '{comparator}' are independent "
                     f"groups; their {values} are compared (design: {design})")


def _phase_pairs(trials: pd.DataFrame, contrast: _Contrast, arm: str) -> stats.PairedSample:
    """Each analysed participant of ``arm``: accuracy in the contrast's condition and comparator phase.

    ``paired_sample`` refuses, by name, a participant without both or with two values in one.
    """
    rows, _, _ = _measure_rows(trials, "gain")
    rows = rows.loc[rows["arm"] == arm]
    long = stats.participant_accuracy(rows, phases=[contrast.comparator, contrast.condition])
    return stats.paired_sample(long, condition=contrast.condition, comparator=contrast.comparator,
                               columns=stats.LongColumns(condition="phase"))


def _paired_test(h: dict, sample: stats.PairedSample, *, seed: int) -> dict:
    """Raw p-values and effect sizes of a hypothesis about a contrast within participants: the
    named test's paired equivalent on the differences (condition - comparator)."""
    direction, margin, alpha = h["direction"], h.get("equivalence_margin"), h["alpha"]
    alt = "two-sided" if direction == "equivalence" else direction
    paired = PAIRED_TESTS.get(h["test"], "paired_t")
    if paired == "wilcoxon_signed_rank":
        difference = stats.wilcoxon_signed_rank(sample, alternative=alt)
    elif paired == "sign_flip_permutation":
        difference = stats.sign_flip_permutation_test(sample, alternative=alt, n_resamples=N_PERMUTATIONS, seed=seed)
    else:
        difference = stats.paired_t_test(sample, alternative=alt)
    t_test = difference if paired == "paired_t" else stats.paired_t_test(sample)
    tost = stats.paired_tost(sample, margin=margin, alpha=alpha).to_dict() if margin is not None else None
    out = {"descriptives": {h["arm"]: _describe(sample.differences)}, "p_value": math.nan, "p_equivalence": None,
           "p_difference": None, "tests": {"difference": difference.to_dict()},
           "effect_sizes": {"mean_difference": t_test.effect.to_dict(),
                            "cohens_dz": {"name": "cohens_dz", "estimate": t_test.extra["cohens_dz"],
                                          "method": "mean of the differences / their SD"}}}
    if paired == "wilcoxon_signed_rank":
        out["effect_sizes"]["rank_biserial"] = difference.effect.to_dict()
    _with_equivalence(out, difference=difference, tost=tost, direction=direction)
    named = NAMED_TEST_WORDS.get(h["test"], h["test"])
    ran = PAIRED_TEST_WORDS[paired] + (" and paired TOST" if tost is not None else "")
    out["paired"] = {
        "test": paired, "tost": tost is not None, "named_test": h["test"], "n_pairs": sample.n,
        "condition": sample.condition, "comparator": sample.comparator,
        "descriptives": {sample.condition: _describe(sample.condition_values),
                         sample.comparator: _describe(sample.comparator_values)},
        "why": f"the plan names {named}; the same participants are on both sides, so its paired equivalent ran "
               f"({ran}) on {sample.n} pairs",
    }
    return out


def _several_arms(*frames: pd.DataFrame) -> dict[str, list[str]]:
    """participant_id -> the arms they appear in, for every participant found in more than one."""
    pairs = [f[["participant_id", "arm"]].drop_duplicates() for f in frames if len(f)]
    if not pairs:
        return {}
    pairs = pd.concat(pairs, ignore_index=True).drop_duplicates()
    several = pairs.loc[pairs["participant_id"].duplicated(keep=False)]
    return {str(p): sorted(str(a) for a in arms) for p, arms in several.groupby("participant_id")["arm"]}


def _several_arms_reason(found: dict[str, list[str]]) -> str:
    shown = "; ".join(f"{p} in {' and '.join(arms)}" for p, arms in list(found.items())[:5])
    more = f" and {len(found) - 5} more" if len(found) > 5 else ""
    return (f"{len(found)} analysed participant{'s appear' if len(found) != 1 else ' appears'} in more than one "
            f"arm ({shown}{more}). Arms are assigned between participants (each person is in one arm), so these "
            "data contradict the study's design; this was not computed rather than guess which arm they belong to "
            "or leave their answers out. Find out how they came to be in two arms (a repeated enrollment, a "
            "mislabelled import) and correct the data.")


# ---------------------------------------------------------------- families and verdicts


def _adjust(entries: list[dict], key: str, method: str, alpha: float):
    present = [e for e in entries if e.get(key) is not None]
    if not present:
        return None, {}
    adjusted = stats.adjust_pvalues([e[key] if e[key] is not None else math.nan for e in present],
                                    method=method, alpha=alpha, labels=[e["label"] for e in present])
    values = {e["label"]: (None if math.isnan(v) else float(v)) for e, v in zip(present, adjusted.adjusted)}
    return adjusted.to_dict(), values


def _families(entries: list[dict]) -> dict:
    by_family: dict[str, list[dict]] = defaultdict(list)
    for entry in entries:
        by_family[entry["family"]].append(entry)
    families = {}
    for family, members in sorted(by_family.items()):
        methods = sorted({m["correction"] for m in members})
        warnings = []
        if len(methods) > 1:
            warnings.append(f"hypotheses of family '{family}' name different corrections {methods}; "
                            f"'{members[0]['correction']}' (of {members[0]['label']}) was used")
        method = members[0]["correction"]
        alpha = members[0]["alpha"]
        if method not in stats.CORRECTION_METHODS:
            for member in members:
                member["error"] = member.get("error") or f"unknown correction {method!r} for family '{family}'"
        family_result = {"correction": method, "labels": [m["label"] for m in members], "warnings": warnings}
        adjusted = {}
        for key in ("p_value", "p_equivalence", "p_difference"):
            family_result[f"adjusted_{key}"], adjusted[key] = _adjust(members, key, method, alpha)
        for member in members:
            if member.get("error"):
                member.update(p_adjusted=None, p_equivalence_adjusted=None, p_difference_adjusted=None,
                              decision={"verdict": "inconclusive", "reason": f"not tested: {member['error']}",
                                        "alpha": member["alpha"]})
                continue
            spec = stats.HypothesisSpec(name=member["label"], kind=member["direction"], alpha=member["alpha"],
                                        margin=member.get("equivalence_margin"))
            p = adjusted["p_value"].get(member["label"])
            decision = stats.decide(spec, p_adjusted=math.nan if p is None else p,
                                    p_equivalence_adjusted=adjusted["p_equivalence"].get(member["label"]),
                                    p_difference_adjusted=adjusted["p_difference"].get(member["label"]))
            member["p_adjusted"] = p
            member["p_equivalence_adjusted"] = adjusted["p_equivalence"].get(member["label"])
            member["p_difference_adjusted"] = adjusted["p_difference"].get(member["label"])
            member["decision"] = {"verdict": decision.verdict, "reason": decision.reason, "alpha": decision.alpha}
        families[family] = family_result
    return families


# ---------------------------------------------------------------- secondary analyses


def _secondary(h: dict, trials: pd.DataFrame, *, comparator: str, seed: int) -> dict:
    rows, phase, pre = _measure_rows(trials, OUTCOME_MEASURE[h["outcome"]])
    rows = rows.loc[rows["arm"].isin([h["arm"], comparator]) & rows["correct"].notna()]
    alt = "two-sided" if h["direction"] == "equivalence" else h["direction"]
    per_arm = rows.groupby("arm")["participant_id"].nunique()
    if min(per_arm.get(h["arm"], 0), per_arm.get(comparator, 0)) < 2:
        reason = "each arm needs at least 2 analysed participants with trials"
        return {name: _not_available(reason, "not_run") for name in ("mixed_logistic", "gee", "bootstrap")}
    out = {}
    kwargs = {"control": comparator, "phase": phase, "pre_phase": pre, "arms": [h["arm"]], "alternative": alt}
    if len(rows) < MIXED_MIN_TRIALS:
        out["mixed_logistic"] = _not_available(f"{len(rows)} trials, fewer than {MIXED_MIN_TRIALS}", "not_run")
    elif len(rows) > settings.ANALYSIS_MIXED_MAX_TRIALS:
        # The Laplace fit grows superlinearly (about 45 s at 200,000 trials here): past the limit it
        # would hold the report request for minutes. The primary test does not depend on it.
        out["mixed_logistic"] = _not_available(
            f"{len(rows)} trials exceed ANALYSIS_MIXED_MAX_TRIALS={settings.ANALYSIS_MIXED_MAX_TRIALS}; "
            "raise that setting to fit the mixed model on this study (it takes minutes)", "not_run")
    else:
        out["mixed_logistic"] = _guard(lambda: stats.crossed_mixed_logistic(rows, **kwargs)[h["arm"]].to_dict())
    out["gee"] = _guard(lambda: stats.gee_logistic(rows, **kwargs)[h["arm"]].to_dict())
    if pre is not None:
        out["bootstrap"] = _not_available("the two-stage bootstrap is for single-phase accuracy, not a gain",
                                          "not_applicable")
    else:
        out["bootstrap"] = _guard(lambda: dataclasses.asdict(stats.two_stage_bootstrap(
            rows, treatment=h["arm"], control=comparator, phase=phase, seed=seed, n_resamples=N_BOOTSTRAP)))
    return out


def _guard(compute) -> dict:
    """Run a secondary computation; a failure is recorded, it must not sink the whole run."""
    try:
        result = compute()
    except Exception as exc:
        return _not_available(f"{exc.__class__.__name__}: {exc}", "failed")
    return result if "status" in result else {"status": "ok", **result}


def _chance_and_descriptives(trials: pd.DataFrame, arms: list[str], *, num_classes: int,
                             cf_chance: float | None, several_arms: dict[str, list[str]]) -> tuple[dict, dict]:
    """Accuracy per arm and measure, and each arm against chance. An arm that shares a participant
    with another arm (a data error) is not computed, with the reason; the other arms are."""
    analysed = set(trials["participant_id"]) if several_arms else set()
    several = {p: a for p, a in several_arms.items() if p in analysed}
    refused = {arm for found in several.values() for arm in found}
    reason = _several_arms_reason(several) if several else ""
    chance, descriptives = {}, {}
    for measure in (*FORWARD_PHASES, "counterfactual"):
        rows, phase, _ = _measure_rows(trials, measure)
        rows = rows.loc[rows["correct"].notna()]
        if rows.empty:
            continue
        if refused:
            rows = rows.loc[~rows["arm"].isin(refused)]
        values = _accuracy(rows, phase) if len(rows) else pd.DataFrame(columns=["participant_id", "arm", "value"])
        level = cf_chance if measure == "counterfactual" else 1.0 / num_classes
        descriptives[measure] = {arm: _describe(_arm_values(values, arm)) for arm in arms}
        chance[measure] = {}
        for arm in arms:
            x = _arm_values(values, arm)
            if arm in refused:
                descriptives[measure][arm] = {"n": None, "mean": None, "sd": None, "ci_low": None, "ci_high": None,
                                              "status": "not_run", "reason": reason}
                chance[measure][arm] = _not_available(reason, "not_run")
            elif x.size < 2 or level is None:
                chance[measure][arm] = _not_available("fewer than 2 analysed participants", "not_run")
            else:
                chance[measure][arm] = {"status": "ok",
                                        **stats.chance_level_test(x, chance=level, alternative="greater").to_dict()}
    return chance, descriptives


def _counterfactual_chance(trials: pd.DataFrame, study: Study, num_classes: int) -> float | None:
    """Mean chance level of the counterfactual trials: 1 / the options each one offered.

    A trial records how many options it offered (``n_options``). For trials without it, choosing
    among edits falls back to the number of the study's candidate edits of that stimulus, and
    predicting an edit's output to the number of classes.
    """
    rows = trials.loc[trials["task"].isin(COUNTERFACTUAL_TASKS)]
    if rows.empty:
        return None
    options = rows["n_options"].astype("float64")
    choose = options.isna() & (rows["task"] == "counterfactual_choose")
    if choose.any():
        n_edits = dict(study_edits(study=study, stimuli=rows.loc[choose, "stimulus"].unique().tolist())
                       .values("stimulus_id").annotate(n=Count("pk")).values_list("stimulus_id", "n"))
        options[choose] = rows.loc[choose, "stimulus"].map(lambda s: max(n_edits.get(s, 1), 1))
    options = options.fillna(float(num_classes))  # predicting an edit's output: one of the classes
    return float((1.0 / options.clip(lower=1)).mean())


def _explanation_observer(study: Study, arm: dict, items: pd.DataFrame, seed: int) -> dict:
    if arm["kind"] in ("control", "ood_warning"):
        return _not_available(f"the {arm['kind']} arm shows no explanation")
    stored = dict(Explanation.objects.filter(arm__study=study, arm__name=arm["name"],
                                             stimulus_id__in=items["stimulus"].tolist())
                  .values_list("stimulus_id", "attributions"))
    if not stored:
        return _not_available("no explanations are stored for this arm's items")
    rows = items.loc[items["stimulus"].isin(stored)]
    arrays = [np.load(io.BytesIO(bytes(stored[s])), allow_pickle=False).ravel() for s in rows["stimulus"]]
    if len({a.size for a in arrays}) != 1:
        return _not_available("the explanations of this arm's items differ in size")
    y = rows["model_output"].to_numpy(dtype="int64")
    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2 or counts.min() < 2:
        return _not_available("cross-validation needs at least 2 items of each of at least 2 model outputs")
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = int(min(CV_MAX_FOLDS, counts.min()))
    scores = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
                             np.stack(arrays), y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return {"status": "ok", "accuracy": float(scores.mean()), "fold_accuracies": [float(s) for s in scores],
            "n_items": int(len(rows)), "n_items_without_explanation": int(len(items) - len(rows)),
            "method": "standardized raw attributions -> logistic regression (scikit-learn), stratified "
                      f"{folds}-fold cross-validation predicting the model's output", "seed": seed}


def _baselines(study: Study, trials: pd.DataFrame, arms: list[dict], descriptives: dict, seed: int) -> dict:
    out = {}
    for phase in FORWARD_PHASES:
        rows = trials.loc[(trials["task"] == "forward") & (trials["phase"] == phase) & trials["model_output"].notna()]
        if rows.empty:
            continue
        items = rows.drop_duplicates("stimulus")[["stimulus", "truth", "model_output"]]
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
            "explanation_only_observer": {arm["name"]: _guard(lambda a=arm: _explanation_observer(
                study, a, items, seed)) for arm in arms},
            "human_accuracy": {arm: d["mean"] for arm, d in descriptives.get(phase, {}).items()},
        }
    return out



# ---------------------------------------------------------------- participant flow


def _attrition(table: pd.DataFrame, seed: int, what: str) -> dict:
    table = table.loc[table.sum(axis=1) > 0]
    if len(table) < 2:
        return _not_available(f"{what} needs at least two arms with participants")
    return {"status": "ok", **stats.attrition_test(table, seed=seed, n_resamples=N_ATTRITION_RESAMPLES).to_dict()}


def _participant_flow(people: pd.DataFrame, exclusions: dict, rules: dict, arm_names: list[str], seed: int) -> dict:
    people = people.assign(
        completed=people["status"] == Participant.Status.COMPLETED,
        reasons=people["participant_id"].map(lambda p: exclusions.get(p, [])))
    people["excluded"] = people["completed"] & people["reasons"].map(bool)
    arms = {}
    for arm in arm_names:
        group = people.loc[people["arm"] == arm]
        completers = group.loc[group["completed"]]
        arms[arm] = {
            "enrolled": int(len(group)), "consented": int(group["consented"].sum()),
            "completed": int(len(completers)), "not_completed": int(len(group) - len(completers)),
            "by_status": {str(k): int(v) for k, v in group["status"].value_counts().sort_index().items()},
            "excluded": int(completers["excluded"].sum()),
            "excluded_by_rule": {rule: int(completers["reasons"].map(lambda r, rule=rule: rule in r).sum())
                                 for rule in rules},
            "analysed": int(len(completers) - completers["excluded"].sum()),
        }
    totals = {key: sum(a[key] for a in arms.values())
              for key in ("enrolled", "consented", "completed", "not_completed", "excluded", "analysed")}
    completers = people.loc[people["completed"]]
    return {
        "arms": arms, "totals": totals, "rules": rules,
        "rule_descriptions": {rule: EXCLUSION_RULES[rule] for rule in rules},
        "note": "Exclusions are counted among completers; a participant may break several rules. "
                "Not completing is attrition, not an exclusion.",
        "attrition_test": _attrition(stats.completion_table(people, arms=arm_names), seed, "the attrition test"),
        "exclusion_test": _attrition(
            stats.completion_table(completers.assign(kept=~completers["excluded"]), completed_column="kept",
                                   arms=arm_names).rename(columns={"completed": "analysed",
                                                                   "not_completed": "excluded"}),
            seed, "the exclusion test"),
    }


# ---------------------------------------------------------------- the service


@dataclasses.dataclass
class _Data:
    """Everything loaded once per run. Exclusions are computed per rule set (hypothesis rules add to
    the study's), blind to arm, and cached."""

    study: Study
    rules: dict
    people: pd.DataFrame  # participant_id, arm, status, consented_at, consented
    trials: pd.DataFrame  # every answered trial, analysis column names
    likert: pd.DataFrame  # participant_id, arm, item, value
    arm_names: list[str]
    control: str | None
    num_classes: int
    design: str  # StudyDesign.design of the plan: between or within_pre_post
    several_arms: dict[str, list[str]]  # participants found in more than one arm (a data error)
    _cache: dict = dataclasses.field(default_factory=dict)

    def exclusions(self, extra_rules: dict | None = None) -> dict[str, list[str]]:
        effective = {**self.rules, **(extra_rules or {})}
        key = repr(sorted(effective.items()))
        if key not in self._cache:
            found = participant_exclusions(study=self.study, rules=effective)
            self._cache[key] = {str(p): reasons for p, reasons in found.items()}
        return self._cache[key]

    def analysed(self, extra_rules: dict | None = None) -> set[str]:
        completed = set(self.people.loc[self.people["status"] == Participant.Status.COMPLETED, "participant_id"])
        return {p for p, reasons in self.exclusions(extra_rules).items() if p in completed and not reasons}


def _load(study: Study, rules: dict, *, simulated: bool = False) -> _Data:
    plan = study.frozen_config if study.frozen_config is not None else study_plan_document(study=study)
    arms = plan["arms"]
    # Real and simulated participants are never analysed together (simulated: pilots and demos).
    people = pd.DataFrame.from_records(
        Participant.objects.filter(study=study, simulated=simulated, preview=False).values_list(
            "public_id", "arm__name", "status", "consented_at"),
        columns=["participant_id", "arm", "status", "consented_at"])
    people["consented"] = people["consented_at"].notna()
    likert = pd.DataFrame.from_records(
        QuestionnaireAnswer.objects.filter(participant__study=study, participant__preview=False).values_list(
            "participant__public_id", "participant__arm__name", "item", "value"),
        columns=["participant_id", "arm", "item", "value"])
    # Participants are identified by canonical UUID text throughout a run (see _trials).
    people["participant_id"] = people["participant_id"].map(str).astype("str")
    likert["participant_id"] = likert["participant_id"].map(str).astype("str")
    keep = set(people["participant_id"])
    trials = _trials(study)
    trials = trials.loc[trials["participant_id"].isin(keep)] if len(trials) else trials
    likert = likert.loc[likert["participant_id"].isin(keep)] if len(likert) else likert
    config = (plan.get("study") or {}).get("config") or {}
    return _Data(study=study, rules=rules, people=people, trials=trials, likert=likert,
                 arm_names=[a["name"] for a in arms],
                 control=next((a["name"] for a in arms if a["kind"] == "control"), None),
                 num_classes=len(plan["model"]["class_names"]),
                 design=config.get("design") or StudyDesign.model_fields["design"].default,
                 several_arms=_several_arms(people, trials, likert))


def _run_hypotheses(data: _Data, hypotheses: list[dict], *, cf_chance: float | None,
                    seed: int) -> tuple[list[dict], dict]:
    entries, secondary = [], {}
    for h in hypotheses:
        comparator = None if h["comparison"] == "arm_vs_chance" else (h.get("comparator") or data.control)
        entry = {**h, "comparator": comparator, "error": None}
        entries.append(entry)
        problems = _hypothesis_problems(h, data.arm_names, data.control)
        if problems:
            entry.update(error="; ".join(problems), p_value=math.nan, p_equivalence=None, p_difference=None)
            continue
        contrast = _contrast(h, comparator, data.design)
        entry["contrast"] = {**dataclasses.asdict(contrast), "design": data.design, "named_test": h["test"],
                             "test_run": None}
        keep = data.analysed(h["exclusion_rules"])
        arms = {h["arm"], comparator}
        several = {p: a for p, a in data.several_arms.items() if p in keep and arms.intersection(a)}
        if several:
            reason = _several_arms_reason(several)
            entry.update(error=reason, p_value=math.nan, p_equivalence=None, p_difference=None)
            if comparator is not None and h["outcome"] != "likert":
                secondary[h["label"]] = {name: _not_available(reason, "not_run")
                                         for name in ("mixed_logistic", "gee", "bootstrap")}
            continue
        trials = data.trials.loc[data.trials["participant_id"].isin(keep)]
        likert = data.likert.loc[data.likert["participant_id"].isin(keep)]
        chance = None
        if comparator is None:
            chance = {"gain": 0.0, "counterfactual_accuracy": cf_chance}.get(h["outcome"], 1.0 / data.num_classes)
        try:
            if contrast.kind == "within_participants":
                entry.update(_paired_test(h, _phase_pairs(trials, contrast, h["arm"]), seed=seed))
            else:
                values = _values(trials, likert, outcome=h["outcome"], likert_item=h["likert_item"])
                entry.update(_test_hypothesis(h, values, comparator=comparator, chance=chance, seed=seed))
        except (ValueError, TypeError) as exc:
            if contrast.kind == "within_participants":
                what = f"{contrast.condition} vs {contrast.comparator} of the same participants of '{h['arm']}'"
            else:
                what = f"{h['outcome']} of '{h['arm']}' vs " + (f"'{comparator}'" if comparator else "chance")
            entry.update(error=f"{what} could not be tested: {exc}",
                         p_value=math.nan, p_equivalence=None, p_difference=None)
        entry["contrast"]["test_run"] = ((entry.get("tests") or {}).get("difference") or {}).get("method")
        if comparator is not None and h["outcome"] != "likert":
            secondary[h["label"]] = _secondary(h, trials, comparator=comparator, seed=seed)
    return entries, secondary


def _nobody_to_analyse(data: _Data, hypotheses: list[dict]) -> str | None:
    """Why a confirmatory run would analyse no one, in words; None when someone can be analysed.

    Analysable: a real (not simulated) participant of an arm the plan compares who completed, is
    not excluded by the study's rules and answered something. A confirmatory run is a look at the
    data that stays on the record ("look 2 of 2"), so a look at nobody is refused, not stored.
    """
    compared = {h.get("arm") for h in hypotheses}
    compared |= {h.get("comparator") or data.control for h in hypotheses if h.get("comparison") != "arm_vs_chance"}
    arms = [a for a in data.arm_names if a in compared] or data.arm_names
    people = data.people.loc[data.people["arm"].isin(arms)]
    completed = set(people.loc[people["status"] == Participant.Status.COMPLETED, "participant_id"])
    kept = completed & data.analysed()
    answered = set(data.trials["participant_id"]) | set(data.likert["participant_id"])
    if kept & answered:
        return None
    plural = "s" if len(people) != 1 else ""
    reason = f"of {len(people)} real participant{plural} in those arms, {len(completed)} completed"
    if completed:
        reason += f", {len(completed - kept)} of them excluded by the exclusion rules"
    if kept:
        reason += f", and none of the {len(kept)} remaining answered a trial or a questionnaire item"
    simulated = Participant.objects.filter(study=data.study, simulated=True, preview=False).count()
    if simulated:
        reason += (f" ({simulated} simulated participant{'s are' if simulated != 1 else ' is'} never analysed "
                   "confirmatorily: analyse them as a pilot)")
    return (f"No confirmatory analysis was stored: there is no one to analyse in the compared arms "
            f"({', '.join(arms)}): {reason}. A confirmatory run is a look at the data that stays on the study's "
            "record, so it is refused until participants have completed.")


def _store_run(*, study: Study, kind: str, seed: int, results: dict) -> AnalysisRun:
    """Store the run as the next of its kind for the study (confirmatory look k = k-th stored)."""
    with transaction.atomic():
        # Under the study's row lock: two runs finishing at once get numbers k and k+1, never the
        # same (the unique constraint would refuse the second). Lock order: the study first.
        Study.objects.select_for_update().filter(pk=study.pk).first()
        last = AnalysisRun.objects.filter(study=study, kind=kind).aggregate(last=Max("number"))["last"] or 0
        return AnalysisRun.objects.create(study=study, kind=kind, number=last + 1, plan_sha256=study.frozen_sha256,
                                          seed=seed, results=results, software=results["software"])


def study_analyze(*, study: Study, seed: int = 0, exploratory_spec: dict | None = None,
                  simulated: bool = False) -> AnalysisRun:
    """Run the frozen plan (no spec) or an exploratory request, store and return the AnalysisRun.

    A confirmatory run is refused for a study that was never launched, when the frozen plan no
    longer matches the SHA-256 recorded at launch, and when no participant can be analysed (it
    would stay on the record as a look at the data). Runs are numbered per study and kind. A spec
    (format: the docstring of ``studyapp.services.preregistration``) that reproduces the frozen
    plan exactly is confirmatory; any other spec is exploratory and labelled so in the run, its
    results and each of its hypotheses. An exploratory request may run before launch (pilot data).
    """
    study = Study.objects.select_related("model", "dataset").get(pk=study.pk)
    kind, exploratory_reasons, verified = analysis_request_check(study=study, seed=seed, spec=exploratory_spec)
    hypotheses, rules = analysis_request_resolve(study=study, spec=exploratory_spec)
    if simulated:
        # Simulated participants (pilots, the demo) never enter a confirmatory analysis.
        kind, exploratory_reasons = "exploratory", [*exploratory_reasons, "run on simulated participants only"]
    data = _load(study, rules, simulated=simulated)
    if kind == "exploratory":
        # A request is typed by a person now: tell them at once what is wrong with it. (A frozen
        # plan cannot be fixed, so its untestable hypotheses are reported as inconclusive instead.)
        problems = [f"{h['label']}: {p}" for h in hypotheses
                    for p in _hypothesis_problems(h, data.arm_names, data.control)]
        if problems:
            raise ServiceError(problems)
    else:
        nobody = _nobody_to_analyse(data, hypotheses)
        if nobody:
            raise ServiceError(nobody)

    analysed = data.analysed()
    trials = data.trials.loc[data.trials["participant_id"].isin(analysed)]
    cf_chance = _counterfactual_chance(trials, study, data.num_classes)
    entries, secondary = _run_hypotheses(data, hypotheses, cf_chance=cf_chance, seed=seed)
    families = _families(entries)
    chance, descriptives = _chance_and_descriptives(trials, data.arm_names, num_classes=data.num_classes,
                                                    cf_chance=cf_chance, several_arms=data.several_arms)
    arms = [{"name": a["name"], "kind": a["kind"]}
            for a in (study.frozen_config or study_plan_document(study=study))["arms"]]
    exclusions = data.exclusions()
    results = {
        "kind": kind, "label": LABELS[kind], "exploratory_reasons": exploratory_reasons, "spec": exploratory_spec,
        "plan_sha256": study.frozen_sha256, "plan_verified": verified, "plan_drift": preregistration_drift(study=study),
        "study": {"slug": study.slug, "title": study.title, "state": study.state,
                  "launched_at": study.launched_at.isoformat() if study.launched_at else None,
                  "closed_at": study.closed_at.isoformat() if study.closed_at else None},
        "seed": seed,
        "settings": {"n_permutations": N_PERMUTATIONS, "n_bootstrap": N_BOOTSTRAP,
                     "n_attrition_resamples": N_ATTRITION_RESAMPLES, "mixed_min_trials": MIXED_MIN_TRIALS,
                     "cv_max_folds": CV_MAX_FOLDS, "num_classes": data.num_classes,
                     "counterfactual_chance": cf_chance},
        "arms": arms, "control": data.control, "exclusion_rules": rules, "design": data.design,
        # A data error (see _several_arms_reason): listed so the report can say so above every table.
        "participants_in_several_arms": {p: a for p, a in data.several_arms.items() if p in analysed},
        "exclusions": {str(p): reasons for p, reasons in exclusions.items() if reasons},
        "analysed_participants": len(analysed), "simulated_participants": simulated,
        "participant_flow": _participant_flow(data.people, exclusions, rules, data.arm_names, seed),
        "hypotheses": [{**entry, "kind": kind} for entry in entries],
        "families": families,
        "secondary": secondary,
        "chance": chance,
        "descriptives": descriptives,
        "baselines": _baselines(study, trials, arms, descriptives, seed),
        "deviations": [deviation_as_dict(d) for d in study_deviations(study=study)],
        "software": software_versions(),
        "created_at": timezone.now().isoformat(),
    }
    return _store_run(study=study, kind=kind, seed=seed, results=_jsonable(results))
