"""Pre-registered exclusion rules: each excludes exactly the right participants, blind to arm."""
from __future__ import annotations

import random

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from studyapp.models import Participant, Study
from studyapp.services.errors import ServiceError
from studyapp.services.exclusions import (
    EXCLUSION_RULES,
    exclusion_rules_validate,
    participant_exclusions,
    participants_analysed,
)
from tests.analysis_factories import add_participant, launch, study_with_items

pytestmark = pytest.mark.django_db

RULES = {
    "max_failed_attention_checks": 1,
    "total_seconds_window": [120, 3600],
    "straightlining_max_run": 5,
    "max_comprehension_attempts": 3,
    "min_instructions_seconds": 10,
}
VARIED = [0, 1, 1, 0, 1, 0, 0, 1, 0, 1]  # longest run 2
PASSED = [(1, 1), (0, 0)]


def person(study, arm="control", **kwargs) -> Participant:
    kwargs.setdefault("answers", VARIED)
    kwargs.setdefault("checks", PASSED)
    kwargs.setdefault("instructions_ms", 60_000)
    return add_participant(study, arm, **kwargs)


def test_each_rule_excludes_exactly_the_participants_that_break_it():
    study = study_with_items(config={"exclusion_rules": RULES})
    cases = {
        "clean": person(study),
        "one_failed_check_is_tolerated": person(study, checks=[(0, 1), (0, 0)]),
        "two_failed_checks": person(study, checks=[(0, 1), (1, 0)]),
        "too_fast": person(study, seconds=119),
        "too_slow": person(study, seconds=3601),
        "window_edges_are_inside": person(study, seconds=120),
        "straightliner": person(study, answers=[0, 1] + [1] * 6 + [0]),
        "run_of_exactly_the_maximum": person(study, answers=[0, 1, 1, 1, 1, 1, 0, 1]),
        "four_comprehension_attempts": person(study, comprehension_attempts=4),
        "three_comprehension_attempts": person(study, comprehension_attempts=3),
        "rushed_instructions": person(study, instructions_ms=9_999),
        "unmeasured_instructions": person(study, instructions_ms=None),
        "many_problems": person(study, checks=[(0, 1), (0, 1)], seconds=30, comprehension_attempts=9),
    }
    expected = {
        "two_failed_checks": ["max_failed_attention_checks"],
        "too_fast": ["total_seconds_window"],
        "too_slow": ["total_seconds_window"],
        "straightliner": ["straightlining_max_run"],
        "four_comprehension_attempts": ["max_comprehension_attempts"],
        "rushed_instructions": ["min_instructions_seconds"],
        "many_problems": ["max_failed_attention_checks", "total_seconds_window", "max_comprehension_attempts"],
    }
    result = participant_exclusions(study=study)
    assert set(result) == {p.public_id for p in cases.values()}
    assert {name: result[p.public_id] for name, p in cases.items()} == {
        name: expected.get(name, []) for name in cases}


def test_a_participant_who_did_not_complete_is_not_excluded_by_time_and_not_analysed():
    study = study_with_items(config={"exclusion_rules": RULES})
    quitter = person(study, status="in_progress", answers=[0, 1], checks=[(None, 1)])
    finished = person(study)
    result = participant_exclusions(study=study)
    assert result[quitter.public_id] == []  # an unanswered check is not a failed one
    assert participants_analysed(study=study, exclusions=result) == {finished.public_id}


def test_straightlining_skips_attention_checks_and_trials_that_showed_the_model_output():
    study = study_with_items(config={"exclusion_rules": {"straightlining_max_run": 3}})
    copier = person(study, shown_answers=[1] * 10, answers=[0, 1, 0, 1])
    three_in_a_row = person(study, answers=[0, 1, 1, 1, 0], checks=[(1, 1)], checks_after=2)
    four_across_a_check = person(study, answers=[0, 1, 1, 1, 1, 0], checks=[(0, 0)], checks_after=3)
    result = participant_exclusions(study=study)
    assert result[copier.public_id] == []
    assert result[three_in_a_row.public_id] == []
    assert result[four_across_a_check.public_id] == ["straightlining_max_run"]


def test_straightlining_read_from_loaded_trials_excludes_exactly_as_the_database_query():
    from studyapp.analysis.outcomes import trial_frame
    from studyapp.selectors import ANALYSIS_COLUMNS, trials_long_frame

    study = study_with_items(config={"exclusion_rules": {"straightlining_max_run": 3}})
    cases = [person(study, shown_answers=[1] * 10, answers=[0, 1, 0, 1]),
             person(study, answers=[0, 1, 1, 1, 0], checks=[(1, 1)], checks_after=2),
             person(study, answers=[0, 1, 1, 1, 1, 0], checks=[(0, 0)], checks_after=3),
             person(study, arm="explained", answers=[1] * 5), person(study, answers=[])]
    loaded = trial_frame(trials_long_frame(study=study, columns=ANALYSIS_COLUMNS, uuid_text=True))
    from_database = participant_exclusions(study=study)
    assert participant_exclusions(study=study, answers=loaded) == from_database
    assert [from_database[p.public_id] for p in cases] == [[], [], ["straightlining_max_run"],
                                                          ["straightlining_max_run"], []]


def test_exclusions_are_blind_to_arm_shuffling_arms_changes_nothing():
    study = study_with_items(config={"exclusion_rules": RULES})
    rng = random.Random(3)
    for i in range(16):
        person(study, arm=["control", "explained"][i % 2], seconds=rng.choice([60, 600, 4000]),
               comprehension_attempts=rng.choice([1, 5]), checks=rng.choice([PASSED, [(0, 1), (0, 1)]]))
    before = participant_exclusions(study=study)
    arms = list(study.arms.values_list("pk", flat=True))
    for participant in Participant.objects.filter(study=study):
        Participant.objects.filter(pk=participant.pk).update(arm_id=rng.choice(arms))
    assert participant_exclusions(study=study) == before
    assert any(before.values()) and not all(before.values())


def test_exclusions_never_read_the_arm_column():
    study = study_with_items(config={"exclusion_rules": RULES})
    person(study)
    person(study, arm="explained")
    with CaptureQueriesContext(connection) as queries:
        participant_exclusions(study=study)
    assert queries.captured_queries
    assert not [q["sql"] for q in queries.captured_queries if "arm" in q["sql"].lower()]


def test_after_launch_the_frozen_rules_count_not_the_edited_config():
    study = launch(study_with_items(config={"exclusion_rules": {"max_comprehension_attempts": 3}}))
    struggling = person(study, comprehension_attempts=4)
    Study.objects.filter(pk=study.pk).update(config={"exclusion_rules": {"max_comprehension_attempts": 9}})
    study.refresh_from_db()
    assert participant_exclusions(study=study) == {struggling.public_id: ["max_comprehension_attempts"]}
    assert participant_exclusions(study=study, rules={}) == {struggling.public_id: []}


def test_a_study_without_rules_excludes_nobody():
    study = study_with_items()
    someone = person(study, checks=[(0, 1)] * 3, seconds=1)
    assert participant_exclusions(study=study) == {someone.public_id: []}


def test_valid_rules_have_no_problems_and_every_documented_rule_is_known():
    assert exclusion_rules_validate(RULES) == []
    assert exclusion_rules_validate({}) == [] and exclusion_rules_validate(None) == []
    assert set(RULES) == set(EXCLUSION_RULES)
    assert exclusion_rules_validate({"total_seconds_window": [None, 3600]}) == []


@pytest.mark.parametrize(("rules", "message"), [
    ({"max_failed_attention_check": 1}, "Unknown exclusion rule 'max_failed_attention_check'"),
    ({"max_failed_attention_checks": -1}, "max_failed_attention_checks must be a whole number >= 0"),
    ({"max_failed_attention_checks": True}, "max_failed_attention_checks must be a whole number >= 0"),
    ({"max_comprehension_attempts": 0}, "max_comprehension_attempts must be a whole number >= 1"),
    ({"straightlining_max_run": 1}, "straightlining_max_run must be a whole number >= 2"),
    ({"min_instructions_seconds": "ten"}, "min_instructions_seconds must be a number of seconds >= 0"),
    ({"total_seconds_window": [3600, 120]}, "total_seconds_window needs low < high"),
    ({"total_seconds_window": 3600}, "total_seconds_window must be [low, high]"),
    ({"total_seconds_window": [None, None]}, "total_seconds_window has neither a low nor a high bound"),
    ([1, 2], "exclusion_rules must be an object"),
])
def test_malformed_rules_are_explained(rules, message):
    problems = exclusion_rules_validate(rules)
    assert len(problems) == 1 and problems[0].startswith(message)


def test_applying_malformed_rules_is_refused_with_the_problems():
    study = study_with_items(config={"exclusion_rules": {"straightlining_max_run": 0}})
    with pytest.raises(ServiceError, match="straightlining_max_run must be"):
        participant_exclusions(study=study)
