"""A study moves draft -> preparing -> ready -> live -> closed only through services."""
from __future__ import annotations

import hashlib
import threading

import pytest
from django.db import connection

from studyapp.models import Hypothesis, ModelOutput, Study
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
    study = study_with_arms(hypothesis=False)
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


def test_a_plan_without_hypotheses_consent_text_or_completion_code_is_refused_listing_every_problem(prepare):
    study = study_with_arms(hypothesis=False)
    Study.objects.filter(pk=study.pk).update(consent_text="", completion_code="")
    study.refresh_from_db()
    with pytest.raises(ServiceError) as refused:
        study_prepare(study=study)
    problems = " ".join(str(m) for m in refused.value.messages)
    assert "consent text" in problems and "completion code" in problems and "at least one hypothesis" in problems
    study.refresh_from_db()
    assert study.state == Study.State.DRAFT


def test_a_hypothesis_about_data_the_design_never_collects_is_refused_before_anything_is_computed(prepare):
    study = study_with_arms(methods=("integrated_gradients", "saliency"), hypothesis=False)
    ig, saliency = study.arms.get(name="integrated_gradients"), study.arms.get(name="saliency")
    HypothesisFactory(study=study, arm=ig, label="H1", outcome="gain")  # a between design has no pre-test
    HypothesisFactory(study=study, arm=saliency, label="H2", outcome="likert", likert_item="enjoyment")
    HypothesisFactory(study=study, arm=ig, label="H3", comparison="arm_vs_arm")  # no comparator arm
    with pytest.raises(ServiceError) as refused:
        study_prepare(study=study)
    problems = [str(m) for m in refused.value.messages]
    assert any(p.startswith("Hypothesis H1:") and "within_pre_post" in p for p in problems)
    assert any(p.startswith("Hypothesis H2:") and "'enjoyment'" in p and "trust" in p for p in problems)
    assert any(p.startswith("Hypothesis H3:") and "comparator" in p for p in problems)


def test_launch_checks_the_plan_again_and_never_freezes_one_that_cannot_run(prepare):
    study = prepare(study_with_arms())
    Hypothesis.objects.filter(study=study).delete()  # e.g. removed in the database after Prepare
    with pytest.raises(ServiceError, match="at least one hypothesis"):
        study_launch(study=study)
    study.refresh_from_db()
    assert study.state == Study.State.READY and study.frozen_sha256 == "" and study.frozen_config in ({}, None)


def test_the_test_is_a_choice_and_constraint_errors_read_as_words_not_constraint_names():
    from django.core.exceptions import ValidationError
    from django.db import IntegrityError, transaction

    study = study_with_arms(hypothesis=False)
    arm = study.arms.get(name="integrated_gradients")
    free_text = Hypothesis(study=study, arm=arm, label="H1", statement="s", test="t-test")
    with pytest.raises(ValidationError) as refused:
        free_text.full_clean()
    assert "test" in refused.value.message_dict and "t-test" in str(refused.value.message_dict["test"])
    with pytest.raises(IntegrityError), transaction.atomic():
        Hypothesis.objects.create(study=study, arm=arm, label="H1", statement="s", test="t-test")
    no_margin = Hypothesis(study=study, arm=arm, label="H2", statement="s", direction="equivalence")
    with pytest.raises(ValidationError) as refused:
        no_margin.full_clean()
    text = " ".join(refused.value.messages)
    assert "needs a positive equivalence margin" in text and "hypothesis_equivalence_needs_margin" not in text


def test_duplicating_a_launched_study_gives_a_draft_with_the_same_design_arms_and_hypotheses(prepare):
    from studyapp.services.studies import study_duplicate

    study = study_with_arms(methods=("integrated_gradients", "saliency"), hypothesis=False)
    ig, saliency = study.arms.get(name="integrated_gradients"), study.arms.get(name="saliency")
    HypothesisFactory(study=study, arm=ig, label="H1", comparison="arm_vs_arm", comparator=saliency, alpha=0.01)
    Study.objects.filter(pk=study.pk).update(completion_code="PROLIFIC-CODE")
    study = study_launch(study=prepare(study))

    copy = study_duplicate(study=study)

    assert copy.state == Study.State.DRAFT and copy.pk != study.pk and copy.public_id != study.public_id
    assert copy.slug == f"{study.slug}-copy" and copy.title == f"{study.title} (copy)"
    assert copy.config == study.config and copy.consent_text == study.consent_text and copy.seed == study.seed
    assert copy.frozen_sha256 == "" and copy.completion_code == "" and not copy.participants.exists()
    assert [(a.name, a.kind, a.method, a.method_config) for a in copy.arms.order_by("position")] == \
        [(a.name, a.kind, a.method, a.method_config) for a in study.arms.order_by("position")]
    h = copy.hypotheses.get()
    assert (h.label, h.arm.name, h.comparator.name, h.alpha) == ("H1", "integrated_gradients", "saliency", 0.01)
    assert h.arm.study_id == copy.pk and h.comparator.study_id == copy.pk
    assert study_duplicate(study=study).slug == f"{study.slug}-copy-2"
