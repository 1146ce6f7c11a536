"""The plan a launch freezes, as a read (used by launch, pre-registration checks, analysis, exports)."""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from django.db.models import QuerySet

from studyapp.models import Hypothesis, PreregistrationDeviation, Study
from studyapp.selectors import external_plan_model


def study_plan_document(*, study: Study) -> dict:
    """Everything the launch freezes, as plain JSON-able data in a stable order."""
    model = study.model
    return {
        "study": {"slug": study.slug, "title": study.title, "seed": study.seed, "config": study.config,
                  "target_per_arm": study.target_per_arm},
        "model": {"name": model.name, "architecture": model.architecture, "weights_sha256": model.weights_sha256,
                  "hyperparameters": model.hyperparameters, "class_names": model.class_names}
        if model is not None else external_plan_model(study=study),  # data collected elsewhere: no model
        "dataset": {"name": study.dataset.name, "content_sha256": study.dataset.content_sha256},
        "arms": [
            {"name": a.name, "kind": a.kind, "method": a.method, "method_config": a.method_config,
             "manipulation": a.manipulation, "manipulation_config": a.manipulation_config,
             "allocation_weight": a.allocation_weight}
            for a in study.arms.order_by("position", "id")
        ],
        "hypotheses": [
            {"label": h.label, "statement": h.statement, "comparison": h.comparison, "arm": h.arm.name,
             "comparator": h.comparator.name if h.comparator_id else None, "outcome": h.outcome,
             "likert_item": h.likert_item, "direction": h.direction,
             "equivalence_margin": h.equivalence_margin, "test": h.test, "alpha": h.alpha,
             "family": h.family, "correction": h.correction, "planned_n_per_arm": h.planned_n_per_arm,
             "stopping_rule": h.stopping_rule, "exclusion_rules": h.exclusion_rules}
            for h in Hypothesis.objects.filter(study=study).select_related("arm", "comparator").order_by("label")
        ],
    }


def study_plan(*, study: Study) -> dict:
    """The frozen plan; before launch, the current (not yet pre-registered) plan."""
    return study.frozen_config if study.frozen_config is not None else study_plan_document(study=study)


def plan_control_arm(plan: dict) -> str | None:
    """The name of the plan's (first) control arm, or None when it has none."""
    return next((a["name"] for a in plan.get("arms") or [] if a.get("kind") == "control"), None)


def study_deviations(*, study: Study) -> QuerySet:
    """The study's deviations from its pre-registration, oldest first."""
    return PreregistrationDeviation.objects.filter(study=study).order_by("recorded_at", "pk")


def deviation_as_dict(deviation: PreregistrationDeviation, *,
                      timestamp: Callable[[datetime], object] | None = datetime.isoformat) -> dict:
    """One deviation as data; ``timestamp`` formats ``recorded_at`` (None keeps the datetime)."""
    return {
        "hypothesis_label": deviation.hypothesis_label, "field": deviation.field, "before": deviation.before,
        "after": deviation.after, "reason": deviation.reason, "recorded_by": deviation.recorded_by,
        "recorded_at": deviation.recorded_at if timestamp is None else timestamp(deviation.recorded_at),
    }


SANITY_MEANING = {
    "model_sensitive": "The maps change when the model's weights are randomized: they depend on the model.",
    "not_model_sensitive": "The maps stay about as similar to the real ones after the model's weights are "
                           "randomized as a map that does not come from this model (an edge map, another input's "
                           "explanation), on at least one way of comparing them: they cannot be shown to explain "
                           "this model. Launching needs an explicit acknowledgement, recorded with the plan.",
    "inconclusive": "The check could not tell whether the maps depend on the model (too few items or too much "
                    "variation). Treat conclusions about this arm with caution, or prepare with more sanity-check "
                    "items.",
}


def plan_review(*, study: Study) -> dict:
    """What the Launch review page shows: the plan as Launch would freeze it (or as it was frozen),
    with each method's sanity verdict explained in words."""
    plan = study.frozen_config if study.frozen_sha256 else study_plan_document(study=study)
    sanity = (study.preparation or {}).get("sanity") or {}
    arms = []
    for arm in plan["arms"]:
        report = sanity.get(arm["method"]) or {}
        verdict = report.get("verdict") if arm["kind"] == "explanation" else None
        arms.append({**arm, "verdict": verdict, "verdict_meaning": SANITY_MEANING.get(verdict, ""),
                     "verdict_reason": report.get("verdict_reason") if verdict else None,
                     "metric_verdicts": (report.get("metric_verdicts") or []) if verdict else [],
                     "checked_config": report.get("config")})
    config = plan["study"]["config"] or {}
    realism = plan.get("placebo_realism") or (study.preparation or {}).get("realism") or {}
    return {"plan": plan, "arms": arms, "blocks": config.get("blocks") or [], "config": config,
            "acknowledgements": plan.get("launch_acknowledgements"),
            "realism": [{"arm": name, **report} for name, report in sorted(realism.items())]}
