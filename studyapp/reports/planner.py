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
import re
import time
from dataclasses import dataclass, field

from studyapp.analysis import (calibrate, sample_size_participant_accuracy, sample_size_two_means,
                               sample_size_two_proportions)
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
    if cleaned["design"] == "accuracy":
        size = sample_size_participant_accuracy(
            p_control=cleaned["p_control"], p_treatment=cleaned["p_treatment"],
            trials_per_participant=cleaned["trials_per_participant"], between_sd=cleaned["between_sd"], **common)
        effect_name = "Effective d (difference / SD of observed participant accuracy)"
        r_call = (f"pwr::pwr.t.test(d = {size.effect_size:.4f}, sig.level = {alpha:.6g}, power = {cleaned['power']:g})"
                  f"  # d from var = sd_b^2 (1 - 1/k) + p (1 - p) / k, k = {cleaned['trials_per_participant']}")
    elif cleaned["design"] == "proportions":
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


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _interval_words(*, level: str, low: float, high: float) -> str:
    return f"with {level}% confidence the true rate lies between {_percent(low)} and {_percent(high)}"


def _fwer_words(result, *, level: str, correction: str) -> str:
    """The null half in a sentence: what happened, the interval, and what it says about alpha."""
    n, alpha = result.n_studies, result.alpha
    low, high = result.fwer_null_ci
    hits = round(result.fwer_null * n)
    if low > alpha:
        verdict = (f"even its lower end is above alpha = {alpha:g}, so with this design the family of tests gives "
                   f"false positives more often than alpha")
    elif high < alpha:
        verdict = f"even its upper end is below alpha = {alpha:g}, so the correction is conservative here"
    else:
        verdict = (f"the interval contains alpha = {alpha:g}, so the rate is consistent with alpha (simulate more "
                   "studies to narrow it)")
    return (f"When no arm differs from control, {hits} of {n} simulated studies ({_percent(result.fwer_null)}) gave at "
            f"least one significant comparison after {correction}; "
            f"{_interval_words(level=level, low=low, high=high)}: {verdict}.")


def _power_words(*, hits: int, n: int, rate: float, ci: tuple[float, float], level: str, what: str) -> str:
    return (f"{what} in {hits} of {n} simulated studies ({_percent(rate)}); "
            f"{_interval_words(level=level, low=ci[0], high=ci[1])}.")


def simulation_result(cleaned: dict) -> dict:
    """Family-wise false-positive rate under the null and power, by simulating studies; each with
    calibrate's Clopper-Pearson interval at the requested level, as numbers and in words."""
    arm_accuracy = {"control": cleaned["control_accuracy"], **cleaned["arm_accuracies"]}
    phases = ("pre_test", "post_test") if cleaned["design"] == "pre_post" else ("test",)
    null_only = bool(cleaned.get("null_only"))
    started = time.perf_counter()
    result = calibrate(arm_accuracy=arm_accuracy, n_per_arm=cleaned["n_per_arm"], n_studies=cleaned["n_studies"],
                       seed=cleaned["seed"], alternative=cleaned["alternative"], correction=cleaned["correction"],
                       alpha=cleaned["alpha"], trials_per_phase=cleaned["trials_per_phase"], phases=phases,
                       participant_sd=cleaned["participant_sd"], item_sd=cleaned["item_sd"], null_only=null_only,
                       workers=cleaned.get("workers") or 1,
                       confidence_level=cleaned.get("confidence_level") or 0.95)
    seconds = time.perf_counter() - started
    n = result.n_studies
    level = f"{100 * result.params['confidence_level']:g}"
    correction = CORRECTION_LABELS.get(cleaned["correction"], cleaned["correction"])
    low, high = result.fwer_null_ci
    out = {
        "n_studies": n,
        "alpha": result.alpha,
        "level": level,
        "null_only": null_only,
        "workers": cleaned.get("workers") or 1,
        "fwer_null": f"{result.fwer_null:.3f}",
        "fwer_ci": f"[{low:.3f}, {high:.3f}]",
        "fwer_exceeds_alpha": low > result.alpha,
        "fwer_words": _fwer_words(result, level=level, correction=correction),
        "correction": correction,
        "outcome": result.params.get("outcome"),
        "n_per_arm": cleaned["n_per_arm"],
        "n_total": cleaned["n_per_arm"] * len(arm_accuracy),
        "seed": result.params.get("seed"),
        "seconds": f"{seconds:.1f}",
    }
    if null_only:
        return out
    control = arm_accuracy["control"]
    per_arm = []
    for arm, power in result.power_per_arm.items():
        ci = result.power_per_arm_ci[arm]
        # An arm as accurate as control has no effect to detect: its "power" is a false-positive rate.
        what = (f"{arm} (true accuracy {arm_accuracy[arm]:.2f}, the same as control, so this is a false-positive "
                f"rate, not power) was significant" if arm_accuracy[arm] == control else
                f"{arm} (true accuracy {arm_accuracy[arm]:.2f}) was detected")
        per_arm.append({"name": arm, "accuracy": f"{arm_accuracy[arm]:.2f}", "power": f"{power:.3f}",
                        "ci": f"[{ci[0]:.3f}, {ci[1]:.3f}]",
                        "words": _power_words(hits=round(power * n), n=n, rate=power, ci=ci, level=level, what=what)})
    any_low, any_high = result.power_any_ci
    out.update(
        power_any=f"{result.power_any:.3f}",
        power_any_ci=f"[{any_low:.3f}, {any_high:.3f}]",
        power_any_words=_power_words(hits=round(result.power_any * n), n=n, rate=result.power_any,
                                     ci=result.power_any_ci, level=level,
                                     what="With the accuracies you entered, at least one arm was detected"),
        power_per_arm=per_arm,
    )
    return out


@dataclass(frozen=True)
class StudyDefaults:
    """Both calculators' starting values for one study's own design, and what each was taken from."""

    size: dict
    simulation: dict
    notes: list[str] = field(default_factory=list)


def study_defaults(*, study) -> StudyDefaults:
    """The planner's starting values from a study as configured: its arms; the trials each
    participant answers for the primary outcome (its typed design, studyapp.design); and the alpha,
    family size, correction, direction and planned n of its primary hypotheses (the family named
    "primary", else the first hypothesis's). The true accuracies and proportions are placeholders
    for the researcher to set: the effect to detect is theirs to assume."""
    arms = list(study.arms.order_by("position", "id"))
    others = [a for a in arms if a.kind != "control"]
    size = {"n_arms": max(len(arms), 2)}
    simulation = {"control_accuracy": 0.60, "n_per_arm": study.target_per_arm,
                  "arm_accuracies": ", ".join(f"{_arm_label(a.name)}: 0.70" for a in others) or "explanation: 0.70"}
    notes = [f"{len(arms)} arms: {', '.join(a.name for a in arms)}." if arms else
             "The study has no arms yet: two are assumed."]
    family = _primary_family(study)
    outcome = family[0].outcome if family else None
    trials = _trials_per_participant(study, outcome)
    if trials is not None:
        simulation.update(trials_per_phase=trials[0], design=trials[1])
        size.update(trials_per_participant=trials[0])
        notes.append(trials[2])
    if family:
        size_values, sim_values, family_notes = _family_defaults(family)
        size.update(size_values)
        simulation.update(sim_values)
        notes += family_notes
    else:
        notes.append(f"No hypotheses yet: {study.target_per_arm} participants per arm (the study's target), "
                     "alpha 0.05 and Holm's correction are assumed.")
    simulation["n_studies"] = _affordable_studies(simulation)
    return StudyDefaults(size=size, simulation=simulation, notes=notes)


def _arm_label(name: str) -> str:
    # The simulation form reads "name: accuracy" separated by commas, semicolons or lines.
    return re.sub(r"[,:;=\n]+", " ", name).strip() or "arm"


def _primary_family(study) -> list:
    hypotheses = sorted(study.hypotheses.all(), key=lambda h: h.label)
    if not hypotheses:
        return []
    name = "primary" if any(h.family == "primary" for h in hypotheses) else hypotheses[0].family
    return [h for h in hypotheses if h.family == name]


def _trials_per_participant(study, outcome: str | None) -> tuple[int, str, str] | None:
    """(trials per participant and phase, the simulation's design, a note), or None when the design
    does not parse (its problems are listed on the study's page)."""
    from studyapp.design import DesignError, design_parse

    try:
        design = design_parse(study.config)
    except DesignError:
        return None
    forward = [b for b in design.blocks if b.task == "forward"]
    if outcome == "gain" or (outcome is None and design.design == "within_pre_post"):
        pre = [b.n_items for b in forward if b.phase == "pre_test"]
        if pre:
            return pre[0], "pre_post", f"{pre[0]} trials in the pre-test and the same in the post-test (the design)."
    if outcome == "counterfactual_accuracy":
        n = sum(b.n_items for b in design.blocks if b.task != "forward" and b.phase not in ("practice", "learning"))
        if n:
            return n, "test", f"{n} counterfactual trials per participant (the design's counterfactual blocks)."
    n = sum(b.n_items for b in forward if b.phase == "test")
    if n:
        return n, "test", f"{n} test trials per participant (the design's test blocks)."
    return None


SIZE_CORRECTIONS = {"holm": "holm", "bonferroni": "bonferroni"}
ALTERNATIVES = {"greater": "greater", "less": "less"}


def _family_defaults(family: list) -> tuple[dict, dict, list[str]]:
    first = family[0]
    m = len(family)
    alpha = min(h.alpha for h in family)
    directions = {h.direction for h in family}
    alternative = ALTERNATIVES.get(first.direction, "two-sided") if len(directions) == 1 else "two-sided"
    n_per_arm = max(h.planned_n_per_arm for h in family)
    size_correction = "none" if m == 1 else SIZE_CORRECTIONS.get(first.correction, "holm")
    label = CORRECTION_LABELS.get(first.correction, first.correction)
    notes = [f"Hypotheses of the family '{first.family}': {', '.join(h.label for h in family)} ({m} comparison"
             f"{'s' if m > 1 else ''}), {label}, alpha {alpha:g}"
             f"{' (the smallest of the family)' if len({h.alpha for h in family}) > 1 else ''}, "
             f"alternative {alternative}; {n_per_arm} participants per arm planned."]
    if m > 1 and first.correction not in SIZE_CORRECTIONS:
        notes.append(f"The sample-size formula plans {label} as alpha / {m} per comparison (as Holm's first step): "
                     "conservative for it; the simulation uses it as it is.")
    if "equivalence" in directions:
        notes.append("Equivalence hypotheses are tested with TOST, which these calculators do not plan: the "
                     "two-sided test is shown instead.")
    size = {"alpha": alpha, "n_comparisons": m, "correction": size_correction, "alternative": alternative}
    simulation = {"alpha": alpha, "correction": first.correction, "alternative": alternative, "n_per_arm": n_per_arm}
    return size, simulation, notes


def _affordable_studies(initial: dict) -> int:
    """The default number of simulated studies, lowered so that the prefilled simulation runs within
    the page's time budget (the form refuses a request above it)."""
    from studyapp.reports.forms import SIMULATION_BUDGET_SECONDS, SimulationForm

    n_studies = SimulationForm.base_fields["n_studies"].initial
    arms = [t for t in re.split(r"[,\n;]", initial["arm_accuracies"]) if t.strip()]
    cleaned = {"arm_accuracies": arms, "n_per_arm": initial["n_per_arm"], "n_studies": n_studies,
               "trials_per_phase": initial.get("trials_per_phase", SimulationForm.base_fields["trials_per_phase"].initial),
               "design": initial.get("design", SimulationForm.base_fields["design"].initial)}
    per_study = SimulationForm.estimated_seconds(cleaned) / n_studies
    return max(10, min(n_studies, int(SIMULATION_BUDGET_SECONDS / per_study)))
