"""The planner's computations: thin wrappers around ``studyapp.analysis`` that add the family.

Sample size: ``sample_size_two_proportions`` (Cohen's h, normal approximation; R's
``pwr::pwr.2p.test``) or ``sample_size_two_means`` (noncentral t; R's ``pwr::pwr.t.test``). With
m comparisons in a Holm or Bonferroni family, each comparison is planned at alpha / m: Bonferroni
tests every comparison there, and Holm tests its first (smallest) p-value there, so alpha / m is
the level at which every comparison keeps the requested power in the worst case (Holm is never
less powerful than Bonferroni). The simulation (``calibrate``) then shows what the real analysis
with the real correction does.
"""
from __future__ import annotations

import math
import time

from scipy import stats as scipy_stats

from studyapp.analysis import calibrate, sample_size_two_means, sample_size_two_proportions
from studyapp.reports.forms import CORRECTION_LABELS


def family_alpha(*, alpha: float, correction: str, n_comparisons: int) -> float:
    return alpha if correction == "none" else alpha / n_comparisons


def sample_size_result(cleaned: dict) -> dict:
    """n per arm for the form's design; raises ValueError when no sample size exists."""
    n_arms = cleaned["n_arms"]
    m = cleaned.get("n_comparisons") or (n_arms - 1)
    alpha = family_alpha(alpha=cleaned["alpha"], correction=cleaned["correction"], n_comparisons=m)
    common = {"alpha": alpha, "power": cleaned["power"], "ratio": cleaned["ratio"],
              "alternative": cleaned["alternative"]}
    if cleaned["design"] == "proportions":
        size = sample_size_two_proportions(p_control=cleaned["p_control"], p_treatment=cleaned["p_treatment"],
                                           **common)
        effect_name = "Cohen's h"
        r_call = (f"pwr::pwr.2p.test(h = ES.h({cleaned['p_treatment']:g}, {cleaned['p_control']:g}), "
                  f"sig.level = {alpha:.6g}, power = {cleaned['power']:g})")
    else:
        size = sample_size_two_means(effect_size=cleaned["effect_size"], **common)
        effect_name = "Cohen's d"
        r_call = (f"pwr::pwr.t.test(d = {cleaned['effect_size']:g}, sig.level = {alpha:.6g}, "
                  f"power = {cleaned['power']:g})")
    if not (math.isfinite(size.n_control_exact) and size.n_control_exact > 0):
        raise ValueError("the power equation has no solution for these values")
    total = size.n_control + (n_arms - 1) * size.n_treatment
    return {
        "n_control": size.n_control,
        "n_treatment": size.n_treatment,
        "n_control_exact": f"{size.n_control_exact:.5f}",
        "n_treatment_exact": f"{size.n_treatment_exact:.5f}",
        "equal_arms": size.n_control == size.n_treatment,
        "n_total": total,
        "n_arms": n_arms,
        "n_comparisons": m,
        "alpha_family": cleaned["alpha"],
        "alpha_per_comparison": f"{alpha:.6g}",
        "correction": cleaned["correction"],
        "effect_name": effect_name,
        "effect_size": f"{size.effect_size:.4f}",
        "method": size.method,
        "alternative": size.params["alternative"],
        "r_call": r_call,
    }


def _proportion_ci(successes: int, n: int) -> str:
    ci = scipy_stats.binomtest(successes, n).proportion_ci(method="exact")
    return f"[{ci.low:.3f}, {ci.high:.3f}]"


def simulation_result(cleaned: dict) -> dict:
    """Family-wise false-positive rate under the null and power, by simulating studies."""
    arm_accuracy = {"control": cleaned["control_accuracy"], **cleaned["arm_accuracies"]}
    phases = ("pre_test", "post_test") if cleaned["design"] == "pre_post" else ("test",)
    started = time.perf_counter()
    result = calibrate(arm_accuracy=arm_accuracy, n_per_arm=cleaned["n_per_arm"], n_studies=cleaned["n_studies"],
                       seed=cleaned["seed"], alternative=cleaned["alternative"], correction=cleaned["correction"],
                       alpha=cleaned["alpha"], trials_per_phase=cleaned["trials_per_phase"], phases=phases,
                       participant_sd=cleaned["participant_sd"], item_sd=cleaned["item_sd"])
    seconds = time.perf_counter() - started
    n = result.n_studies
    low, high = result.fwer_null_ci
    per_arm = [{"name": arm, "accuracy": f"{arm_accuracy[arm]:.2f}", "power": f"{p:.3f}",
                "ci": _proportion_ci(round(p * n), n)} for arm, p in result.power_per_arm.items()]
    return {
        "n_studies": n,
        "alpha": result.alpha,
        "fwer_null": f"{result.fwer_null:.3f}",
        "fwer_ci": f"[{low:.3f}, {high:.3f}]",
        "fwer_exceeds_alpha": low > result.alpha,
        "power_any": f"{result.power_any:.3f}",
        "power_any_ci": _proportion_ci(round(result.power_any * n), n),
        "power_per_arm": per_arm,
        "correction": CORRECTION_LABELS.get(cleaned["correction"], cleaned["correction"]),
        "outcome": result.params.get("outcome"),
        "n_per_arm": cleaned["n_per_arm"],
        "n_total": cleaned["n_per_arm"] * len(arm_accuracy),
        "seed": result.params.get("seed"),
        "seconds": f"{seconds:.1f}",
    }


def simulation_initial(*, study) -> dict:
    """Simulation defaults for a study as configured: its arms (control first), planned n per arm,
    trials per phase, and the correction and alpha of its primary hypotheses. The true accuracies
    are placeholders for the researcher to set: the effect to detect is theirs to assume."""
    arms = list(study.arms.order_by("position", "id"))
    hypotheses = list(study.hypotheses.all())
    others = [a for a in arms if a.kind != "control"]
    initial = {"control_accuracy": 0.60, "n_per_arm": study.target_per_arm,
               "arm_accuracies": ", ".join(f"{a.name}: 0.70" for a in others) or "explanation: 0.70"}
    trials = (study.config or {}).get("trials_per_phase")
    if isinstance(trials, int) and trials > 0:
        initial["trials_per_phase"] = trials
    if hypotheses:
        initial["correction"] = hypotheses[0].correction
        initial["alpha"] = hypotheses[0].alpha
    return initial
