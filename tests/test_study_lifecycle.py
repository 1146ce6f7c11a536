"""A study moves draft -> preparing -> ready -> live -> closed only through services."""
from __future__ import annotations

import hashlib
import threading

import pytest
from django.db import connection

from studyapp.models import ModelOutput, Study
from studyapp.services.errors import InvalidTransition, ServiceError
from explainers.canonical import canonical_json
from studyapp.services.studies import study_close, study_launch, study_prepare
from tests.factories import HypothesisFactory, StudyFactory, study_with_arms

pytestmark = pytest.mark.django_db


def test_preparing_predicts_every_stimulus_and_makes_the_study_ready(prepare):
    study = prepare(study_with_arms())
    assert study.state == Study.State.READY
    outputs = ModelOutput.objects.filter(model=study.model, stimulus__isnull=False)
    assert outputs.count() == study.dataset.stimuli.count() == 10
    for output in outputs:
        assert output.predicted == max(range(2), key=lambda k: output.probabilities[k])
        assert sum(output.probabilities) == pytest.approx(1.0, abs=1e-4)


def test_preparation_rerun_writes_nothing_twice(prepare):
    from studyapp.services.preparation import study_run_preparation

    study = prepare(study_with_arms())
    Study.objects.filter(pk=study.pk).update(state="preparing")  # as if the task were redelivered
    study_run_preparation(study_id=study.pk)
    assert ModelOutput.objects.filter(model=study.model, stimulus__isnull=False).count() == 10


def test_a_study_without_a_control_arm_cannot_be_prepared():
    study = StudyFactory()
    with pytest.raises(ServiceError, match="Add a control arm"):
        study_prepare(study=study)
    study.refresh_from_db()
    assert study.state == Study.State.DRAFT


def test_a_draft_cannot_be_launched_or_closed():
    study = study_with_arms()
    with pytest.raises(InvalidTransition, match="only a ready study can be launched"):
        study_launch(study=study)
    with pytest.raises(InvalidTransition, match="can only become closed from live"):
        study_close(study=study)
    study.refresh_from_db()
    assert study.state == Study.State.DRAFT


def test_launch_freezes_the_plan_with_its_sha256(prepare):
    study = study_with_arms()
    HypothesisFactory(study=study, arm=study.arms.get(name="integrated_gradients"), label="H1")
    study = study_launch(study=prepare(study))
    assert study.state == Study.State.LIVE and study.launched_at is not None
    assert [a["name"] for a in study.frozen_config["arms"]] == ["control", "integrated_gradients"]
    assert study.frozen_config["hypotheses"][0]["label"] == "H1"
    assert study.frozen_config["model"]["weights_sha256"] == study.model.weights_sha256
    assert study.frozen_sha256 == hashlib.sha256(canonical_json(study.frozen_config).encode()).hexdigest()


def test_a_live_study_closes_and_never_reopens(prepare):
    study = study_launch(study=prepare(study_with_arms()))
    study = study_close(study=study)
    assert study.state == Study.State.CLOSED and study.closed_at is not None
    with pytest.raises(InvalidTransition):
        study_prepare(study=study)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_launches_freeze_the_study_exactly_once():
    study = study_with_arms()
    Study.objects.filter(pk=study.pk).update(state="ready")
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def launch() -> None:
        try:
            barrier.wait()
            study_launch(study=Study.objects.get(pk=study.pk))
            outcomes.append("launched")
        except InvalidTransition:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=launch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["launched", "refused"]
    assert Study.objects.get(pk=study.pk).state == Study.State.LIVE


def test_malformed_exclusion_rules_are_refused_before_they_can_be_frozen():
    study = study_with_arms()
    Study.objects.filter(pk=study.pk).update(config={"exclusion_rules": {"max_failed_attention_check": 1}})
    study.refresh_from_db()
    with pytest.raises(ServiceError, match="Exclusion rules: .*max_failed_attention_check"):
        study_prepare(study=study)
    study.refresh_from_db()
    assert study.state == Study.State.DRAFT
