"""Study lifecycle: draft -> preparing -> ready -> live -> closed.

Every transition is a conditional UPDATE (``WHERE state = <from>``), so two concurrent requests
(two admins clicking "launch", a retried task) cannot both move the study: exactly one UPDATE
matches a row, the other gets a clear InvalidTransition.
"""
from __future__ import annotations

import copy

from django.db import transaction
from django.utils import timezone

from explainers.canonical import canonical_sha256
from studyapp.design import DesignError, design_parse
from studyapp.models import Arm, Hypothesis, Study
from studyapp.selectors.plans import study_plan_document
from studyapp.services.errors import InvalidTransition, ServiceError
from studyapp.services.plan_checks import plan_problems

State = Study.State

TRANSITIONS: dict[str, tuple[str, ...]] = {
    State.DRAFT: (State.PREPARING,),
    State.PREPARING: (State.READY, State.DRAFT),  # back to draft when preparation fails
    State.READY: (State.LIVE, State.DRAFT),  # back to draft to change the configuration
    State.LIVE: (State.CLOSED,),
    State.CLOSED: (),
}
EDITABLE_STATES = (State.DRAFT,)


def _transition(*, study: Study, to: str, extra: dict | None = None) -> Study:
    allowed_from = [s for s, targets in TRANSITIONS.items() if to in targets]
    updated = Study.objects.filter(pk=study.pk, state__in=allowed_from).update(
        state=to, updated_at=timezone.now(), **(extra or {}))
    if updated != 1:
        current = Study.objects.filter(pk=study.pk).values_list("state", flat=True).first()
        raise InvalidTransition(
            f"The study '{study.title}' is {current}; it can only become {to} from "
            f"{' or '.join(allowed_from)}.")
    study.refresh_from_db()
    return study


def study_validate_design(*, study: Study) -> None:
    """Checks that must hold before any computation is spent on a study (ServiceError listing
    every problem)."""
    problems = study_problems(study=study)
    if problems:
        raise ServiceError(problems)


def study_problems(*, study: Study) -> list[str]:
    """Every reason the study cannot be prepared and launched as it stands, in words (empty: none).
    Shown after each save of a draft, enforced by Prepare and (the plan part) by Launch. A study
    whose data were collected elsewhere is never prepared: its problems are its plan's."""
    if study.source == Study.Source.EXTERNAL:
        from studyapp.services.external_import import external_plan_problems

        return external_plan_problems(study=study)
    arms = list(study.arms.all())
    problems = []
    if not any(a.kind == Arm.Kind.CONTROL for a in arms):
        problems.append("Add a control arm (no explanation): every comparison is made against it.")
    if len(arms) < 2:
        problems.append("A study needs at least two arms (a control arm and at least one other).")
    problems += _arm_problems(study=study, arms=arms)
    problems += design_problems(study=study, arms=arms)
    if not study.consent_text.strip():
        problems.append("Write the consent text: participants read it before they agree to take part.")
    problems += _exclusion_rule_problems(study=study)
    problems += plan_problems(study=study)
    if any(a.manipulation != Arm.Manipulation.NONE for a in arms) and not study.debrief_text.strip():
        # Participants shown manipulated explanations must be told so before they leave.
        problems.append("This study shows manipulated explanations: write a debrief text that tells "
                        "participants so.")
    if study.model.dataset_id != study.dataset_id:
        problems.append(f"The model '{study.model.name}' was validated against the dataset "
                        f"'{study.model.dataset.name}', not '{study.dataset.name}'.")
    return problems


def output_conditioned(arm: Arm) -> bool:
    """Aids computed for the model's predicted class: maps of every method (real or manipulated)
    and natural exemplars of the predicted class. Edges and OOD warnings do not depend on it."""
    return arm.kind == Arm.Kind.EXPLANATION or (arm.kind == Arm.Kind.BASELINE and arm.method == "exemplars")


def _edit_settings_problems(*, study: Study, design) -> list[str]:
    """Edit settings that would fail only when the edits are made, after the model and every
    explanation ran: checked before anything is computed."""
    if not any(b.task != "forward" for b in design.blocks):
        return []
    from studyapp.selectors import edit_settings

    settings_ = edit_settings(study=study)
    problems = []
    shape = list(study.dataset.input_shape or [])
    if study.dataset.modality == "image" and "grid" in settings_ and len(shape) == 3:
        rows, cols = settings_["grid"]
        _, h, w = shape
        if rows < 1 or cols < 1 or h % rows or w % cols:
            problems.append(f"Edits: a {rows}x{cols} grid does not divide the {h}x{w} images into equal cells; "
                            f"choose a grid whose rows divide {h} and whose columns divide {w}.")
    if study.dataset.modality == "tabular":
        bad = [q for q in settings_.get("quantiles", []) if not 0 <= q <= 1]
        if bad:
            problems.append(f"Edits: quantiles must lie between 0 and 1; got {', '.join(str(q) for q in bad)}.")
    return problems


def design_problems(*, study: Study, arms: list[Arm]) -> list[str]:
    """The typed design (studyapp.design), and where its blocks may show each arm's aid."""
    try:
        design = design_parse(study.config)
    except DesignError as exc:
        return exc.problems
    problems = _edit_settings_problems(study=study, design=design)
    needed = sum(design.items_needed().values())
    pool = study.dataset.stimuli.filter(split="test").count()
    if needed > pool:
        # Checked before any computation (the item sample would fail only after the model ran).
        problems.append(f"The design needs {needed} distinct items (learning, test and counterfactual items are "
                        f"disjoint) but the test split has {pool}. Lower the blocks' n_items, or import a larger "
                        "test split.")
    leaky = [a.name for a in arms if output_conditioned(a)]
    for number, block in enumerate(design.blocks, start=1):
        if block.task == "forward" and block.show_aid and not block.show_model_output and leaky \
                and not design.acknowledge_aid_leak:
            problems.append(
                f"Block {number} ({block.phase}) asks participants to predict the model's answer while showing "
                f"the aid of {', '.join(repr(n) for n in leaky)}, which is computed for the model's answer and so "
                "points at it. Show aids in learning blocks and counterfactual blocks (Hase & Bansal 2020), or set "
                "acknowledge_aid_leak if the study is about AI-assisted decisions.")
    crowd = design.crowd
    if crowd.source in ("prolific", "sona") and not (study.completion_code and study.screened_out_code
                                                       and study.failed_checks_code):
        problems.append(f"A {crowd.source} study needs three completion codes: completed, screened out and failed "
                        "attention checks (copy them from the study's page there).")
    return problems


def _arm_problems(*, study: Study, arms: list[Arm]) -> list[str]:
    """Each arm must be computable before preparation spends anything on it."""
    from studyapp.services.explanations import arm_problem, placebo_settings_problems

    problems = [p for p in (arm_problem(arm=arm, modality=study.dataset.modality) for arm in arms) if p]
    return problems + placebo_settings_problems(arms=arms, modality=study.dataset.modality)


def _exclusion_rule_problems(*, study: Study) -> list[str]:
    """Exclusion rules are frozen at launch: malformed ones must be caught before that."""
    from studyapp.services.exclusions import exclusion_rules_validate

    problems = [f"Exclusion rules: {p}" for p in exclusion_rules_validate((study.config or {}).get("exclusion_rules", {}))]
    for hypothesis in study.hypotheses.all():
        problems += [f"Hypothesis {hypothesis.label}, exclusion rules: {p}"
                     for p in exclusion_rules_validate(hypothesis.exclusion_rules or {})]
    return problems


def study_prepare(*, study: Study) -> Study:
    """draft -> preparing with the first preparation units stored in the same transaction; after
    commit their messages are sent (the units run in this process in the embedded mode). With the
    broker down nothing fails here: the dispatcher sends them when it is back."""
    from studyapp.services.preparation import preparation_plan, units_go_on_commit

    _refuse_external(study, "prepared (there is no model to run and nothing to show participants)")
    study_validate_design(study=study)
    with transaction.atomic():
        study = _transition(study=study, to=State.PREPARING)
        preparation_plan(study=study)
        units_go_on_commit(study_id=study.pk)
    return study


def study_cancel_preparation(*, study: Study) -> Study:
    """preparing -> draft. Units not done are dropped; what finished units stored (outputs, edits,
    maps, pictures) stays, so the next Prepare resumes from it. A unit still running finds its
    study no longer in preparation and writes nothing."""
    from studyapp.models import PreparationUnit

    with transaction.atomic():
        study = _transition(study=study, to=State.DRAFT, extra={"preparation": {"status": "cancelled"}})
        PreparationUnit.objects.filter(study=study).exclude(status=PreparationUnit.Status.DONE).delete()
    return study


def _refuse_external(study: Study, doing: str) -> None:
    if study.source == Study.Source.EXTERNAL:
        raise ServiceError(f"The study '{study.title}' holds data collected elsewhere: it is not {doing}. Add its "
                           "hypotheses, then freeze its plan (Review the plan and freeze it) and analyse it.")


def study_freeze_external(*, study: Study) -> Study:
    """draft -> closed for a study whose data were collected elsewhere: freeze its plan (the same
    canonical JSON + SHA-256 + time as Launch; the plan names the imported file by its SHA-256) and
    close it, since its data collection is over. Refused, listing every problem, when the plan
    could not be analysed on the imported data (``external_plan_problems``), so a plan that cannot
    run is never frozen. Under the study's row lock, and a conditional UPDATE (``WHERE state =
    draft``): two freezes at once freeze once, the other is told the study is frozen already."""
    from studyapp.services.external_import import external_plan_problems

    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        if locked.source != Study.Source.EXTERNAL:
            raise ServiceError(f"The study '{locked.title}' runs on this platform: it is launched, not frozen "
                               "(prepare it, then launch it from its Launch review page).")
        if locked.state != State.DRAFT:
            raise InvalidTransition(f"The plan of '{locked.title}' is frozen already (the study is {locked.state}).")
        problems = external_plan_problems(study=locked)
        if problems:
            raise ServiceError(problems)
        # Exactly the plan document (nothing added): preregistration_drift compares the two.
        plan = study_plan_document(study=locked)
        now = timezone.now()
        updated = Study.objects.filter(pk=locked.pk, state=State.DRAFT, source=Study.Source.EXTERNAL).update(
            state=State.CLOSED, frozen_config=plan, frozen_sha256=canonical_sha256(plan), launched_at=now,
            closed_at=now, updated_at=now)
        if updated != 1:  # not reachable under the lock; kept so a change of locking fails loudly
            raise InvalidTransition(f"The plan of '{locked.title}' was not frozen: the study changed meanwhile.")
    study.refresh_from_db()
    return study


def study_mark_ready(*, study: Study) -> Study:
    return _transition(study=study, to=State.READY)


def study_back_to_draft(*, study: Study) -> Study:
    return _transition(study=study, to=State.DRAFT)


def study_retry_failed_units(*, study: Study) -> Study:
    """"Retry failed units" of a study in preparation: they get their attempts back and are sent
    after commit (run here in the embedded mode); finished units are kept."""
    from studyapp.services.preparation import preparation_retry_failed, units_go_on_commit

    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        if locked.state != Study.State.PREPARING:
            raise ServiceError([f"The study '{locked.title}' is {locked.state}: only a study in preparation has "
                                "units to retry."])
        if not preparation_retry_failed(study=locked):
            raise ServiceError([f"The preparation of '{locked.title}' has no failed units."])
        units_go_on_commit(study_id=study.pk)
    study.refresh_from_db()
    return study


def sanity_failures(*, study: Study) -> list[str]:
    """Methods of the study's real explanation arms whose maps failed the model-randomization
    sanity check at preparation (``not_model_sensitive``: they do not depend on the model)."""
    sanity = (study.preparation or {}).get("sanity") or {}
    methods = {a.method for a in study.arms.filter(kind=Arm.Kind.EXPLANATION, manipulation=Arm.Manipulation.NONE)}
    return sorted(m for m in methods if (sanity.get(m) or {}).get("verdict") == "not_model_sensitive")


def spotted_placebos(*, study: Study) -> list[str]:
    """Placebo arms whose maps a low-level-feature classifier tells from their real arm's at
    preparation (``placebo_realism`` verdict ``spotted``): participants could too."""
    realism = (study.preparation or {}).get("realism") or {}
    return sorted(name for name, report in realism.items() if (report or {}).get("verdict") == "spotted")


def study_launch(*, study: Study, acknowledge_sanity_failures: bool = False,
                 acknowledge_spotted_placebos: bool = False, by: str = "") -> Study:
    """ready -> live, freezing configuration, arms and hypotheses (canonical JSON + SHA-256 + time).
    Refused, listing every problem, when the plan could not be run (``plan_problems``). An arm whose
    method failed its sanity check launches only with ``acknowledge_sanity_failures``, a placebo
    that its realism check spotted only with ``acknowledge_spotted_placebos``; both are frozen with
    the plan (who acknowledged what), as are the realism checks (classifier, features, AUCs)."""
    _refuse_external(study, "launched (its participants took part elsewhere)")
    with transaction.atomic():
        # Lock the row so arms/hypotheses cannot change between reading the plan and freezing it.
        locked = Study.objects.select_for_update().get(pk=study.pk)
        if locked.state != State.READY:
            raise InvalidTransition(f"The study '{locked.title}' is {locked.state}; only a ready study can be launched.")
        # Again, under the lock: a plan that cannot run is never frozen. (The design and arms
        # were validated by Prepare and cannot change while the study is prepared.)
        problems = plan_problems(study=locked)
        failures = sanity_failures(study=locked)
        spotted = spotted_placebos(study=locked)
        if spotted and not acknowledge_spotted_placebos:
            problems.append(
                f"The placebo realism check tells the maps of {', '.join(spotted)} from their real arm's by how they "
                "look alone, so participants could spot the placebo. Launch from the Launch review page, "
                "acknowledging this; the acknowledgement is recorded with the plan.")
        if failures and not acknowledge_sanity_failures:
            problems.append(
                f"The sanity check found that the maps of {', '.join(failures)} do not depend on the model (they "
                "barely change when its weights are randomized), so they cannot explain it. Launch from the Launch "
                "review page, acknowledging this; the acknowledgement is recorded with the plan.")
        if problems:
            raise ServiceError(problems)
        plan = study_plan_document(study=locked)
        if failures or spotted:
            plan["launch_acknowledgements"] = {"sanity_failures": failures, "spotted_placebos": spotted, "by": by}
        realism = (locked.preparation or {}).get("realism")
        if realism:
            plan["placebo_realism"] = realism
        return _transition(study=locked, to=State.LIVE, extra={
            "frozen_config": plan, "frozen_sha256": canonical_sha256(plan),
            "launched_at": timezone.now()})


def study_close(*, study: Study) -> Study:
    return _transition(study=study, to=State.CLOSED, extra={"closed_at": timezone.now()})


def _free_slug(base: str) -> str:
    stem = f"{base[:70]}-copy"
    taken = set(Study.objects.filter(slug__startswith=stem).values_list("slug", flat=True))
    return next(s for s in (stem, *(f"{stem}-{n}" for n in range(2, 10_000))) if s not in taken)


def _copied_fields(obj, *, skip: tuple[str, ...]) -> dict:
    return {f.name: copy.deepcopy(getattr(obj, f.name)) for f in obj._meta.concrete_fields
            if f.name not in ("id", "created_at", "updated_at", *skip)}


def study_duplicate(*, study: Study, owner=None) -> Study:
    """A new draft with the same design, texts, arms and hypotheses: for a replication, the next
    study, or a change to a launched study (whose plan is frozen). Nothing computed, nobody
    enrolled, a new participant link; the completion codes are left empty, because each study on
    a crowd platform has codes of its own. It belongs to ``owner`` (default: the original's owner)
    and is shared with no one yet."""
    _refuse_external(study, "duplicated (its data come from its file: import the file again for another study)")
    with transaction.atomic():
        duplicate = Study.objects.create(**_copied_fields(study, skip=(
            "slug", "title", "state", "public_id", "frozen_config", "frozen_sha256", "launched_at", "closed_at",
            "preparation", "item_sample", "completion_code", "screened_out_code", "failed_checks_code", "owner")),
            slug=_free_slug(study.slug), title=f"{study.title} (copy)"[:200], owner_id=owner.pk if owner else study.owner_id)
        arms = {arm.pk: Arm.objects.create(**_copied_fields(arm, skip=("study",)), study=duplicate)
                for arm in study.arms.order_by("position", "id")}
        for h in study.hypotheses.order_by("label"):
            Hypothesis.objects.create(**_copied_fields(h, skip=("study", "arm", "comparator")), study=duplicate,
                                      arm=arms[h.arm_id], comparator=arms.get(h.comparator_id))
    return duplicate


def study_set_ingest(*, study: Study, paused: bool, arm: Arm | None = None) -> Study:
    """Pause or resume taking new participants, for the whole study or one arm (the live
    monitor's switch). Participants already enrolled go on; a paused arm gets no new ones."""
    if study.state != State.LIVE:
        raise ServiceError(f"Only a live study takes participants; '{study.title}' is {study.state}.")
    if arm is not None:
        Arm.objects.filter(pk=arm.pk, study=study).update(ingest_paused=paused)
    else:
        Study.objects.filter(pk=study.pk).update(ingest_paused=paused, updated_at=timezone.now())
    study.refresh_from_db()
    return study
