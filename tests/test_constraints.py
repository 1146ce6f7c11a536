"""The database itself rejects rows that break the domain's invariants (PostgreSQL)."""
from __future__ import annotations

import uuid

import pytest
from django.db import IntegrityError, transaction

from studyapp import models as m
from tests.factories import (ArmFactory, MLModelFactory, StimulusFactory, StudyFactory, TrialFactory, npy_bytes)

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


def rejected(create) -> bool:
    try:
        with transaction.atomic():
            create()
    except IntegrityError:
        return True
    return False


def response_kwargs(**overrides):
    return {"idempotency_key": uuid.uuid4(), "payload_sha256": "a" * 64, "answer": 1, "client_rt_ms": 900,
            **overrides}


def test_a_trial_accepts_only_one_response():
    trial = TrialFactory()
    m.Response.objects.create(trial=trial, **response_kwargs())
    assert rejected(lambda: m.Response.objects.create(trial=trial, **response_kwargs()))
    assert m.Response.objects.filter(trial=trial).count() == 1


def test_an_idempotency_key_cannot_be_used_twice():
    key = uuid.uuid4()
    m.Response.objects.create(trial=TrialFactory(), **response_kwargs(idempotency_key=key))
    other = TrialFactory()
    assert rejected(lambda: m.Response.objects.create(trial=other, **response_kwargs(idempotency_key=key)))


@pytest.mark.parametrize("field,value", [("confidence", 0), ("confidence", 8), ("answer", -1),
                                         ("client_rt_ms", 90_000_000)])
def test_response_values_out_of_range_are_rejected(field, value):
    trial = TrialFactory()
    assert rejected(lambda: m.Response.objects.create(trial=trial, **response_kwargs(**{field: value})))


def test_one_explanation_per_stimulus_and_arm():
    arm = ArmFactory(kind="explanation", method="saliency")
    stimulus = StimulusFactory(dataset=arm.study.dataset)
    fields = {"attributions": npy_bytes([0.0]), "config": {}, "config_sha256": "0" * 64, "seed": 0, "target": 0}
    m.Explanation.objects.create(arm=arm, stimulus=stimulus, **fields)
    assert rejected(lambda: m.Explanation.objects.create(arm=arm, stimulus=stimulus, **fields))
    # ...and an explanation is for a stimulus or an edit, never neither.
    assert rejected(lambda: m.Explanation.objects.create(arm=arm, **fields))


def test_one_model_output_per_model_and_stimulus():
    model = MLModelFactory()
    stimulus = StimulusFactory(dataset=model.dataset)
    m.ModelOutput.objects.create(model=model, stimulus=stimulus, predicted=0, probabilities=[0.6, 0.4])
    assert rejected(lambda: m.ModelOutput.objects.create(model=model, stimulus=stimulus, predicted=1,
                                                         probabilities=[0.4, 0.6]))


@pytest.mark.parametrize("kwargs", [
    {"kind": "control", "method": "saliency"},              # a control arm shows nothing
    {"kind": "control", "manipulation": "inverted"},
    {"kind": "explanation", "method": ""},                  # an explanation arm names its method
    {"kind": "explanation", "method": "astrology"},          # unknown method
    {"kind": "oracle"},                                      # unknown kind
    {"kind": "explanation", "method": "saliency", "manipulation": "photoshopped"},
    {"kind": "control", "allocation_weight": 0},
])
def test_inconsistent_arms_are_rejected(kwargs):
    study = StudyFactory()
    assert rejected(lambda: m.Arm.objects.create(study=study, name="x", **kwargs))


def test_arm_names_are_unique_within_a_study():
    arm = ArmFactory(name="control")
    assert rejected(lambda: m.Arm.objects.create(study=arm.study, name="control"))


def test_a_study_cannot_be_live_without_a_frozen_plan():
    study = StudyFactory()
    assert rejected(lambda: m.Study.objects.filter(pk=study.pk).update(state="live"))
    assert rejected(lambda: m.Study.objects.filter(pk=study.pk).update(state="paused"))


@pytest.mark.parametrize("kwargs", [
    {"alpha": 0.0}, {"alpha": 1.5},
    {"direction": "equivalence"},                    # equivalence needs a margin
    {"direction": "equivalence", "equivalence_margin": -0.1},
    {"outcome": "likert"},                           # a Likert outcome names its item
    {"correction": "holm-sidak"},                    # not an offered correction
    {"comparison": "arm_vs_all"},
])
def test_malformed_hypotheses_are_rejected(kwargs):
    arm = ArmFactory(kind="explanation", method="saliency")
    assert rejected(lambda: m.Hypothesis.objects.create(study=arm.study, label="H1", statement="s", arm=arm, **kwargs))


def test_a_hypothesis_cannot_compare_an_arm_with_itself():
    arm = ArmFactory(kind="explanation", method="saliency")
    assert rejected(lambda: m.Hypothesis.objects.create(study=arm.study, label="H1", statement="s", arm=arm,
                                                        comparator=arm))


def test_a_participant_enrolls_once_per_external_id_but_anonymous_ones_are_many():
    arm = ArmFactory()
    m.Participant.objects.create(study=arm.study, arm=arm, external_id="PID1")
    assert rejected(lambda: m.Participant.objects.create(study=arm.study, arm=arm, external_id="PID1"))
    m.Participant.objects.create(study=arm.study, arm=arm)
    m.Participant.objects.create(study=arm.study, arm=arm)
    assert m.Participant.objects.filter(study=arm.study, external_id="").count() == 2


def test_trial_positions_are_unique_per_participant_and_tasks_are_known():
    trial = TrialFactory(position=0)
    assert rejected(lambda: TrialFactory(participant=trial.participant, position=0))
    assert rejected(lambda: TrialFactory(participant=trial.participant, position=1, task="guess_the_weather"))
    # A counterfactual prediction is about an edit.
    assert rejected(lambda: TrialFactory(participant=trial.participant, position=2, task="counterfactual_predict"))


def test_stimulus_indices_are_unique_per_dataset():
    stimulus = StimulusFactory(index=7)
    assert rejected(lambda: StimulusFactory(dataset=stimulus.dataset, index=7))


def test_a_model_must_carry_a_hex_sha256():
    assert rejected(lambda: MLModelFactory(weights_sha256="not-a-hash"))


def test_an_analysis_job_cannot_finish_without_its_run_or_its_reason():
    job = m.AnalysisJob.objects.create(study=StudyFactory())
    now = job.created_at
    assert rejected(lambda: m.AnalysisJob.objects.filter(pk=job.pk).update(status="done", finished_at=now))
    assert rejected(lambda: m.AnalysisJob.objects.filter(pk=job.pk).update(status="failed", finished_at=now))
    assert rejected(lambda: m.AnalysisJob.objects.filter(pk=job.pk).update(status="lost"))
    assert not rejected(lambda: m.AnalysisJob.objects.filter(pk=job.pk).update(
        status="failed", finished_at=now, error="The plan no longer matches its hash."))


def test_edits_of_one_stimulus_are_unique_per_settings_and_position():
    stimulus = StimulusFactory()

    def edit(key):
        return lambda: m.Edit.objects.create(stimulus=stimulus, settings_sha256=key, position=0,
                                             kind="feature_quantile", data=npy_bytes([0.0]))
    edit("a" * 64)()
    assert not rejected(edit("b" * 64))  # other settings: another edit at position 0
    assert rejected(edit("a" * 64))
