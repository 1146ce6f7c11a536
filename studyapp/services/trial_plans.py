"""A participant's trial plan, generated at enrollment from the study's item sample.

Every participant gets the same items (so items are crossed with arms); the order within each
block is shuffled with the participant's own seed (``Participant.plan_seed``, stored), the
post-test repeats the pre-test's items in a new order, and attention checks are spread evenly
through the test blocks. Answers that count as correct are stored on the trial
(``expected_answer``) and never sent to the participant before they answer.
"""
from __future__ import annotations

import numpy as np

from studyapp.design import TEST_PHASES, StudyDesign, item_role
from studyapp.models import Arm, ModelOutput, Participant, StudyItem, Trial


def _answers(*, participant: Participant, items: list[StudyItem]) -> tuple[dict[int, int], dict[int, int]]:
    """Model outputs on the items' stimuli and on their edits."""
    stimulus_ids = [i.stimulus_id for i in items]
    edit_ids = [e for i in items for e in i.edits]
    model = participant.study.model_id
    on_stimulus = dict(ModelOutput.objects.filter(model_id=model, stimulus_id__in=stimulus_ids)
                       .values_list("stimulus_id", "predicted"))
    on_edit = dict(ModelOutput.objects.filter(model_id=model, edit_id__in=edit_ids).values_list("edit_id", "predicted"))
    return on_stimulus, on_edit


def trial_plan_build(*, participant: Participant, design: StudyDesign) -> list[Trial]:
    """The participant's trials, unsaved, in order."""
    study = participant.study
    n_classes = len(study.model.class_names)
    items = list(StudyItem.objects.filter(study=study).order_by("role", "position"))
    by_role: dict[str, list[StudyItem]] = {}
    for item in items:
        by_role.setdefault(item.role, []).append(item)
    on_stimulus, on_edit = _answers(participant=participant, items=items)
    rng = np.random.default_rng(participant.plan_seed)
    shows_aid = participant.arm.kind != Arm.Kind.CONTROL
    taken = {role: 0 for role in by_role}
    pre_test_items: list[StudyItem] = []
    trials: list[Trial] = []
    for number, block in enumerate(design.blocks):
        if block.phase == "post_test":
            chosen = pre_test_items
        else:
            role = item_role(block)
            start = taken.get(role, 0)
            chosen = by_role.get(role, [])[start:start + block.n_items]
            taken[role] = start + block.n_items
            if len(chosen) < block.n_items:
                raise ValueError(f"the item sample has too few {role} items for block {number + 1}; "
                                 "prepare the study again")
            if block.phase == "pre_test":
                pre_test_items = chosen
        for i in rng.permutation(len(chosen)):
            item = chosen[int(i)]
            trial = Trial(participant=participant, phase=block.phase, task=block.task, stimulus_id=item.stimulus_id,
                          block=number, feedback=block.feedback, n_options=n_classes,
                          show_explanation=block.show_aid and shows_aid,
                          show_model_output=block.show_model_output or block.task != "forward")
            if block.task == "forward":
                trial.expected_answer = on_stimulus[item.stimulus_id]
            elif block.task == "counterfactual_predict":
                trial.edit_id = item.edits[0]
                trial.expected_answer = on_edit[item.edits[0]]
            else:
                trial.options = list(item.edits)
                trial.expected_answer = item.answer_position
                trial.n_options = len(item.edits)
            trials.append(trial)
    trials = _with_attention_checks(trials, design=design, rng=rng, n_classes=n_classes)
    for position, trial in enumerate(trials):
        trial.position = position
    return trials


def _with_attention_checks(trials: list[Trial], *, design: StudyDesign, rng: np.random.Generator,
                           n_classes: int) -> list[Trial]:
    """Insert instructed-response checks at evenly spaced places among the test-phase trials.

    A check looks like a forward trial (the same stimulus picture and answer options) but its
    question says which option to choose (Prolific's rule: the question itself says what to answer).
    """
    count = design.attention_checks.count
    test_slots = [i for i, t in enumerate(trials) if t.phase in TEST_PHASES and t.task == "forward"]
    if count == 0 or not test_slots:
        return trials
    # After the k-th of `count` evenly spaced test trials (never first: people settle in first).
    at = sorted({test_slots[min(len(test_slots) - 1, (k + 1) * len(test_slots) // (count + 1))]
                 for k in range(count)})
    pictures = sorted({trials[i].stimulus_id for i in test_slots})
    out = []
    for i, trial in enumerate(trials):
        out.append(trial)
        if i in at:
            # A test item's picture, not the one just shown (the same picture twice in a row stands out).
            others = [p for p in pictures if p != trial.stimulus_id] or pictures
            out.append(Trial(participant=trial.participant, phase=trial.phase, task=Trial.Task.ATTENTION_CHECK,
                             stimulus_id=others[int(rng.integers(len(others)))], block=trial.block,
                             n_options=n_classes, expected_answer=int(rng.integers(n_classes))))
    return out


def trial_plan_create(*, participant: Participant, design: StudyDesign) -> int:
    """Store the plan (inside the enrollment transaction)."""
    trials = trial_plan_build(participant=participant, design=design)
    Trial.objects.bulk_create(trials)
    Participant.objects.filter(pk=participant.pk).update(n_trials=len(trials))
    participant.n_trials = len(trials)
    return len(trials)
