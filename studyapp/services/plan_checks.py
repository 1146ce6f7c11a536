"""Can the plan run? Checked at Prepare and again inside Launch, before anything is frozen.

A pre-registration that cannot be analysed as frozen is worse than none: it looks like a
commitment and turns into an unplanned change at analysis time. So the checks the analysis would
apply to the frozen plan (``studyapp.services.analysis``) run here on the plan that Launch would
freeze, together with what the analysis cannot see: whether the design collects the outcome each
hypothesis is about, and whether participants get a completion code.
"""
from __future__ import annotations

from studyapp.analysis.outcomes import COUNTERFACTUAL_TASKS
from studyapp.design import DesignError, StudyDesign, design_parse
from studyapp.models import Study
from studyapp.selectors.plans import plan_control_arm, study_plan_document


def _outcome_problem(h: dict, design: StudyDesign) -> str | None:
    """Whether the design collects the data the hypothesis' outcome is computed from."""
    blocks = design.blocks
    outcome = h["outcome"]
    if outcome == "test_accuracy" and not any(b.phase == "test" and b.task == "forward" for b in blocks):
        return ("its outcome is test-phase accuracy, but the design has no forward block in the test phase; add one "
                "or choose another outcome.")
    if outcome == "gain" and not any(b.phase == "pre_test" for b in blocks):
        return ("its outcome is the gain from pre-test to post-test, which needs the within_pre_post design "
                "(pre-test and post-test blocks).")
    if outcome == "counterfactual_accuracy" and not any(
            b.task in COUNTERFACTUAL_TASKS and b.phase not in ("practice", "learning") for b in blocks):
        return ("its outcome is counterfactual accuracy, but the design has no counterfactual block outside "
                "learning and practice.")
    if outcome == "likert":
        items = [q.id for q in design.questionnaire]
        if h["likert_item"] not in items:
            return (f"its outcome is the questionnaire item '{h['likert_item']}', which the questionnaire does not "
                    f"ask (its items: {', '.join(items) or 'none'}).")
    return None


def plan_problems(*, study: Study) -> list[str]:
    """Every reason the plan Launch would freeze could not be analysed, in words (empty: it can)."""
    from studyapp.services.analysis import hypothesis_plan_problems

    plan = study_plan_document(study=study)
    problems = []
    if not study.completion_code.strip():
        problems.append("Set the completion code: participants get it at the end as proof that they finished "
                        "(crowd platforms pay on it).")
    hypotheses = plan["hypotheses"]
    if not hypotheses:
        problems.append("Add at least one hypothesis: the confirmatory analysis tests the pre-registered "
                        "hypotheses, and a study without any has nothing to confirm.")
    arm_names = [a["name"] for a in plan["arms"]]
    control = plan_control_arm(plan)
    try:
        design = design_parse(study.config)
    except DesignError:
        design = None  # the design's own problems are listed by design_problems
    for h in hypotheses:
        found = hypothesis_plan_problems(h, arm_names, control)
        if design is not None:
            found.append(_outcome_problem(h, design))
        problems += [f"Hypothesis {h['label']}: {p}" for p in found if p]
    return problems
