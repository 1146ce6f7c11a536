"""After launch the frozen plan never changes: changes are dated deviations, other analyses exploratory."""
from __future__ import annotations

import copy

import pytest
from django.contrib.auth import get_user_model

from studyapp.models import Hypothesis, PreregistrationDeviation, Study
from studyapp.services.errors import ServiceError
from studyapp.services.preregistration import (
    analysis_request_classify,
    analysis_request_kind,
    hypothesis_matches_plan,
    hypothesis_update_after_launch,
    plan_amended,
    preregistration_drift,
    preregistration_verify,
    study_deviations,
    study_update_after_launch,
)
from studyapp.services.studies import study_close
from tests.analysis_factories import launch, study_with_items, tamper_with_frozen_plan
from tests.factories import HypothesisFactory

pytestmark = pytest.mark.django_db

RULES = {"max_failed_attention_checks": 1}


def launched_study(**config) -> tuple[Study, Hypothesis]:
    study = study_with_items(arms=("control", "explained", "placebo"), config={"exclusion_rules": RULES})
    h1 = HypothesisFactory(study=study, arm=study.arms.get(name="explained"), label="H1")
    HypothesisFactory(study=study, arm=study.arms.get(name="placebo"), label="H2", direction="two_sided")
    return launch(study), h1


def test_a_change_after_launch_is_a_dated_explained_deviation_and_the_frozen_plan_stays():
    study, h1 = launched_study()
    frozen, digest = copy.deepcopy(study.frozen_config), study.frozen_sha256
    user = get_user_model().objects.create_user("ana")

    deviation = hypothesis_update_after_launch(hypothesis=h1, field="planned_n_per_arm", value=45,
                                               reason="Recruitment was faster than planned.", user=user)

    stored = PreregistrationDeviation.objects.get()
    assert stored.pk == deviation.pk and stored.study_id == study.pk
    assert (stored.hypothesis_label, stored.field, stored.before, stored.after) == ("H1", "planned_n_per_arm", 30, 45)
    assert stored.reason == "Recruitment was faster than planned." and stored.recorded_by == "ana"
    assert stored.recorded_at is not None and stored.recorded_at >= study.launched_at
    study.refresh_from_db()
    assert study.frozen_config == frozen and study.frozen_sha256 == digest
    assert preregistration_verify(study=study) is True
    assert Hypothesis.objects.get(pk=h1.pk).planned_n_per_arm == 30
    assert preregistration_drift(study=study) == []


@pytest.mark.parametrize("reason", ["", "   ", None])
def test_a_deviation_without_a_reason_is_refused(reason):
    study, h1 = launched_study()
    with pytest.raises(ServiceError, match="needs a reason"):
        hypothesis_update_after_launch(hypothesis=h1, field="alpha", value=0.01, reason=reason)
    assert not PreregistrationDeviation.objects.exists()


def test_before_launch_a_deviation_is_refused_edit_the_hypothesis_instead():
    study = study_with_items()
    h1 = HypothesisFactory(study=study, arm=study.arms.get(name="explained"), label="H1")
    with pytest.raises(ServiceError, match="is draft and has no frozen plan yet"):
        hypothesis_update_after_launch(hypothesis=h1, field="alpha", value=0.01, reason="stricter")
    Study.objects.filter(pk=study.pk).update(state="ready")
    with pytest.raises(ServiceError, match="is ready and has no frozen plan yet"):
        hypothesis_update_after_launch(hypothesis=h1, field="alpha", value=0.01, reason="stricter")
    assert not PreregistrationDeviation.objects.exists()


def test_a_closed_study_still_records_deviations():
    study, h1 = launched_study()
    study_close(study=study)
    hypothesis_update_after_launch(hypothesis=h1, field="alpha", value=0.01, reason="Reviewer 2.")
    assert study_deviations(study=study).get().after == 0.01


@pytest.mark.parametrize(("field", "value", "message"), [
    ("label", "H9", "'label' is not a field of a pre-registered hypothesis"),
    ("alpha", 1.5, "alpha must lie strictly between 0 and 1"),
    ("arm", "nonexistent", "arm must name an arm of the plan"),
    ("direction", "bigger", "direction must be one of"),
    ("test", "anova", "test must be one of"),
    ("exclusion_rules", {"max_failed": 1}, "Unknown exclusion rule 'max_failed'"),
    ("direction", "greater", "H1.direction is already 'greater'"),
])
def test_an_invalid_or_empty_change_is_refused_and_nothing_is_recorded(field, value, message):
    study, h1 = launched_study()
    with pytest.raises(ServiceError, match=message):
        hypothesis_update_after_launch(hypothesis=h1, field=field, value=value, reason="because")
    assert not PreregistrationDeviation.objects.exists()


def test_a_hypothesis_added_after_launch_was_never_pre_registered():
    study, _ = launched_study()
    late = HypothesisFactory(study=study, arm=study.arms.get(name="explained"), label="H9")
    with pytest.raises(ServiceError, match="H9 is not in the frozen plan"):
        hypothesis_update_after_launch(hypothesis=late, field="alpha", value=0.01, reason="late idea")
    assert preregistration_drift(study=study) == ["'hypotheses' differs from the frozen plan"]


def test_successive_deviations_chain_before_and_after_and_the_amended_plan_applies_them_in_order():
    study, h1 = launched_study()
    hypothesis_update_after_launch(hypothesis=h1, field="alpha", value=0.01, reason="first")
    hypothesis_update_after_launch(hypothesis=h1, field="alpha", value=0.005, reason="second")
    study_update_after_launch(study=study, field="exclusion_rules", value={"max_failed_attention_checks": 2},
                              reason="the checks were ambiguous")

    deviations = list(study_deviations(study=study))
    assert [(d.field, d.before, d.after) for d in deviations] == [
        ("alpha", 0.05, 0.01), ("alpha", 0.01, 0.005),
        ("exclusion_rules", RULES, {"max_failed_attention_checks": 2})]
    assert deviations[2].hypothesis_label == ""
    amended = plan_amended(study=study)
    assert amended["hypotheses"][0]["alpha"] == 0.005
    assert amended["study"]["config"]["exclusion_rules"] == {"max_failed_attention_checks": 2}
    study.refresh_from_db()
    assert study.frozen_config["hypotheses"][0]["alpha"] == 0.05
    assert study.frozen_config["study"]["config"]["exclusion_rules"] == RULES


def test_study_level_deviations_are_validated():
    study, _ = launched_study()
    with pytest.raises(ServiceError, match="Unknown exclusion rule"):
        study_update_after_launch(study=study, field="exclusion_rules", value={"nope": 1}, reason="x")
    with pytest.raises(ServiceError, match="cannot be changed by a study-level deviation"):
        study_update_after_launch(study=study, field="title", value="New", reason="x")
    deviation = study_update_after_launch(study=study, field="target_per_arm", value=40, reason="budget")
    assert (deviation.before, deviation.after) == (30, 40)


def test_verification_recomputes_the_hash_of_the_frozen_plan():
    study, _ = launched_study()
    assert preregistration_verify(study=study) is True
    tamper_with_frozen_plan(study, {**study.frozen_config, "hypotheses": []})
    study.refresh_from_db()
    assert preregistration_verify(study=study) is False
    assert preregistration_verify(study=study_with_items()) is False


def test_only_the_frozen_plan_itself_is_confirmatory():
    study, _ = launched_study()
    plan = [{"label": "A", "arm": "placebo", "direction": "two_sided"}, {"label": "B", "arm": "explained"}]
    assert analysis_request_kind(study=study, spec=None) == "confirmatory"
    assert analysis_request_classify(study=study, spec={"hypotheses": plan}) == ("confirmatory", [])
    assert analysis_request_classify(study=study, spec={"exclusion_rules": RULES, "note": "same"}) == (
        "confirmatory", [])

    kind, reasons = analysis_request_classify(study=study, spec={"hypotheses": [plan[1]]})
    assert kind == "exploratory" and reasons == ["H2 of the frozen plan is left out (this changes its correction family)"]
    kind, reasons = analysis_request_classify(
        study=study, spec={"hypotheses": [plan[0], {**plan[1], "alpha": 0.1}]})
    assert kind == "exploratory" and reasons == [
        "B is not a hypothesis of the frozen plan (as requested)",
        "H1 of the frozen plan is left out (this changes its correction family)"]
    assert hypothesis_matches_plan(study=study, hypothesis=plan[1]) is True
    assert hypothesis_matches_plan(study=study, hypothesis={**plan[1], "comparator": "control"}) is True
    assert hypothesis_matches_plan(study=study, hypothesis={**plan[1], "comparator": "placebo"}) is False
    assert hypothesis_matches_plan(study=study, hypothesis={**plan[1], "outcome": "gain"}) is False


def test_before_launch_every_request_is_exploratory_and_malformed_requests_are_refused():
    study, _ = launched_study()
    draft = study_with_items()
    assert analysis_request_kind(study=draft, spec=None) == "exploratory"
    assert analysis_request_kind(study=draft, spec={"note": "pilot"}) == "exploratory"
    with pytest.raises(ServiceError, match="Unknown analysis request key 'hypothesis'"):
        analysis_request_classify(study=study, spec={"hypothesis": []})
    with pytest.raises(ServiceError, match="Unknown hypothesis fields"):
        analysis_request_classify(study=study, spec={"hypotheses": [{"arm": "explained", "tail": "left"}]})
