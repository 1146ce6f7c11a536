"""The long-format trial selector that the analysis and the export share."""
from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from studyapp.models import Edit, ModelOutput, Response
from studyapp.selectors import TRIAL_COLUMNS, trials_long_frame, trials_long_queryset
from tests.factories import ParticipantFactory, TrialFactory, npy_bytes, study_with_arms

pytestmark = pytest.mark.django_db


def test_each_trial_row_carries_truth_model_output_and_answer_in_one_query():
    study = study_with_arms()
    participant = ParticipantFactory(arm=study.arms.get(name="control"))
    stimuli = list(study.dataset.stimuli.order_by("index")[:2])
    ModelOutput.objects.create(model=study.model, stimulus=stimuli[0], predicted=1, probabilities=[0.2, 0.8])
    edit = Edit.objects.create(stimulus=stimuli[1], settings_sha256="0" * 64, position=0, kind="feature_quantile", data=npy_bytes([0, 0, 0]))
    ModelOutput.objects.create(model=study.model, stimulus=stimuli[1], predicted=0, probabilities=[0.9, 0.1])
    ModelOutput.objects.create(model=study.model, edit=edit, predicted=1, probabilities=[0.3, 0.7])
    answered = TrialFactory(participant=participant, position=0, stimulus=stimuli[0], expected_answer=1)
    TrialFactory(participant=participant, position=1, stimulus=stimuli[1], edit=edit,
                 task="counterfactual_predict", expected_answer=1)
    key = uuid.uuid4()
    Response.objects.create(trial=answered, idempotency_key=key, payload_sha256="a" * 64, answer=1, correct=True,
                            confidence=5, client_rt_ms=1200)

    with CaptureQueriesContext(connection) as queries:
        rows = [dict(zip(TRIAL_COLUMNS, row)) for row in trials_long_queryset(study=study)]
    assert len(queries) == 1
    assert [r["position"] for r in rows] == [0, 1]
    first, second = rows
    assert (first["arm"], first["truth"], first["model_output"], first["response"], first["correct"],
            first["confidence"], first["idempotency_key"]) == ("control", stimuli[0].label, 1, 1, True, 5, key)
    # The counterfactual trial reports the model's output on the edit, not on the original.
    assert (second["edit"], second["model_output"], second["response"]) == (0, 1, None)


def test_the_frame_keeps_only_answered_trials_by_default():
    study = study_with_arms()
    participant = ParticipantFactory(arm=study.arms.get(name="control"))
    trial = TrialFactory(participant=participant, position=0)
    TrialFactory(participant=participant, position=1)
    Response.objects.create(trial=trial, idempotency_key=uuid.uuid4(), payload_sha256="a" * 64, answer=0,
                            client_rt_ms=10)
    frame = trials_long_frame(study=study)
    assert list(frame.columns) == list(TRIAL_COLUMNS) and len(frame) == 1
    assert len(trials_long_frame(study=study, answered_only=False)) == 2
