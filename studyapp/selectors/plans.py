"""The plan a launch freezes, as a read (used by launch, pre-registration checks, analysis, exports)."""
from __future__ import annotations

from studyapp.models import Hypothesis, Study


def study_plan_document(*, study: Study) -> dict:
    """Everything the launch freezes, as plain JSON-able data in a stable order."""
    model = study.model
    return {
        "study": {"slug": study.slug, "title": study.title, "seed": study.seed, "config": study.config,
                  "target_per_arm": study.target_per_arm},
        "model": {"name": model.name, "architecture": model.architecture, "weights_sha256": model.weights_sha256,
                  "hyperparameters": model.hyperparameters, "class_names": model.class_names},
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
