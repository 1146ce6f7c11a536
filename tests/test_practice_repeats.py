"""Practice trials that repeat until correct, capped (Zimmermann et al. 2021's crowd quality
control): a wrong answer brings the same item back at once; a right one moves on."""
from __future__ import annotations

import pytest
from django.test import Client

from studyapp.design import DesignError, design_parse
from studyapp.models import Participant, Trial
from tests.factories import StimulusFactory, study_with_arms
from tests.participation_helpers import answer_body, api, live, post, to_trials

pytestmark = pytest.mark.django_db
DESIGN = {"blocks": [{"phase": "practice", "n_items": 2, "show_model_output": True, "feedback": "correctness",
                      "repeat_until_correct": 2},
                     {"phase": "test", "n_items": 3}],
          "attention_checks": {"count": 0}, "min_instruction_seconds": 0}


def _answer(client, study, *, right: bool) -> dict:
    trial = client.get(api(study, "trial")).json()
    expected = Trial.objects.get(public_id=trial["trial"]).expected_answer
    reply = post(client, api(study, f"trials/{trial['trial']}/answer"), answer_body(expected if right else 1 - expected))
    assert reply.status_code == 201, reply.content
    return trial


def test_a_wrong_practice_answer_brings_the_same_item_back_at_most_the_cap_then_moves_on(prepare):
    study = study_with_arms()
    StimulusFactory.create_batch(4, dataset=study.dataset, split="test")
    study = live(study, prepare, DESIGN)
    client = Client()
    to_trials(client, study)
    participant = Participant.objects.get()
    planned = participant.n_trials
    first = _answer(client, study, right=False)
    again = _answer(client, study, right=False)  # the same item, as a new trial right after
    assert again["trial"] != first["trial"]
    same = Trial.objects.filter(public_id__in=[first["trial"], again["trial"]])
    assert len({(t.stimulus_id, t.block) for t in same}) == 1
    third = _answer(client, study, right=False)  # the second and last repeat
    assert Trial.objects.get(public_id=third["trial"]).stimulus_id == same[0].stimulus_id
    # The cap is reached: the next trial is the second practice item, whatever the answer was.
    nxt = _answer(client, study, right=True)
    assert Trial.objects.get(public_id=nxt["trial"]).stimulus_id != same[0].stimulus_id
    participant.refresh_from_db()
    assert participant.n_trials == planned + 2
    positions = list(Trial.objects.filter(participant=participant).order_by("position").values_list("position", flat=True))
    assert positions == list(range(participant.n_trials))
    # A right answer to the second item moved on; the rest of the plan follows, and the session completes.
    for _ in range(3):
        trial = _answer(client, study, right=True)
        assert Trial.objects.get(public_id=trial["trial"]).phase == "test"
    assert client.get(api(study, "state")).json()["step"] != "trials"


def test_a_resent_wrong_answer_adds_no_second_repeat(prepare):
    study = study_with_arms()
    StimulusFactory.create_batch(4, dataset=study.dataset, split="test")
    study = live(study, prepare, DESIGN)
    client = Client()
    to_trials(client, study)
    trial = client.get(api(study, "trial")).json()
    expected = Trial.objects.get(public_id=trial["trial"]).expected_answer
    body = answer_body(1 - expected)
    for _ in range(3):  # the network resends it
        assert post(client, api(study, f"trials/{trial['trial']}/answer"), body).status_code in (200, 201)
    assert Participant.objects.get().n_trials == Trial.objects.count() == 5 + 1


@pytest.mark.parametrize("block, message", [
    ({"phase": "test", "n_items": 2, "repeat_until_correct": 1}, "only practice blocks repeat"),
    ({"phase": "practice", "n_items": 2, "repeat_until_correct": 1}, "must give feedback"),
])
def test_repeats_are_refused_outside_practice_and_without_feedback(block, message):
    with pytest.raises(DesignError, match=message):
        design_parse({"blocks": [block, {"phase": "test", "n_items": 2}]})
