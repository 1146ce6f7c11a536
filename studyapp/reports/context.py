"""The study report as template context: typed analysis results turned into display rows.

Pure formatting: the database reads are ``studyapp.selectors.reports`` (``study_report_data`` gives a
``ReportData``; ``report_context`` formats it). The numbers come from each run's
``studyapp.analysis.run_results.RunResults``; every number is a preformatted string, so the staff
page and the downloaded file show exactly the same text. Every section is optional: a run stored by
an older version of the service, or a section whose computation failed, shows "not computed" (with
the reason when the results give one) instead of failing.

Exploratory runs are labelled "Exploratory" on their heading, on every table caption and figure
caption, and on every hypothesis row, so a number from them can never be quoted as confirmatory.
"""
from __future__ import annotations

import logging
import math
from typing import Any

from django.utils.html import format_html
from django.utils.safestring import mark_safe

from studyapp.analysis.run_results import (FLOW_COUNTS, ArmRef, Baselines, Contrast, Describe, Effect, Family, FlowArm,
                                           FlowCounts, HypothesisResult, Observer, Paired, ParticipantFlow, RequestSpec,
                                           RunResults, RunSettings, StatRecord)
from studyapp.models import Hypothesis
from studyapp.reports import plots
from studyapp.selectors.reports import ReportData, RunData
from studyapp.services.exclusions import EXCLUSION_RULES

NOT_COMPUTED = "not computed"
DASH = "\u2014"
CONFIDENCE = 0.95
CONFIRMATORY, EXPLORATORY = "confirmatory", "exploratory"  # AnalysisRun.Kind
# Measure keys of RunResults.descriptives in display order, with their names.
MEASURES = {
    "pre_test": "Pre-test accuracy",
    "post_test": "Post-test accuracy",
    "test": "Test-phase accuracy",
    "counterfactual": "Counterfactual accuracy",
}
# The measure shown in the accuracy figure: the first one present.
HEADLINE_MEASURES = ("test", "post_test", "counterfactual", "pre_test")
VERDICTS = {
    "supported": "Supported",
    "not_supported": "Not supported",
    "equivalent": "Equivalent",
    "inconclusive": "Inconclusive",
}
SECONDARY_NAMES = {
    "mixed_logistic": "Logistic mixed model (crossed random effects: participants, items)",
    "gee": "GEE logistic, clustered by participant",
    "bootstrap": "Two-stage bootstrap (participants, then items)",
}
EFFECT_PREFERENCE = ("mean_difference", "rank_biserial", "mean", "cohens_d")

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- formatting


def _num(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def fmt(value, digits: int = 3) -> str:
    value = _num(value)
    return DASH if value is None else f"{value:.{digits}f}"


def fmt_p(value) -> str:
    value = _num(value)
    if value is None:
        return DASH
    return "< 0.0001" if value < 0.0001 else f"{value:.4f}"


def fmt_ci(low, high, digits: int = 3) -> str:
    """"[low, high]"; a one-sided interval shows its open end as "(-inf" or "+inf)"."""
    low, high = _num(low), _num(high)
    if low is None and high is None:
        return DASH
    left = "(-\u221e" if low is None else f"[{low:.{digits}f}"
    right = "+\u221e)" if high is None else f"{high:.{digits}f}]"
    return f"{left}, {right}"


def _or(value, default):
    """``default`` for a value the run did not store."""
    return default if value is None else value


def _ordered(mapping: dict, order) -> list[tuple[str, Any]]:
    """Items of a results mapping in a fixed order (known keys first, the rest sorted).

    PostgreSQL's jsonb does not keep key order, so the stored order cannot be relied on.
    """
    known = [k for k in order if k in mapping]
    rest = sorted((k for k in mapping if k not in set(known)), key=str)
    return [(k, mapping[k]) for k in known + rest]


def _reason(section) -> str:
    """"not computed", with the reason the run gives for a section it did not compute."""
    reason = section.reason if isinstance(section, (StatRecord, Describe, Observer)) else ""
    return f"{NOT_COMPUTED}: {reason}" if reason else NOT_COMPUTED


# ---------------------------------------------------------------- sections of one run


def _arms(results: RunResults, study_arms: list[dict]) -> list[dict]:
    if results.arms:
        return [{"name": str(a.name), "kind": a.kind} for a in results.arms if isinstance(a, ArmRef)]
    return list(study_arms)


def accuracy_rows(results: RunResults, arms: list[dict]) -> dict[str, list[dict]]:
    """{measure: [{name, kind, n, estimate, ci_low, ci_high, + formatted}]} in arm order."""
    out = {}
    for measure in MEASURES:
        per_arm = results.descriptives.get(measure)
        if not isinstance(per_arm, dict):
            continue
        rows = []
        for arm in arms:
            d = per_arm.get(arm["name"]) or Describe()
            if not isinstance(d, Describe) or not d.ok:  # e.g. the arm shares a participant with another arm
                rows.append({"name": arm["name"], "kind": arm["kind"], "n": DASH, "estimate": None, "ci_low": None,
                             "ci_high": None, "mean_text": DASH, "sd_text": DASH, "ci_text": _reason(d)})
                continue
            rows.append({  # two-sided t interval from the analysis
                "name": arm["name"], "kind": arm["kind"], "n": _or(d.n, 0),
                "estimate": _num(d.mean), "ci_low": _num(d.ci_low), "ci_high": _num(d.ci_high),
                "mean_text": fmt(d.mean), "sd_text": fmt(d.sd), "ci_text": fmt_ci(d.ci_low, d.ci_high),
            })
        out[measure] = rows
    return out


def _comparison_text(entry: HypothesisResult) -> str:
    arm = _or(entry.arm, "?")
    contrast = entry.contrast
    if isinstance(contrast, Contrast) and contrast.kind == "within_participants":
        return (f"{arm}: {MEASURES.get(contrast.condition, contrast.condition)} vs "
                f"{MEASURES.get(contrast.comparator, contrast.comparator)}, same participants")
    if entry.comparison == "arm_vs_chance":
        return f"{arm} vs chance"
    return f"{arm} vs {entry.comparator or entry.comparator_resolved or 'control'}"


def _outcome_text(entry: HypothesisResult) -> str:
    outcome = _or(entry.outcome, "")
    if outcome == "likert":
        return f"Likert item \u201c{_or(entry.likert_item, '')}\u201d"
    return dict(Hypothesis.Outcome.choices).get(outcome, outcome or DASH)


def _effect(candidates) -> dict:
    """The first effect of ``candidates`` with an estimate, with its interval."""
    for effect in candidates:
        if isinstance(effect, Effect) and _num(effect.estimate) is not None:
            level = _num(effect.confidence_level)
            ci = fmt_ci(effect.ci_low, effect.ci_high)
            if level is not None and ci != DASH:
                ci = f"{level * 100:g}% {ci}"
            return {"name": (effect.name or "").replace("_", " "), "estimate": fmt(effect.estimate),
                    "ci": ci, "method": effect.method}
    return {"name": "", "estimate": DASH, "ci": DASH, "method": ""}


def _mean(describe) -> float | None:
    return describe.mean if isinstance(describe, Describe) else None


def _paired(entry: HypothesisResult) -> dict | None:
    """A within-participant test: which paired test ran and why, its pairs and the mean difference."""
    paired = entry.paired
    if not isinstance(paired, Paired):
        return None
    condition, comparator = paired.condition, paired.comparator
    effect = _effect([entry.effect("mean_difference")])
    return {"label": _or(entry.label, DASH), "arm": _or(entry.arm, DASH),
            "condition": MEASURES.get(condition, condition), "comparator": MEASURES.get(comparator, comparator),
            "n_pairs": _or(paired.n_pairs, DASH),
            "condition_mean": fmt(_mean(paired.descriptives.get(condition))),
            "comparator_mean": fmt(_mean(paired.descriptives.get(comparator))),
            "difference": effect["estimate"], "ci": effect["ci"],
            "why": paired.why}


def hypothesis_rows(results: RunResults, *, exploratory: bool) -> list[dict]:
    """One row per hypothesis: test, raw and adjusted p, effect with CI, verdict, scope."""
    rows = []
    for entry in results.hypotheses or ():
        if not isinstance(entry, HypothesisResult):
            continue
        decision = entry.verdict
        scope = EXPLORATORY if exploratory or entry.kind == EXPLORATORY else CONFIRMATORY
        # The decisive test: its effect's interval matches it.
        main_test = entry.test_result("equivalence" if entry.direction == "equivalence" else "difference")
        extra_p = [f"{label}: p = {fmt_p(p)}, adjusted {fmt_p(adjusted)}"
                   for label, p, adjusted in (("TOST", entry.p_equivalence, entry.p_equivalence_adjusted),
                                              ("two-sided difference", entry.p_difference,
                                               entry.p_difference_adjusted))
                   if _num(p) is not None]
        rows.append({
            "label": _or(entry.label, DASH),
            "statement": _or(entry.statement, ""),
            "comparison": _comparison_text(entry),
            "outcome": _outcome_text(entry),
            "direction": _or(entry.direction, DASH),
            "margin": fmt(entry.equivalence_margin) if _num(entry.equivalence_margin) is not None else "",
            "test": main_test.method or _or(entry.test, DASH),
            "family": _or(entry.family, DASH),
            "correction": _or(entry.correction, DASH),
            "alpha": fmt(entry.alpha, 3),
            "p_raw": fmt_p(entry.p_value),
            "p_adjusted": fmt_p(entry.p_adjusted),
            "extra_p": extra_p,
            "effect": _effect([main_test.effect, *(entry.effect(name) for name in EFFECT_PREFERENCE)]),
            "verdict": decision.verdict or "not_computed",
            "verdict_text": VERDICTS.get(decision.verdict, NOT_COMPUTED),
            "reason": entry.error or decision.reason,
            "error": entry.error,
            "paired": _paired(entry),
            "scope": scope,
            "scope_text": scope.capitalize(),
        })
    return rows


def _stat_row(name: str, result) -> dict:
    if not isinstance(result, StatRecord) or not result.ok:
        return {"name": name, "computed": False, "text": _reason(result)}
    effect = result.effect if isinstance(result.effect, Effect) else None
    if effect is None and _num(result.estimate) is not None:  # bootstrap results are flat
        effect = Effect(name="difference", estimate=result.estimate, ci_low=result.ci_low, ci_high=result.ci_high)
    effect = effect or Effect(name="difference")
    return {"name": name, "computed": True, "method": result.method,
            "estimate_name": effect.name, "estimate": fmt(effect.estimate),
            "ci": fmt_ci(effect.ci_low, effect.ci_high), "p": fmt_p(result.p_value), "text": ""}


def secondary_rows(results: RunResults) -> list[dict]:
    rows = []
    for label, analyses in sorted(results.secondary.items()):
        if not isinstance(analyses, dict):
            continue
        for key, result in _ordered(analyses, SECONDARY_NAMES):
            rows.append({"label": label, **_stat_row(SECONDARY_NAMES.get(key, key), result)})
    return rows


def chance_rows(results: RunResults, arms: list[dict]) -> list[dict]:
    rows = []
    for measure, per_arm in _ordered(results.chance, MEASURES):
        if not isinstance(per_arm, dict):
            continue
        for arm in arms:
            if arm["name"] in per_arm:
                result = per_arm[arm["name"]]
                chance = result.params.get("chance") if isinstance(result, StatRecord) else None
                rows.append({"measure": MEASURES.get(measure, measure), "chance": fmt(chance),
                             **_stat_row(arm["name"], result)})
    return rows


def _test_summary(result) -> dict:
    if not isinstance(result, StatRecord) or not result.ok or _num(result.p_value) is None:
        return {"computed": False, "text": _reason(result)}
    return {"computed": True, "method": result.method, "p": fmt_p(result.p_value), "statistic": fmt(result.statistic)}


def _counts(counts) -> list:
    return [_or(v, DASH) for v in counts.counts()] if isinstance(counts, FlowCounts) else [DASH] * len(FLOW_COUNTS)


def flow_section(results: RunResults, arms: list[dict]) -> dict | None:
    flow = results.participant_flow
    if not isinstance(flow, ParticipantFlow):
        return None
    rules = _ordered(flow.rule_descriptions, EXCLUSION_RULES)
    rows = []
    for arm in arms:
        a = flow.arms.get(arm["name"])
        if not isinstance(a, FlowArm):
            continue
        rows.append({"name": arm["name"], "kind": arm["kind"], "cells": _counts(a),
                     "by_rule": [a.excluded_by_rule.get(rule, 0) for rule, _ in rules],
                     "by_status": ", ".join(f"{k}: {v}" for k, v in a.by_status.items())})
    return {
        "columns": [c.replace("_", " ") for c in FLOW_COUNTS],
        "rows": rows,
        "totals": _counts(flow.totals),
        "rules": rules,
        "note": flow.note,
        "attrition_test": _test_summary(flow.attrition_test),
        "exclusion_test": _test_summary(flow.exclusion_test),
    }


def _observer(name: str, obs, *, classifier: bool = False) -> dict:
    """A trivial observer's accuracy; the explanation-only classifier also needs status "ok"."""
    if isinstance(obs, Observer) and (obs.ok or not classifier) and _num(obs.accuracy) is not None:
        return {"name": name, "accuracy": _num(obs.accuracy), "text": fmt(obs.accuracy),
                "description": obs.method if classifier else obs.description}
    return {"name": name, "accuracy": None, "text": _reason(obs), "description": ""}


def baseline_sections(results: RunResults, accuracy: dict[str, list[dict]], arms: list[dict]) -> list[dict]:
    """Per phase: human accuracy per arm next to trivial observers (rows + figure data)."""
    arm_order = [a["name"] for a in arms]
    out = []
    for phase, block in _ordered(results.baselines, MEASURES):
        if not isinstance(block, Baselines):
            continue
        observers = [_observer("Always the true label", block.true_label_observer),
                     _observer("Always the model's most frequent output", block.majority_class_observer)]
        observers += [_observer(f"Explanation-only classifier ({arm})", obs, classifier=True)
                      for arm, obs in _ordered(block.explanation_only_observer, arm_order)]
        humans = accuracy.get(phase) or [
            {"name": a, "kind": "", "estimate": _num(v), "ci_low": None, "ci_high": None, "mean_text": fmt(v),
             "ci_text": DASH} for a, v in block.human_accuracy.items()]
        out.append({"phase": phase, "phase_text": MEASURES.get(phase, phase), "n_items": block.n_items,
                    "humans": humans, "observers": observers})
    return out


def _figure(draw, *args, **kwargs) -> str:
    """One figure's SVG, or a sentence saying it could not be drawn: a figure that fails (a
    matplotlib error on odd input) never takes the report, its download or the other figures down."""
    try:
        return draw(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any drawing failure is reported in place
        logger.exception("report figure %s failed", getattr(draw, "__name__", draw))
        return format_html('<p class="not-computed">This figure could not be drawn ({}: {}).</p>',
                           type(exc).__name__, str(exc)[:200])


def run_title(*, kind: str, number: int, looks: int) -> str:
    """"Confirmatory analysis, look 2 of 2" / "Exploratory analysis 3": numbered per study and kind."""
    if kind == CONFIRMATORY:
        return f"Confirmatory analysis, look {number} of {looks}"
    return f"Exploratory analysis {number}"


def _figures(prefix: str, accuracy: dict, headline: str | None, chance_level: float | None, ratings: dict,
             arms: list[dict], baselines: list[dict]) -> dict:
    figures = {
        "accuracy": _figure(plots.accuracy_plot, accuracy.get(headline, []), chance=chance_level,
                            name=f"{prefix}-accuracy") if headline else "",
        "pre_post": "",
        "ratings": "",
        "baselines": "",
    }
    if "pre_test" in accuracy and "post_test" in accuracy:
        pairs = [{"name": pre["name"], "kind": pre["kind"],
                  "pre": {"estimate": pre["estimate"], "ci_low": pre["ci_low"], "ci_high": pre["ci_high"]},
                  "post": {"estimate": post["estimate"], "ci_low": post["ci_low"], "ci_high": post["ci_high"]}}
                 for pre, post in zip(accuracy["pre_test"], accuracy["post_test"])]
        figures["pre_post"] = _figure(plots.pre_post_plot, pairs, name=f"{prefix}-pre-post")
    if ratings:
        figures["ratings"] = _figure(plots.ratings_plot, ratings, [a["name"] for a in arms], name=f"{prefix}-ratings")
    if baselines:
        first = next((b for b in baselines if b["phase"] == headline), baselines[0])
        figures["baselines"] = _figure(
            plots.baselines_plot, first["humans"], [o for o in first["observers"] if o["accuracy"] is not None],
            name=f"{prefix}-baselines")
        figures["baselines_phase"] = first["phase_text"]
    return {k: mark_safe(v) if k != "baselines_phase" else v for k, v in figures.items()}


def run_section(run: RunData, *, study_arms: list[dict]) -> dict:
    """Everything the template shows for one analysis run (``study_arms``: for a run that stored none)."""
    results = run.results
    exploratory = run.kind == EXPLORATORY or results.exploratory
    arms = plots.control_first(_arms(results, study_arms))
    accuracy = accuracy_rows(results, arms)
    headline = next((m for m in HEADLINE_MEASURES if m in accuracy), None)
    baselines = baseline_sections(results, accuracy, arms)
    num_classes = _num(results.settings.num_classes) if isinstance(results.settings, RunSettings) else None
    chance_level = 1.0 / num_classes if num_classes and headline != "counterfactual" else None
    hypotheses = hypothesis_rows(results, exploratory=exploratory)
    return {
        "id": run.id,
        "anchor": f"run-{run.id}",
        "kind": EXPLORATORY if exploratory else CONFIRMATORY,
        "exploratory": exploratory,
        "label": "Exploratory" if exploratory else "Confirmatory",
        "title": run_title(kind=run.kind, number=run.number, looks=run.looks),
        "number": run.number,
        "banner": results.label or ("EXPLORATORY: not part of the pre-registered plan" if exploratory
                                    else "CONFIRMATORY: the pre-registered plan, frozen at launch"),
        "exploratory_reasons": list(results.exploratory_reasons),
        "note": results.spec.note if isinstance(results.spec, RequestSpec) else "",
        "created_at": run.created_at,
        "seed": run.seed,
        "plan_sha256": run.plan_sha256 or _or(results.plan_sha256, ""),
        "plan_verified": results.plan_verified,
        "plan_drift": list(results.plan_drift),
        "analysed_participants": results.analysed_participants,
        "exclusion_rules": results.exclusion_rules,
        "arms": arms,
        "accuracy": [{"measure": m, "title": MEASURES[m], "rows": rows} for m, rows in accuracy.items()],
        "headline": MEASURES.get(headline, ""),
        "hypotheses": hypotheses,
        "paired": [row["paired"] for row in hypotheses if row["paired"]],
        "several_arms": sorted(results.participants_in_several_arms.items()),
        "has_hypotheses_section": results.hypotheses is not None,
        "families": [{"name": name, "correction": _or(f.correction, DASH), "labels": ", ".join(f.labels),
                      "warnings": list(f.warnings)}
                     for name, f in sorted(results.families.items()) if isinstance(f, Family)],
        "secondary": secondary_rows(results),
        "chance": chance_rows(results, arms),
        "flow": flow_section(results, arms),
        "baselines": baselines,
        "ratings_items": sorted(run.ratings),
        "figures": _figures(f"run{run.id or 0}", accuracy, headline, chance_level, run.ratings, arms, baselines),
        "software": run.software or results.software or {},
        "settings": results.settings,
    }


# ---------------------------------------------------------------- study-level sections


def sanity_section(preparation: dict | None) -> dict:
    """The explanation sanity checks (Adebayo et al. 2018) recorded by preparation, if any."""
    sanity = (preparation or {}).get("sanity")
    if not sanity:
        return {"computed": False, "text": NOT_COMPUTED, "rows": []}
    if isinstance(sanity, dict) and ("verdict" in sanity or "method" in sanity):
        items = [(sanity.get("arm") or sanity.get("method") or DASH, sanity)]
    elif isinstance(sanity, dict):
        items = list(sanity.items())
    elif isinstance(sanity, list):
        items = [(s.get("arm") or s.get("method") or DASH, s) for s in sanity if isinstance(s, dict)]
    else:
        return {"computed": False, "text": NOT_COMPUTED, "rows": []}
    rows = []
    for name, report in items:
        if not isinstance(report, dict):
            rows.append({"name": name, "method": DASH, "verdict": str(report), "n_stimuli": DASH, "notes": []})
            continue
        if report.get("status") not in (None, "ok") and "verdict" not in report:
            reason = report.get("reason")
            rows.append({"name": name, "method": report.get("method", DASH),
                         "verdict": f"{NOT_COMPUTED}: {reason}" if reason else NOT_COMPUTED,
                         "n_stimuli": DASH, "notes": []})
            continue
        rows.append({"name": name, "method": report.get("method", DASH),
                     "verdict": (report.get("verdict") or NOT_COMPUTED).replace("_", " "),
                     "reason": report.get("verdict_reason") or "", "metric_verdicts": report.get("metric_verdicts") or [],
                     "metric": report.get("primary_metric", ""), "n_stimuli": report.get("n_stimuli", DASH),
                     "seed": report.get("seed", DASH), "notes": report.get("notes") or []})
    return {"computed": True, "text": "", "rows": rows}


def provenance_section(study, run: RunData | None, deviations: list[dict]) -> dict:
    """Hashes of the frozen plan, model and dataset (and whether they changed), software, deviations."""
    frozen = study.frozen_config or {}
    frozen_model = frozen.get("model") or {}
    frozen_dataset = frozen.get("dataset") or {}
    model = study.model  # None: the data were collected elsewhere (Study.source external)
    weights_now, content_now = (model.weights_sha256 if model else None), study.dataset.content_sha256
    weights = frozen_model.get("weights_sha256") or weights_now
    content = frozen_dataset.get("content_sha256") or content_now
    software = (run.software or run.results.software or {}) if run is not None else {}
    return {
        "frozen_sha256": study.frozen_sha256 or NOT_COMPUTED + " (the study has not been launched)",
        "launched_at": study.launched_at,
        "closed_at": study.closed_at,
        "model_name": frozen_model.get("name") or (model.name if model else "none: data collected elsewhere"),
        "architecture": frozen_model.get("architecture") or (model.architecture if model else "—"),
        "weights_sha256": weights,
        "weights_changed": bool(frozen_model) and weights != weights_now,
        "dataset_name": frozen_dataset.get("name") or study.dataset.name,
        "content_sha256": content,
        "content_changed": bool(frozen_dataset) and content != content_now,
        "software": sorted(software.items()),
        "seed": run.seed if run is not None else None,
        "deviations": [{**d, "hypothesis_label": d["hypothesis_label"] or "study"} for d in deviations],
    }


def _verdicts(results: RunResults) -> str:
    rows = hypothesis_rows(results, exploratory=False)
    return "; ".join(f"{r['label']}: {r['verdict_text']}" for r in rows) or NOT_COMPUTED


def looks_section(confirmatory: list[RunData]) -> list[dict]:
    """Every confirmatory look at the data, first to last (they are append-only: none is missing)."""
    return [{"number": run.number, "id": run.id, "created_at": run.created_at, "seed": run.seed,
             "analysed_participants": run.results.analysed_participants, "verdicts": _verdicts(run.results)}
            for run in confirmatory]


def report_context(report: ReportData) -> dict[str, Any]:
    """The whole report: study, latest confirmatory run, exploratory runs, sanity, provenance."""
    latest = report.confirmatory[-1] if report.confirmatory else None
    return {
        "study": report.study,
        "confirmatory": run_section(latest, study_arms=report.study_arms) if latest is not None else None,
        # More than one look: every look is listed and the report says what that means.
        "looks": looks_section(report.confirmatory),
        "exploratory_runs": [run_section(r, study_arms=report.study_arms) for r in report.exploratory],
        "exploratory_total": report.exploratory_total,
        "exploratory_shown": len(report.exploratory),
        "sanity": sanity_section(report.study.preparation),
        "provenance": provenance_section(report.study, latest or (report.exploratory[0] if report.exploratory else None),
                                         report.deviations),
        "not_computed": NOT_COMPUTED,
    }
