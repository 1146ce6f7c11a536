"""The typed study design (studyapp.design) and its checks at Prepare, in words a researcher reads."""
from __future__ import annotations

import pytest

from studyapp.design import DesignError, design_json_schema, design_parse
from studyapp.models import Study
from studyapp.services.errors import ServiceError
from studyapp.services.studies import study_validate_design
from tests.factories import SMALL_DESIGN, image_study_with_arms, study_with_arms

TEST_ONLY = {"blocks": [{"phase": "test", "n_items": 4}]}


def problems_of(config: dict) -> list[str]:
    with pytest.raises(DesignError) as caught:
        design_parse(config)
    return caught.value.problems


def test_a_minimal_design_gets_documented_defaults():
    design = design_parse(TEST_ONLY)
    assert design.design == "between" and design.model_error_share == 0.5
    assert [q.id for q in design.questionnaire] == ["trust", "helpfulness", "understanding"]
    assert design.attention_checks.count == 2 and design.crowd.source == "direct"
    assert design.items_needed() == {"learning": 0, "test": 4, "counterfactual_predict": 0, "counterfactual_choose": 0}


def test_unknown_keys_are_refused_with_the_valid_keys_listed():
    problems = problems_of({**TEST_ONLY, "trial_per_phase": 10})
    assert len(problems) == 1 and "trial_per_phase: unknown setting" in problems[0]
    assert "blocks" in problems[0] and "attention_checks" in problems[0]
    nested = problems_of({"blocks": [{"phase": "test", "n_items": 4, "layers": "all"}]})
    assert "blocks #1 layers: unknown setting" in nested[0] and "show_aid" in nested[0]


def test_the_retired_config_keys_are_refused_with_the_way_forward():
    problems = problems_of({"phases": ["learning", "test"], "trials_per_phase": 10, **TEST_ONLY})
    assert any("'phases' is no longer used: replaced by 'blocks'" in p for p in problems)
    assert any("'trials_per_phase' is no longer used" in p for p in problems)


def test_every_problem_is_listed_at_once():
    problems = problems_of({"blocks": [{"phase": "exam", "n_items": 0}], "confidence": "1-10"})
    assert len(problems) == 3
    assert any("blocks #1 phase" in p for p in problems) and any("n_items" in p for p in problems)


def test_test_phases_never_give_feedback():
    problems = problems_of({"blocks": [{"phase": "test", "n_items": 4, "feedback": "correctness"}]})
    assert "gives no feedback" in problems[0]


@pytest.mark.parametrize("blocks, words", [
    ([{"phase": "pre_test", "n_items": 4}, {"phase": "post_test", "n_items": 5}], "same task and n_items"),
    ([{"phase": "post_test", "n_items": 4}, {"phase": "pre_test", "n_items": 4}], "followed later by"),
    ([{"phase": "pre_test", "n_items": 4, "show_aid": True}, {"phase": "post_test", "n_items": 4}], "show_aid false"),
])
def test_a_within_design_has_a_matching_pre_and_post_test(blocks, words):
    assert words in problems_of({"design": "within_pre_post", "blocks": blocks})[0]


def test_a_between_design_uses_test_blocks():
    problems = problems_of({"blocks": [{"phase": "pre_test", "n_items": 4}, {"phase": "post_test", "n_items": 4}]})
    assert "belong to the within_pre_post design" in problems[0]


def test_crowd_settings_say_what_each_platform_needs():
    assert "%SURVEY_CODE%" in problems_of({**TEST_ONLY, "crowd": {"source": "sona", "id_parameter": "id"}})[0]
    assert "id_parameter" in problems_of({**TEST_ONLY, "crowd": {"source": "generic"}})[0]


def test_the_json_schema_describes_blocks_for_the_admin_form():
    schema = design_json_schema()
    assert "blocks" in schema["required"] and "Block" in schema["$defs"]
    assert schema["$defs"]["Block"]["properties"]["feedback"]["enum"] == ["none", "correctness", "model_output"]


@pytest.mark.django_db
class TestAtPrepare:
    def refused(self, study: Study) -> list[str]:
        with pytest.raises(ServiceError) as caught:
            study_validate_design(study=study)
        return caught.value.messages

    def test_an_aid_computed_for_the_models_answer_is_refused_in_forward_trials_that_hide_it(self):
        study = study_with_arms()
        Study.objects.filter(pk=study.pk).update(config={"blocks": [{"phase": "test", "n_items": 3,
                                                                     "show_aid": True}]})
        study.refresh_from_db()
        problems = self.refused(study)
        assert any("computed for the model's answer and so points at it" in p and "'integrated_gradients'" in p
                   for p in problems)
        Study.objects.filter(pk=study.pk).update(config={"blocks": [{"phase": "test", "n_items": 3, "show_aid": True}],
                                                         "acknowledge_aid_leak": True})
        study.refresh_from_db()
        study_validate_design(study=study)  # acknowledged: recorded with the plan, allowed

    def test_edges_do_not_point_at_the_answer_and_may_be_shown_in_test_trials(self):
        study = image_study_with_arms(arms=[{"name": "edges", "kind": "baseline", "method": "sobel_edges"}])
        Study.objects.filter(pk=study.pk).update(config={"blocks": [{"phase": "test", "n_items": 3,
                                                                     "show_aid": True}]})
        study.refresh_from_db()
        study_validate_design(study=study)

    def test_a_prolific_study_needs_its_three_codes_and_any_study_a_consent_text(self):
        study = study_with_arms()
        Study.objects.filter(pk=study.pk).update(config={**SMALL_DESIGN, "crowd": {"source": "prolific"}},
                                                 consent_text="")
        study.refresh_from_db()
        problems = self.refused(study)
        assert any("three completion codes" in p for p in problems)
        assert any("consent text" in p for p in problems)

    def test_a_design_problem_stops_preparation_before_any_work(self, prepare):
        study = study_with_arms()
        Study.objects.filter(pk=study.pk).update(config={"blocks": []})
        study.refresh_from_db()
        with pytest.raises(ServiceError):
            prepare(study)
        study.refresh_from_db()
        assert study.state == "draft" and not study.items.exists()
