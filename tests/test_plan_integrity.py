"""A plan is checked as a whole before anything is frozen: unknown settings are refused with the
valid ones, and a placebo arm differs from its real arm only in the manipulation."""
from __future__ import annotations

import pytest

from studyapp.models import Arm, Explanation, Study
from studyapp.services.errors import ServiceError
from studyapp.services.studies import study_prepare
from tests.factories import ArmFactory, study_with_arms

pytestmark = pytest.mark.django_db


def with_placebo(**fields) -> Study:
    study = study_with_arms(methods=("integrated_gradients",))
    ArmFactory(study=study, name="ig_randomized", kind="explanation", method="integrated_gradients",
               manipulation="randomized_model", position=2, **fields)
    return study


def refused(study: Study) -> str:
    with pytest.raises(ServiceError) as exc:
        study_prepare(study=study)
    study.refresh_from_db()
    assert study.state == Study.State.DRAFT
    return " ".join(str(m) for m in exc.value.messages)


def test_an_unknown_manipulation_setting_is_refused_with_the_valid_ones():
    problems = refused(with_placebo(manipulation_config={"layers": "all"}))
    assert "Arm 'ig_randomized'" in problems and "layers: unknown setting" in problems
    assert "mode, down_to, layer" in problems


def test_an_unknown_method_setting_is_refused_with_the_allowed_ones():
    study = study_with_arms(methods=("integrated_gradients",))
    Arm.objects.filter(study=study, name="integrated_gradients").update(method_config={"steps": 32})
    problems = refused(study)
    assert "Unknown parameter(s) for integrated_gradients" in problems and "n_steps" in problems


def test_a_placebo_with_other_method_settings_than_its_real_arm_is_refused_naming_the_difference():
    study = with_placebo(method_config={"n_steps": 50})
    Arm.objects.filter(study=study, name="integrated_gradients").update(method_config={"n_steps": 32})
    problems = refused(study)
    assert "placebo of the real arm 'integrated_gradients'" in problems
    assert "n_steps=50 (real arm 'integrated_gradients': 32)" in problems


def test_a_placebo_without_settings_of_its_own_inherits_its_real_arms(prepare):
    study = with_placebo()
    Arm.objects.filter(study=study, name="integrated_gradients").update(method_config={"n_steps": 8})
    study = prepare(study)
    assert study.state == Study.State.READY, study.preparation
    real, placebo = (Arm.objects.get(study=study, name=n) for n in ("integrated_gradients", "ig_randomized"))
    assert real.method_config["n_steps"] == placebo.method_config["n_steps"] == 8
    configs = {e.arm.name: e.config for e in Explanation.objects.filter(arm__study=study).select_related("arm")}
    assert configs["ig_randomized"]["n_steps"] == configs["integrated_gradients"]["n_steps"] == 8
