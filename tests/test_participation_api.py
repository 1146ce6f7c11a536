"""The participant API: enrollment, steps, trials and answers, through HTTP as a browser uses it."""
from __future__ import annotations

import numpy as np
import pytest

from studyapp.models import Participant, Response, Trial
from studyapp.simulated_participants import DatabaseOracle, DjangoTransport, run_participant
from tests.participation_helpers import (answer_body, api, live_images, live_tabular, post,
                                         to_trials)

pytestmark = pytest.mark.django_db


def test_opening_the_study_link_creates_nobody(client, prepare):
    study = live_tabular(prepare)
    page = client.get(f"/s/{study.public_id}/")
    assert page.status_code == 200 and "I agree to take part" in page.content.decode()
    assert not Participant.objects.exists()


def test_a_full_between_session_ends_with_the_completion_code(prepare):
    study = live_tabular(prepare, completion_code="DONE-1")
    outcome = run_participant(transport=DjangoTransport(), study_public_id=str(study.public_id),
                              rng=np.random.default_rng(1), oracle=DatabaseOracle(study))
    participant = Participant.objects.get()
    assert outcome.code == "DONE-1" and participant.status == "completed" and participant.completion_code == "DONE-1"
    trials = Trial.objects.filter(participant=participant)
    assert trials.count() == 2 + 3 + 1 and Response.objects.filter(trial__participant=participant).count() == 6
    assert participant.questionnaire_answers.count() == 3 and participant.demographics["age_band"]


def test_a_within_session_covers_every_trial_type_and_its_answers_reach_the_long_format(prepare):
    study = live_images(prepare)
    client_outcome = run_participant(transport=DjangoTransport(), study_public_id=str(study.public_id),
                                     rng=np.random.default_rng(2), oracle=DatabaseOracle(study))
    participant = Participant.objects.get()
    trials = list(Trial.objects.filter(participant=participant).order_by("position"))
    tasks = {(t.phase, t.task) for t in trials}
    assert {("learning", "forward"), ("pre_test", "forward"), ("post_test", "forward"),
            ("test", "counterfactual_predict"), ("test", "counterfactual_choose")} <= tasks
    assert any(t.task == "attention_check" for t in trials)
    pre = sorted(t.stimulus_id for t in trials if t.phase == "pre_test" and t.task == "forward")
    post_ = sorted(t.stimulus_id for t in trials if t.phase == "post_test" and t.task == "forward")
    assert pre == post_  # the post-test repeats the pre-test's items
    choose = next(t for t in trials if t.task == "counterfactual_choose")
    assert len(choose.options) == 2 and choose.n_options == 2 and choose.edit_id is None
    assert all(t.served_at is not None for t in trials)
    assert client_outcome.outcome == "completed" and participant.status == "completed"
    from studyapp.selectors import trials_long_frame

    frame = trials_long_frame(study=study)
    assert len(frame) == len(trials) and frame["correct"].notna().all()


def test_learning_trials_show_the_output_and_test_trials_never_show_it(client, prepare):
    study = live_images(prepare)
    to_trials(client, study)
    seen = []
    for _ in range(Trial.objects.count()):
        trial = client.get(api(study, "trial")).json()
        seen.append(trial)
        reply = post(client, api(study, f"trials/{trial['trial']}/answer"), answer_body(0, confidence=4))
        assert reply.status_code == 201, reply.content
        if trial["phase"] == "learning" and Trial.objects.get(public_id=trial["trial"]).feedback == "correctness":
            assert reply.json()["feedback"] == {"correct": reply.json()["answer"] ==
                                                Trial.objects.get(public_id=trial["trial"]).expected_answer}
        if trial["phase"] in ("pre_test", "post_test"):
            assert reply.json()["feedback"] is None
    forward_tests = [t for t in seen if t["phase"] in ("pre_test", "post_test") and t["task"] == "forward"]
    assert forward_tests and all(t["model_output"] is None and t["aid"] is None for t in forward_tests)
    learning = [t for t in seen if t["phase"] == "learning"]
    assert all(t["model_output"] is not None for t in learning)
    # The arm's aid appears in the second learning block and the counterfactual blocks only.
    assert [t["aid"] is not None for t in learning] == [False, True]
    counterfactual = [t for t in seen if t["task"].startswith("counterfactual")]
    assert all(t["aid"] and t["aid"]["kind"] == "map" and t["model_output"] for t in counterfactual)
    assert client.get(api(study, "state")).json()["step"] == "questionnaire"


def test_refreshing_resumes_at_the_same_trial_and_consenting_again_resumes(client, prepare):
    study = live_tabular(prepare)
    to_trials(client, study)
    first = client.get(api(study, "trial")).json()
    assert client.get(api(study, "trial")).json()["trial"] == first["trial"]
    again = post(client, api(study, "consent"), {"agree": True})
    assert again.status_code == 200 and again.json()["step"] == "trials"
    assert Participant.objects.count() == 1
    served = Trial.objects.get(public_id=first["trial"]).served_at
    client.get(api(study, "trial"))
    assert Trial.objects.get(public_id=first["trial"]).served_at == served  # first serving counts


class TestAnswersAreStoredExactlyOnce:
    def setup_study(self, client, prepare):
        study = live_tabular(prepare)
        to_trials(client, study)
        return study, client.get(api(study, "trial")).json()

    def test_the_same_key_and_payload_returns_the_stored_reply(self, client, prepare):
        study, trial = self.setup_study(client, prepare)
        body = answer_body(1)
        url = api(study, f"trials/{trial['trial']}/answer")
        first, second = post(client, url, body), post(client, url, body)
        assert (first.status_code, second.status_code) == (201, 200)
        assert first.json() == second.json() and Response.objects.count() == 1

    def test_the_same_key_with_another_payload_is_a_conflict(self, client, prepare):
        study, trial = self.setup_study(client, prepare)
        body = answer_body(1)
        url = api(study, f"trials/{trial['trial']}/answer")
        post(client, url, body)
        reply = post(client, url, {**body, "answer": 0})
        assert reply.status_code == 409 and "different content" in reply.json()["detail"]
        assert Response.objects.get().answer == 1

    def test_another_key_for_an_answered_trial_is_a_conflict_naming_the_stored_answer(self, client, prepare):
        study, trial = self.setup_study(client, prepare)
        url = api(study, f"trials/{trial['trial']}/answer")
        post(client, url, answer_body(1))
        reply = post(client, url, answer_body(0))
        assert reply.status_code == 409 and reply.json()["stored"]["answer"] == 1
        assert "already answered (answer 1" in reply.json()["detail"]

    def test_a_key_already_used_for_another_trial_is_a_conflict_and_stores_nothing(self, client, prepare):
        study, trial = self.setup_study(client, prepare)
        body = answer_body(1)
        assert post(client, api(study, f"trials/{trial['trial']}/answer"), body).status_code == 201
        following = client.get(api(study, "trial")).json()
        reply = post(client, api(study, f"trials/{following['trial']}/answer"), {**body, "answer": 0})
        assert reply.status_code == 409 and "used for another answer" in reply.json()["detail"]
        assert Response.objects.count() == 1
        # The session goes on: the same trial with a fresh key is stored.
        assert post(client, api(study, f"trials/{following['trial']}/answer"), answer_body(0)).status_code == 201

    def test_an_answer_to_a_trial_that_is_not_the_current_one_is_a_conflict(self, client, prepare):
        study, trial = self.setup_study(client, prepare)
        later = Trial.objects.filter(participant__study=study).order_by("position").last()
        reply = post(client, api(study, f"trials/{later.public_id}/answer"), answer_body(0))
        assert reply.status_code == 409 and "not the current trial" in reply.json()["detail"]
        assert not Response.objects.exists()

    @pytest.mark.parametrize("change, words", [
        ({"answer": 2}, "answer must be an option number from 0 to 1"),
        ({"answer": -1}, "answer"),
        ({"client_rt_ms": "soon"}, "client_rt_ms"),
        ({"idempotency_key": "not-a-uuid"}, "idempotency_key"),
        ({"confidence": 5}, "does not ask for confidence"),
        ({"events": [{"type": "keypress", "t_ms": 1}]}, "events"),
    ])
    def test_malformed_or_out_of_range_answers_are_refused_with_the_reason(self, client, prepare, change, words):
        study, trial = self.setup_study(client, prepare)
        reply = post(client, api(study, f"trials/{trial['trial']}/answer"), {**answer_body(0), **change})
        assert reply.status_code == 422 and words in reply.json()["detail"]
        assert not Response.objects.exists()

    def test_a_body_that_is_not_json_is_refused_in_words(self, client, prepare):
        study, trial = self.setup_study(client, prepare)
        reply = client.post(api(study, f"trials/{trial['trial']}/answer"), data="{answer: 1",
                            content_type="application/json", HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value)
        assert reply.status_code == 422 and "not valid JSON" in reply.json()["detail"]

    def test_correct_is_computed_on_the_server(self, client, prepare):
        study, trial = self.setup_study(client, prepare)
        expected = Trial.objects.get(public_id=trial["trial"]).expected_answer
        post(client, api(study, f"trials/{trial['trial']}/answer"),
             {**answer_body(expected), "correct": False, "events": [{"type": "blur", "t_ms": 300}]})
        stored = Response.objects.get()
        assert stored.correct is True and stored.events == [{"type": "blur", "t_ms": 300}]
        assert stored.server_rt_ms is not None and stored.client_rt_ms == 1234


def test_one_participant_cannot_reach_another_participants_trials_or_images(client, django_user_model, prepare):
    from django.test import Client

    study = live_images(prepare)
    to_trials(client, study)
    other = Client()
    to_trials(other, study)
    mine = client.get(api(study, "trial")).json()
    image = mine["input"]["image"]
    assert client.get(image).status_code == 200
    assert other.get(image).status_code == 404
    assert post(other, api(study, f"trials/{mine['trial']}/answer"), answer_body(0)).status_code == 404
    assert Client().get(image).status_code == 401  # no session at all


def test_the_api_never_exposes_database_ids_arm_names_or_answers(client, prepare):
    study = live_images(prepare)
    to_trials(client, study)
    participant = Participant.objects.get()
    trial = client.get(api(study, "trial")).json()
    text = str(trial) + str(client.get(api(study, "state")).json())
    for secret in [participant.arm.name, "expected_answer", "correct", "truth", "source_name", study.slug]:
        assert secret not in text
    assert set(trial) == {"trial", "number", "total", "phase", "block", "task", "question", "options", "input",
                          "model_output", "aid", "edit", "confidence"}


def test_images_are_png_without_metadata_and_not_cached(client, prepare):
    from PIL import Image
    import io

    study = live_images(prepare)
    to_trials(client, study)
    trial = client.get(api(study, "trial")).json()
    response = client.get(trial["input"]["image"])
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert response["Content-Type"] == "image/png" and "no-store" in response["Cache-Control"]
    assert "Content-Disposition" not in response
    image = Image.open(io.BytesIO(body))
    assert image.info == {} or set(image.info) <= {"dpi"} and not image.text
    chunks = []
    at = 8
    while at < len(body):
        length = int.from_bytes(body[at:at + 4], "big")
        chunks.append(body[at + 4:at + 8])
        at += 12 + length
    assert set(chunks) <= {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS"}


def test_learning_trials_ask_no_confidence_and_judgements_require_it(client, prepare):
    study = live_images(prepare)
    to_trials(client, study)
    trial = client.get(api(study, "trial")).json()
    assert trial["phase"] == "learning" and trial["model_output"] is not None and trial["block"] == 0
    assert trial["confidence"] is False
    # Learning: the participant looks and continues (the page sends the output shown).
    reply = post(client, api(study, f"trials/{trial['trial']}/answer"), answer_body(trial["model_output"]["value"]))
    assert reply.status_code == 201, reply.content
    judged = client.get(api(study, "trial")).json()
    while judged["task"] == "forward" and judged["model_output"] is None and "choose" in judged["question"]:
        # an attention check: answered as asked, without confidence
        assert judged["confidence"] is False
        post(client, api(study, f"trials/{judged['trial']}/answer"), answer_body(0))
        judged = client.get(api(study, "trial")).json()
    assert judged["phase"] == "pre_test" and judged["confidence"] is True and judged["block"] == 1
    refused = post(client, api(study, f"trials/{judged['trial']}/answer"), answer_body(0))
    assert refused.status_code == 422 and "confidence (1 to 7) is required" in refused.json()["detail"]


def test_the_answer_stores_the_browsers_viewport_and_device_class(client, prepare):
    from studyapp.models import Response

    study = live_images(prepare)
    to_trials(client, study)
    trial = client.get(api(study, "trial")).json()
    device = {"viewport_width": 390, "viewport_height": 844, "device": "phone", "pointer": "coarse", "pixel_ratio": 3}
    events = [{"type": "blur", "t_ms": 1200}, {"type": "focus", "t_ms": 4100}]
    reply = post(client, api(study, f"trials/{trial['trial']}/answer"),
                 answer_body(trial["model_output"]["value"], client=device, events=events))
    assert reply.status_code == 201, reply.content
    stored = Response.objects.get()
    assert stored.client == device and stored.events == events and stored.focus_losses == 1
    from studyapp.exports.columns import RESPONSE_COLUMNS
    from studyapp.exports.rows import response_rows

    rows = [dict(zip([c.name for c in RESPONSE_COLUMNS], r)) for r in response_rows(study=study)]
    answered = [r for r in rows if r["response"] is not None]
    assert [(r["device"], r["focus_losses"]) for r in answered] == [("phone", 1)]
    assert all(r["device"] is None and r["focus_losses"] is None for r in rows if r["response"] is None)
    bad = post(client, api(study, "trial").replace("trial", "trial"), {})  # a GET-only URL: 405, not stored
    assert bad.status_code == 405
    nxt = client.get(api(study, "trial")).json()
    wrong = post(client, api(study, f"trials/{nxt['trial']}/answer"),
                 answer_body(0, confidence=3, client={**device, "device": "fridge"}))
    assert wrong.status_code == 422 and "device" in wrong.json()["detail"]
