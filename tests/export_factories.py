"""A small launched study with everything the exports read: outputs, explanations, participants in
several phases, attention checks, questionnaire answers, a deviation and an analysis run."""
from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from studyapp import models as m
from studyapp.services.studies import study_launch
from tests.factories import HypothesisFactory, ParticipantFactory, TrialFactory, npy_bytes, study_with_arms

T0 = datetime(2025, 3, 1, 9, 0, 0, 123456, tzinfo=UTC)
EXCLUSION_RULES = {"max_failed_attention_checks": 0}


@dataclass
class ExportedStudy:
    study: m.Study
    control: m.Arm
    treated: m.Arm
    participants: list[m.Participant]
    inattentive: m.Participant
    run: m.AnalysisRun | None
    exploratory: m.AnalysisRun | None


def _answer(trial: m.Trial, *, answer: int, minutes: int, confidence: int | None = 4) -> m.Response:
    response = m.Response.objects.create(
        trial=trial, idempotency_key=uuid.uuid4(), payload_sha256="a" * 64, answer=answer,
        correct=None if trial.expected_answer is None else answer == trial.expected_answer,
        confidence=confidence, client_rt_ms=1000 + 37 * minutes, server_rt_ms=1100 + 37 * minutes,
        client_sent_at=T0 + timedelta(minutes=minutes))
    # received_at is auto_now_add; pin it so the export can be compared with a known value.
    m.Response.objects.filter(pk=response.pk).update(received_at=T0 + timedelta(minutes=minutes, seconds=1))
    return response


def exported_study(*, launch: bool = True, with_run: bool = False) -> ExportedStudy:
    study = study_with_arms(methods=("saliency",), hypothesis=False)
    study.config = {"exclusion_rules": EXCLUSION_RULES, "sampling": {"n_items": 4, "stratify": "outcome"}}
    study.seed = 7
    study.save()
    dataset = study.dataset
    dataset.content_sha256 = hashlib.sha256(b"dataset").hexdigest()
    dataset.split_info = {"seed": 3, "test_fraction": 0.5, "stratified": True}
    dataset.save()
    control = study.arms.get(kind="control")
    treated = study.arms.get(kind="explanation")
    treated.method_config = {"abs": False}
    treated.save()
    stimuli = list(dataset.stimuli.order_by("index"))
    for stimulus in stimuli:
        m.ModelOutput.objects.create(model=study.model, stimulus=stimulus, predicted=stimulus.index % 2,
                                     probabilities=[0.4, 0.6])
        m.Explanation.objects.create(arm=treated, stimulus=stimulus, attributions=npy_bytes([0.1, 0.2, 0.3]),
                                     config={"method": "saliency", "abs": False}, config_sha256="c" * 64, seed=7,
                                     target=stimulus.index % 2)
    HypothesisFactory(study=study, arm=treated, label="H1", statement="Saliency beats control on the gain.",
                      outcome="gain")
    if launch:
        m.Study.objects.filter(pk=study.pk).update(state=m.Study.State.READY)
        study = study_launch(study=study)
    participants = []
    for i, arm in enumerate([control, control, control, treated, treated, treated]):
        p = ParticipantFactory(arm=arm, study=study, status="completed", source="prolific",
                               external_id=f"PID{i}", comprehension_attempts=1 + i % 2, instructions_ms=30_000,
                               consented_at=T0 + timedelta(minutes=1), completed_at=T0 + timedelta(minutes=20 + i))
        m.Participant.objects.filter(pk=p.pk).update(started_at=T0)  # auto_now_add: pin it
        p.refresh_from_db()
        participants.append(p)
        plan = [("pre_test", "forward", stimuli[0]), ("pre_test", "forward", stimuli[1]),
                ("post_test", "forward", stimuli[0]), ("post_test", "forward", stimuli[1]),
                ("post_test", "attention_check", stimuli[2]), ("post_test", "forward", stimuli[3])]
        for position, (phase, task, stimulus) in enumerate(plan):
            trial = TrialFactory(participant=p, position=position, phase=phase, task=task, stimulus=stimulus,
                                 expected_answer=1 if task == "attention_check" else stimulus.index % 2,
                                 show_explanation=arm == treated and phase == "post_test")
            if position == 5 and i == 0:
                continue  # one trial left unanswered
            if task == "attention_check":
                answer = 0 if i == 1 else 1  # participant 1 fails the check
            else:
                answer = stimulus.index % 2 if (position + i) % 3 else 1 - stimulus.index % 2
            _answer(trial, answer=answer, minutes=position + 10 * i, confidence=None if position == 1 else 5)
        m.QuestionnaireAnswer.objects.create(participant=p, item="useful", value=1 + i, idempotency_key=uuid.uuid4())
        if i != 2:
            m.QuestionnaireAnswer.objects.create(participant=p, item="Trust in model", value=7 - i,
                                                 idempotency_key=uuid.uuid4())
    m.PreregistrationDeviation.objects.create(study=study, field="planned_n_per_arm", before=30, after=2,
                                              reason="Pilot only.", recorded_by="pi")
    run = exploratory = None
    if with_run:
        from studyapp.services.analysis import study_analyze

        run = study_analyze(study=study, seed=11)
        exploratory = study_analyze(study=study, seed=12, exploratory_spec={"hypotheses": [
            {"label": "E1", "statement": "Usefulness ratings differ.", "comparison": "arm_vs_control",
             "arm": "saliency", "outcome": "likert", "likert_item": "useful", "direction": "two_sided",
             "test": "mann_whitney"}]})
    return ExportedStudy(study=study, control=control, treated=treated, participants=participants,
                         inattentive=participants[1], run=run, exploratory=exploratory)
