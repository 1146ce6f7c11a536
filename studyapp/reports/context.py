"""Template context of a study report: a Study plus its analysis runs, turned into display rows.

The numbers come from ``AnalysisRun.results`` as written by ``studyapp.services.analysis.
study_analyze``; this module only reads and formats them (every number is a preformatted string,
so the staff page and the downloaded file show exactly the same text). Every section is
optional: a run stored by an older version of the service, or a section whose computation
failed, shows "not computed" (with the reason when the results give one) instead of failing.

Results keys read (all optional): ``kind``, ``label``, ``exploratory_reasons``, ``spec.note``,
``plan_sha256``, ``plan_verified``, ``plan_drift``, ``seed``, ``arms`` [{name, kind}],
``control``, ``descriptives`` {measure: {arm: {n, mean, sd[, ci_low, ci_high] | status, reason}}},
``participants_in_several_arms`` {participant: [arms]}, hypotheses' ``paired`` (a within-participant
test: which paired test ran and why, pairs, per-condition descriptives),
``hypotheses`` [..., see :func:`hypothesis_rows`], ``families``, ``secondary`` {label: {analysis:
StatResult dict | {status, reason}}}, ``chance`` {measure: {arm: StatResult dict}},
``participant_flow`` {arms, totals, rule_descriptions, note, attrition_test, exclusion_test},
``baselines`` {phase: {true_label_observer, majority_class_observer, explanation_only_observer,
human_accuracy}}, ``exclusions`` {participant public id: [rules]}, ``deviations``, ``software``.

Exploratory runs are labelled "Exploratory" on their heading, on every table caption and figure
caption, and on every hypothesis row, so a number from them can never be quoted as confirmatory.
"""
from __future__ import annotations

import logging

import math
from collections import defaultdict
from typing import Any

from django.utils.html import format_html
from django.utils.safestring import mark_safe

from studyapp.models import AnalysisJob, AnalysisRun, Hypothesis, Participant, PreregistrationDeviation, QuestionnaireAnswer, Study
from studyapp.reports import plots
from studyapp.services.exclusions import EXCLUSION_RULES

NOT_COMPUTED = "not computed"
DASH = "\u2014"
CONFIDENCE = 0.95
MAX_EXPLORATORY_RUNS = 5  # each run draws its own figures; keeps the page fast
# Measure keys of results["descriptives"] in display order, with their names.
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


# ---------------------------------------------------------------- formatting

logger = logging.getLogger(__name__)


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


def _ordered(mapping: dict, order) -> list[tuple[str, Any]]:
    """Items of a results dict in a fixed order (known keys first, the rest sorted).

    PostgreSQL's jsonb does not keep key order, so the stored order cannot be relied on.
    """
    known = [k for k in order if k in mapping]
    rest = sorted((k for k in mapping if k not in set(known)), key=str)
    return [(k, mapping[k]) for k in known + rest]


def _ok(section) -> bool:
    return isinstance(section, dict) and section.get("status", "ok") == "ok"


def _reason(section) -> str:
    if isinstance(section, dict) and section.get("reason"):
        return f"{NOT_COMPUTED}: {section['reason']}"
    return NOT_COMPUTED


# ---------------------------------------------------------------- sections of one run


def _arms(results: dict, study: Study | None) -> list[dict]:
    arms = results.get("arms")
    if isinstance(arms, list) and arms:
        return [{"name": str(a.get("name")), "kind": a.get("kind", "")} for a in arms if isinstance(a, dict)]
    if study is not None:
        return [{"name": a.name, "kind": a.kind} for a in study.arms.order_by("position", "id")]
    return []


def accuracy_rows(results: dict, arms: list[dict]) -> dict[str, list[dict]]:
    """{measure: [{name, kind, n, estimate, ci_low, ci_high, + formatted}]} in arm order."""
    descriptives = results.get("descriptives") or {}
    out = {}
    for measure in MEASURES:
        per_arm = descriptives.get(measure)
        if not isinstance(per_arm, dict):
            continue
        rows = []
        for arm in arms:
            d = per_arm.get(arm["name"]) or {}
            low, high = d.get("ci_low"), d.get("ci_high")  # two-sided t interval from the analysis
            if not _ok(d):  # e.g. the arm shares a participant with another arm: the reason, not numbers
                rows.append({"name": arm["name"], "kind": arm["kind"], "n": DASH, "estimate": None, "ci_low": None,
                             "ci_high": None, "mean_text": DASH, "sd_text": DASH, "ci_text": _reason(d)})
                continue
            rows.append({
                "name": arm["name"], "kind": arm["kind"], "n": d.get("n", 0),
                "estimate": _num(d.get("mean")), "ci_low": _num(low), "ci_high": _num(high),
                "mean_text": fmt(d.get("mean")), "sd_text": fmt(d.get("sd")), "ci_text": fmt_ci(low, high),
            })
        out[measure] = rows
    return out


def _comparison_text(entry: dict) -> str:
    arm = entry.get("arm", "?")
    contrast = entry.get("contrast") if isinstance(entry.get("contrast"), dict) else {}
    if contrast.get("kind") == "within_participants":
        return (f"{arm}: {MEASURES.get(contrast.get('condition'), contrast.get('condition'))} vs "
                f"{MEASURES.get(contrast.get('comparator'), contrast.get('comparator'))}, same participants")
    if entry.get("comparison") == "arm_vs_chance":
        return f"{arm} vs chance"
    return f"{arm} vs {entry.get('comparator') or entry.get('comparator_resolved') or 'control'}"


def _outcome_text(entry: dict) -> str:
    outcome = entry.get("outcome", "")
    if outcome == "likert":
        return f"Likert item \u201c{entry.get('likert_item', '')}\u201d"
    return dict(Hypothesis.Outcome.choices).get(outcome, outcome or DASH)


def _effect(entry: dict, main_test: dict) -> dict:
    """The effect of the decisive test (its CI matches the test), else the best one available."""
    sizes = entry.get("effect_sizes") or {}
    candidates = [main_test.get("effect")] + [sizes.get(name) for name in EFFECT_PREFERENCE]
    for effect in candidates:
        if isinstance(effect, dict) and _num(effect.get("estimate")) is not None:
            level = _num(effect.get("confidence_level"))
            ci = fmt_ci(effect.get("ci_low"), effect.get("ci_high"))
            if level is not None and ci != DASH:
                ci = f"{level * 100:g}% {ci}"
            return {"name": (effect.get("name") or "").replace("_", " "), "estimate": fmt(effect.get("estimate")),
                    "ci": ci, "method": effect.get("method", "")}
    return {"name": "", "estimate": DASH, "ci": DASH, "method": ""}


def _paired(entry: dict) -> dict | None:
    """A within-participant test: which paired test ran and why, its pairs and the mean difference."""
    paired = entry.get("paired")
    if not isinstance(paired, dict):
        return None
    described = paired.get("descriptives") or {}
    condition, comparator = paired.get("condition"), paired.get("comparator")
    sizes = entry.get("effect_sizes") if isinstance(entry.get("effect_sizes"), dict) else {}
    effect = _effect({"effect_sizes": {"mean_difference": sizes.get("mean_difference")}}, {})
    return {"label": entry.get("label", DASH), "arm": entry.get("arm", DASH),
            "condition": MEASURES.get(condition, condition), "comparator": MEASURES.get(comparator, comparator),
            "n_pairs": paired.get("n_pairs", DASH),
            "condition_mean": fmt((described.get(condition) or {}).get("mean")),
            "comparator_mean": fmt((described.get(comparator) or {}).get("mean")),
            "difference": effect["estimate"], "ci": effect["ci"],
            "why": paired.get("why", "")}


def hypothesis_rows(results: dict, *, exploratory: bool) -> list[dict]:
    """One row per hypothesis: test, raw and adjusted p, effect with CI, verdict, scope."""
    rows = []
    for entry in results.get("hypotheses") or []:
        if not isinstance(entry, dict):
            continue
        decision = entry.get("decision") or {}
        verdict = decision.get("verdict")
        scope = "exploratory" if exploratory or entry.get("kind") == "exploratory" else "confirmatory"
        tests = entry.get("tests") or {}
        main_test = tests.get("equivalence" if entry.get("direction") == "equivalence" else "difference") or {}
        extra_p = []
        for key, label in (("p_equivalence", "TOST"), ("p_difference", "two-sided difference")):
            if _num(entry.get(key)) is not None:
                extra_p.append(f"{label}: p = {fmt_p(entry.get(key))}, adjusted {fmt_p(entry.get(key + '_adjusted'))}")
        rows.append({
            "label": entry.get("label", DASH),
            "statement": entry.get("statement", ""),
            "comparison": _comparison_text(entry),
            "outcome": _outcome_text(entry),
            "direction": entry.get("direction", DASH),
            "margin": fmt(entry.get("equivalence_margin")) if _num(entry.get("equivalence_margin")) is not None else "",
            "test": main_test.get("method") or entry.get("test", DASH),
            "family": entry.get("family", DASH),
            "correction": entry.get("correction", DASH),
            "alpha": fmt(entry.get("alpha"), 3),
            "p_raw": fmt_p(entry.get("p_value")),
            "p_adjusted": fmt_p(entry.get("p_adjusted")),
            "extra_p": extra_p,
            "effect": _effect(entry, main_test),
            "verdict": verdict or "not_computed",
            "verdict_text": VERDICTS.get(verdict, NOT_COMPUTED),
            "reason": entry.get("error") or decision.get("reason", ""),
            "error": entry.get("error"),
            "paired": _paired(entry),
            "scope": scope,
            "scope_text": scope.capitalize(),
        })
    return rows


def _stat_row(name: str, result) -> dict:
    if not _ok(result) or not isinstance(result, dict):
        return {"name": name, "computed": False, "text": _reason(result)}
    effect = result.get("effect") or {}
    if not effect and _num(result.get("estimate")) is not None:  # bootstrap results are flat
        effect = result
    return {"name": name, "computed": True, "method": result.get("method", ""),
            "estimate_name": effect.get("name", "difference"), "estimate": fmt(effect.get("estimate")),
            "ci": fmt_ci(effect.get("ci_low"), effect.get("ci_high")), "p": fmt_p(result.get("p_value")),
            "text": ""}


def secondary_rows(results: dict) -> list[dict]:
    rows = []
    for label, analyses in sorted((results.get("secondary") or {}).items()):
        if not isinstance(analyses, dict):
            continue
        for key, result in _ordered(analyses, SECONDARY_NAMES):
            rows.append({"label": label, **_stat_row(SECONDARY_NAMES.get(key, key), result)})
    return rows


def chance_rows(results: dict, arms: list[dict]) -> list[dict]:
    rows = []
    for measure, per_arm in _ordered(results.get("chance") or {}, MEASURES):
        if not isinstance(per_arm, dict):
            continue
        for arm in arms:
            if arm["name"] in per_arm:
                result = per_arm[arm["name"]]
                row = _stat_row(arm["name"], result)
                chance = (result.get("params") or {}).get("chance") if isinstance(result, dict) else None
                rows.append({"measure": MEASURES.get(measure, measure), "chance": fmt(chance), **row})
    return rows


def _test_summary(result) -> dict:
    if not _ok(result) or not isinstance(result, dict) or _num(result.get("p_value")) is None:
        return {"computed": False, "text": _reason(result)}
    return {"computed": True, "method": result.get("method", ""), "p": fmt_p(result.get("p_value")),
            "statistic": fmt(result.get("statistic"))}


def flow_section(results: dict, arms: list[dict]) -> dict | None:
    flow = results.get("participant_flow")
    if not isinstance(flow, dict):
        return None
    per_arm = flow.get("arms") or {}
    rules = _ordered(flow.get("rule_descriptions") or {}, EXCLUSION_RULES)
    columns = ("enrolled", "consented", "completed", "not_completed", "excluded", "analysed")
    rows = []
    for arm in arms:
        a = per_arm.get(arm["name"])
        if not isinstance(a, dict):
            continue
        by_rule = a.get("excluded_by_rule") or {}
        rows.append({"name": arm["name"], "kind": arm["kind"],
                     "cells": [a.get(c, DASH) for c in columns],
                     "by_rule": [by_rule.get(rule, 0) for rule, _ in rules],
                     "by_status": ", ".join(f"{k}: {v}" for k, v in (a.get("by_status") or {}).items())})
    totals = flow.get("totals") or {}
    return {
        "columns": [c.replace("_", " ") for c in columns],
        "rows": rows,
        "totals": [totals.get(c, DASH) for c in columns],
        "rules": rules,
        "note": flow.get("note", ""),
        "attrition_test": _test_summary(flow.get("attrition_test")),
        "exclusion_test": _test_summary(flow.get("exclusion_test")),
    }


def baseline_sections(results: dict, accuracy: dict[str, list[dict]], arms: list[dict]) -> list[dict]:
    """Per phase: human accuracy per arm next to trivial observers (rows + figure data)."""
    arm_order = [a["name"] for a in arms]
    out = []
    for phase, block in _ordered(results.get("baselines") or {}, MEASURES):
        if not isinstance(block, dict):
            continue
        observers = []
        for key, name in (("true_label_observer", "Always the true label"),
                          ("majority_class_observer", "Always the model's most frequent output")):
            obs = block.get(key)
            if isinstance(obs, dict) and _num(obs.get("accuracy")) is not None:
                observers.append({"name": name, "accuracy": _num(obs["accuracy"]), "text": fmt(obs["accuracy"]),
                                  "description": obs.get("description", "")})
            else:
                observers.append({"name": name, "accuracy": None, "text": _reason(obs), "description": ""})
        for arm, obs in _ordered(block.get("explanation_only_observer") or {}, arm_order):
            name = f"Explanation-only classifier ({arm})"
            if _ok(obs) and _num((obs or {}).get("accuracy")) is not None:
                observers.append({"name": name, "accuracy": _num(obs["accuracy"]), "text": fmt(obs["accuracy"]),
                                  "description": obs.get("method", "")})
            else:
                observers.append({"name": name, "accuracy": None, "text": _reason(obs), "description": ""})
        humans = accuracy.get(phase) or []
        if not humans and isinstance(block.get("human_accuracy"), dict):
            humans = [{"name": a, "kind": "", "estimate": _num(v), "ci_low": None, "ci_high": None,
                       "mean_text": fmt(v), "ci_text": DASH} for a, v in block["human_accuracy"].items()]
        out.append({"phase": phase, "phase_text": MEASURES.get(phase, phase), "n_items": block.get("n_items"),
                    "humans": humans, "observers": observers})
    return out


def rating_counts(*, study: Study, results: dict) -> dict[str, dict[str, dict[int, int]]]:
    """{item: {arm: {rating: count}}} over the participants the run analysed.

    Analysed = completed and not excluded by the run's rules (``results["exclusions"]``), so the
    figure describes the same people as the tests.
    """
    excluded = set((results.get("exclusions") or {}).keys())
    counts: dict[str, dict[str, dict[int, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    answers = (QuestionnaireAnswer.objects
               .filter(participant__study=study, participant__status=Participant.Status.COMPLETED)
               .values_list("participant__public_id", "participant__arm__name", "item", "value")
               .order_by("item", "participant__arm__position", "participant__arm__id"))
    for public_id, arm, item, value in answers:
        if str(public_id) not in excluded:
            counts[item][arm][int(value)] += 1
    return {item: {arm: dict(v) for arm, v in per_arm.items()} for item, per_arm in counts.items()}


def _figure(draw, *args, **kwargs) -> str:
    """One figure's SVG, or a sentence saying it could not be drawn: a figure that fails (a
    matplotlib error on odd input) never takes the report, its download or the other figures down."""
    try:
        return draw(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any drawing failure is reported in place
        logger.exception("report figure %s failed", getattr(draw, "__name__", draw))
        return format_html('<p class="not-computed">This figure could not be drawn ({}: {}).</p>',
                           type(exc).__name__, str(exc)[:200])


def run_title(run: AnalysisRun, *, looks: int | None = None) -> str:
    """"Confirmatory analysis, look 2 of 2" / "Exploratory analysis 3": numbered per study and kind."""
    if run.kind == AnalysisRun.Kind.CONFIRMATORY:
        return f"Confirmatory analysis, look {run.number} of {looks if looks is not None else run.looks()}"
    return f"Exploratory analysis {run.number}"


def run_section(run: AnalysisRun, *, study: Study | None = None, with_ratings: bool = True,
                looks: int | None = None) -> dict:
    """Everything the template shows for one analysis run (``looks``: the study's confirmatory runs)."""
    results = run.results if isinstance(run.results, dict) else {}
    exploratory = run.kind == AnalysisRun.Kind.EXPLORATORY or results.get("kind") == "exploratory"
    arms = plots.control_first(_arms(results, study))
    accuracy = accuracy_rows(results, arms)
    headline = next((m for m in HEADLINE_MEASURES if m in accuracy), None)
    baselines = baseline_sections(results, accuracy, arms)
    prefix = f"run{run.pk or 0}"
    chance_level = None
    num_classes = _num((results.get("settings") or {}).get("num_classes"))
    if num_classes and headline != "counterfactual":
        chance_level = 1.0 / num_classes

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
    ratings = rating_counts(study=study, results=results) if (with_ratings and study is not None) else {}
    if ratings:
        figures["ratings"] = _figure(plots.ratings_plot, ratings, [a["name"] for a in arms], name=f"{prefix}-ratings")
    if baselines:
        first = next((b for b in baselines if b["phase"] == headline), baselines[0])
        figures["baselines"] = _figure(
            plots.baselines_plot, first["humans"], [o for o in first["observers"] if o["accuracy"] is not None],
            name=f"{prefix}-baselines")
        figures["baselines_phase"] = first["phase_text"]

    spec = results.get("spec") if isinstance(results.get("spec"), dict) else {}
    hypotheses = hypothesis_rows(results, exploratory=exploratory)
    return {
        "id": run.pk,
        "anchor": f"run-{run.pk}",
        "kind": "exploratory" if exploratory else "confirmatory",
        "exploratory": exploratory,
        "label": "Exploratory" if exploratory else "Confirmatory",
        "title": run_title(run, looks=looks),
        "number": run.number,
        "banner": results.get("label") or ("EXPLORATORY: not part of the pre-registered plan" if exploratory
                                           else "CONFIRMATORY: the pre-registered plan, frozen at launch"),
        "exploratory_reasons": results.get("exploratory_reasons") or [],
        "note": spec.get("note", ""),
        "created_at": run.created_at,
        "seed": run.seed,
        "plan_sha256": run.plan_sha256 or results.get("plan_sha256", ""),
        "plan_verified": results.get("plan_verified"),
        "plan_drift": results.get("plan_drift") or [],
        "analysed_participants": results.get("analysed_participants"),
        "exclusion_rules": results.get("exclusion_rules"),
        "arms": arms,
        "accuracy": [{"measure": m, "title": MEASURES[m], "rows": rows} for m, rows in accuracy.items()],
        "headline": MEASURES.get(headline, ""),
        "hypotheses": hypotheses,
        "paired": [row["paired"] for row in hypotheses if row["paired"]],
        "several_arms": sorted((results.get("participants_in_several_arms") or {}).items()),
        "has_hypotheses_section": isinstance(results.get("hypotheses"), list),
        "families": [{"name": name, "correction": f.get("correction", DASH), "labels": ", ".join(f.get("labels", [])),
                      "warnings": f.get("warnings", [])}
                     for name, f in sorted((results.get("families") or {}).items()) if isinstance(f, dict)],
        "secondary": secondary_rows(results),
        "chance": chance_rows(results, arms),
        "flow": flow_section(results, arms),
        "baselines": baselines,
        "ratings_items": sorted(ratings),
        "figures": {k: mark_safe(v) if k != "baselines_phase" else v for k, v in figures.items()},
        "software": run.software or results.get("software") or {},
        "settings": results.get("settings") or {},
    }


# ---------------------------------------------------------------- study-level sections


def sanity_section(study: Study) -> dict:
    """The explanation sanity checks (Adebayo et al. 2018) recorded by preparation, if any."""
    sanity = (study.preparation or {}).get("sanity")
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
            rows.append({"name": name, "method": report.get("method", DASH), "verdict": _reason(report),
                         "n_stimuli": DASH, "notes": []})
            continue
        rows.append({"name": name, "method": report.get("method", DASH),
                     "verdict": (report.get("verdict") or NOT_COMPUTED).replace("_", " "),
                     "reason": report.get("verdict_reason") or "", "metric_verdicts": report.get("metric_verdicts") or [],
                     "metric": report.get("primary_metric", ""), "n_stimuli": report.get("n_stimuli", DASH),
                     "seed": report.get("seed", DASH), "notes": report.get("notes") or []})
    return {"computed": True, "text": "", "rows": rows}


def provenance_section(study: Study, run: AnalysisRun | None) -> dict:
    frozen = study.frozen_config or {}
    frozen_model = frozen.get("model") or {}
    frozen_dataset = frozen.get("dataset") or {}
    weights_now, content_now = study.model.weights_sha256, study.dataset.content_sha256
    weights = frozen_model.get("weights_sha256") or weights_now
    content = frozen_dataset.get("content_sha256") or content_now
    deviations = [{
        "recorded_at": d.recorded_at, "hypothesis_label": d.hypothesis_label or "study", "field": d.field,
        "before": d.before, "after": d.after, "reason": d.reason, "recorded_by": d.recorded_by,
    } for d in PreregistrationDeviation.objects.filter(study=study).order_by("recorded_at", "id")]
    software = (run.software or (run.results or {}).get("software") or {}) if run is not None else {}
    return {
        "frozen_sha256": study.frozen_sha256 or NOT_COMPUTED + " (the study has not been launched)",
        "launched_at": study.launched_at,
        "closed_at": study.closed_at,
        "model_name": frozen_model.get("name") or study.model.name,
        "architecture": frozen_model.get("architecture") or study.model.architecture,
        "weights_sha256": weights,
        "weights_changed": bool(frozen_model) and weights != weights_now,
        "dataset_name": frozen_dataset.get("name") or study.dataset.name,
        "content_sha256": content,
        "content_changed": bool(frozen_dataset) and content != content_now,
        "software": sorted(software.items()),
        "seed": run.seed if run is not None else None,
        "deviations": deviations,
    }


def _verdicts(results) -> str:
    rows = hypothesis_rows(results if isinstance(results, dict) else {}, exploratory=False)
    return "; ".join(f"{r['label']}: {r['verdict_text']}" for r in rows) or NOT_COMPUTED


def looks_section(confirmatory: list[AnalysisRun]) -> list[dict]:
    """Every confirmatory look at the data, first to last (they are append-only: none is missing)."""
    return [{"number": run.number, "id": run.pk, "created_at": run.created_at, "seed": run.seed,
             "analysed_participants": (run.results or {}).get("analysed_participants"),
             "verdicts": _verdicts(run.results)}
            for run in confirmatory]


def _runs(study: Study) -> tuple[list[AnalysisRun], list[AnalysisRun]]:
    """(every confirmatory run, first look first; the latest exploratory runs, latest first)."""
    runs = AnalysisRun.objects.filter(study=study)
    confirmatory = list(runs.filter(kind=AnalysisRun.Kind.CONFIRMATORY).order_by("number", "id"))
    exploratory = list(runs.filter(kind=AnalysisRun.Kind.EXPLORATORY).order_by("-created_at", "-id")
                       [:MAX_EXPLORATORY_RUNS])
    return confirmatory, exploratory


def jobs_section(study: Study, *, failed_shown: int = 5) -> dict[str, Any]:
    """Analysis requests still queued or running, and the latest failed ones with their reason
    (the staff page only: the downloadable report is a record of results)."""
    jobs = AnalysisJob.objects.filter(study=study)
    active = list(jobs.filter(status__in=[AnalysisJob.Status.QUEUED, AnalysisJob.Status.RUNNING])
                  .order_by("created_at", "id"))
    failed = list(jobs.filter(status=AnalysisJob.Status.FAILED).order_by("-finished_at", "-id")[:failed_shown])
    return {"active": active, "failed": failed}


def report_context(*, study: Study) -> dict[str, Any]:
    """The whole report: study, latest confirmatory run, exploratory runs, sanity, provenance."""
    study = Study.objects.select_related("model", "dataset").get(pk=study.pk)
    confirmatory, exploratory = _runs(study)
    latest = confirmatory[-1] if confirmatory else None
    n_exploratory = AnalysisRun.objects.filter(study=study, kind=AnalysisRun.Kind.EXPLORATORY).count()
    return {
        "study": study,
        "confirmatory": run_section(latest, study=study, looks=len(confirmatory)) if latest is not None else None,
        # More than one look: every look is listed and the report says what that means.
        "looks": looks_section(confirmatory),
        "exploratory_runs": [run_section(r, study=study) for r in exploratory],
        "exploratory_total": n_exploratory,
        "exploratory_shown": len(exploratory),
        "sanity": sanity_section(study),
        "provenance": provenance_section(study, latest or (exploratory[0] if exploratory else None)),
        "not_computed": NOT_COMPUTED,
    }
