"""Enrollment, crowd parameters, outcomes, slots and leakage: the participant session end to end."""
from __future__ import annotations

import datetime as dt
import json
import re

import numpy as np
import pytest
from django.test import Client
from django.utils import timezone

from studyapp.models import ModelOutput, Participant, Response, Stimulus, Study, Trial
from studyapp.simulated_participants import DatabaseOracle, DjangoTransport, run_participant
from tests.factories import study_with_arms
from tests.participation_helpers import (answer_body, api, enroll, live_images, live_tabular, post,
                                         to_trials)

pytestmark = pytest.mark.django_db
PROLIFIC = {"blocks": [{"phase": "learning", "n_items": 2, "show_model_output": True, "show_aid": True},
                       {"phase": "test", "n_items": 3}],
            "attention_checks": {"count": 1}, "min_instruction_seconds": 0, "crowd": {"source": "prolific"}}
CODES = {"completion_code": "C-OK", "screened_out_code": "C-SCREEN", "failed_checks_code": "C-FAIL"}


def finish(client, study, *, answer=None) -> dict:
    """Answer every trial (the expected answer unless ``answer`` is given), then the last steps."""
    while True:
        state = client.get(api(study, "state")).json()
        if state["step"] != "trials":
            break
        trial = client.get(api(study, "trial")).json()
        expected = Trial.objects.get(public_id=trial["trial"]).expected_answer
        choice = expected if answer is None else answer
        assert post(client, api(study, f"trials/{trial['trial']}/answer"), answer_body(choice)).status_code == 201
    post(client, api(study, "questionnaire"), {"answers": {"trust": 4, "helpfulness": 5, "understanding": 3}})
    post(client, api(study, "demographics"), {"age_band": "25-34", "ml_experience": "none"})
    return post(client, api(study, "debrief")).json()


def test_prolific_ids_are_captured_and_the_end_redirects_to_prolific_with_the_code(client, prepare):
    study = live_tabular(prepare, config=PROLIFIC, **CODES)
    params = {"PROLIFIC_PID": "pid-1", "STUDY_ID": "st-1", "SESSION_ID": "se-1"}
    assert enroll(client, study, params).status_code == 201
    post(client, api(study, "instructions"))
    done = finish(client, study)
    assert done["content"] == {"outcome": "completed", "code": "C-OK",
                               "redirect_url": "https://app.prolific.com/submissions/complete?cc=C-OK"}
    participant = Participant.objects.get()
    assert participant.external_id == "pid-1" and participant.source == "prolific"
    assert participant.source_params == params
    assert client.get(api(study, "completion")).json()["redirect_url"].endswith("cc=C-OK")


@pytest.mark.parametrize("policy, status", [("resume", 200), ("refuse", 403)])
def test_the_same_prolific_id_in_another_browser_resumes_or_is_refused(prepare, policy, status):
    config = {**PROLIFIC, "crowd": {"source": "prolific", "same_id_elsewhere": policy}}
    study = live_tabular(prepare, config=config, **CODES)
    first, second = Client(), Client()
    assert enroll(first, study, {"PROLIFIC_PID": "same"}).status_code == 201
    reply = enroll(second, study, {"PROLIFIC_PID": "same"})
    assert reply.status_code == status and Participant.objects.count() == 1
    if policy == "refuse":
        assert reply.json()["reason"] == "already_taken_part"


def test_failing_the_comprehension_quiz_screens_out_never_failed_checks(client, prepare):
    study = live_images(prepare)
    Study.objects.filter(pk=study.pk).update(**CODES)
    enroll(client, study)
    post(client, api(study, "instructions"))
    first = post(client, api(study, "comprehension"), {"answers": [0]}).json()
    assert first["passed"] is False and first["attempts_left"] == 1 and first["state"]["step"] == "comprehension"
    last = post(client, api(study, "comprehension"), {"answers": [0]}).json()
    assert last["state"]["step"] == "done"
    assert last["state"]["content"]["outcome"] == "screened_out" and last["state"]["content"]["code"] == "C-SCREEN"
    participant = Participant.objects.get()
    assert participant.status == "screened_out" and participant.comprehension_attempts == 2


def test_failing_attention_checks_ends_with_the_failed_checks_code(client, prepare):
    config = {**PROLIFIC, "attention_checks": {"count": 2, "fail_threshold": 2}}
    study = live_tabular(prepare, config=config, **CODES)
    to_trials(client, study)
    while client.get(api(study, "state")).json()["step"] == "trials":
        trial = client.get(api(study, "trial")).json()
        row = Trial.objects.get(public_id=trial["trial"])
        wrong = 1 - row.expected_answer if row.task == "attention_check" else row.expected_answer
        post(client, api(study, f"trials/{trial['trial']}/answer"), answer_body(wrong))
    done = finish(client, study)
    assert done["content"]["outcome"] == "failed_checks" and done["content"]["code"] == "C-FAIL"
    assert Participant.objects.get().status == "failed_checks"


def test_the_instructions_cannot_be_skipped_before_the_minimum_reading_time(client, prepare):
    study = live_tabular(prepare, config={**PROLIFIC, "crowd": {}, "min_instruction_seconds": 60})
    state = enroll(client, study).json()
    assert state["step"] == "instructions" and 59 <= state["content"]["seconds_left"] <= 60
    reply = post(client, api(study, "instructions"))
    assert reply.status_code == 409 and "more seconds" in reply.json()["detail"]
    Participant.objects.update(instructions_shown_at=timezone.now() - dt.timedelta(seconds=61))
    assert post(client, api(study, "instructions")).json()["step"] == "trials"
    assert Participant.objects.get().instructions_ms >= 61_000


def test_withdrawing_ends_the_session_and_the_participant_is_never_analysed(client, prepare):
    study = live_tabular(prepare)
    to_trials(client, study)
    state = post(client, api(study, "withdraw")).json()
    assert state["step"] == "done" and state["content"]["outcome"] == "withdrawn" and state["content"]["code"] == ""
    assert client.get(api(study, "trial")).status_code == 409
    assert post(client, api(study, "withdraw")).status_code == 409
    assert Participant.objects.get().status == "withdrawn"


def test_steps_only_move_forward(client, prepare):
    study = live_tabular(prepare)
    enroll(client, study)
    assert post(client, api(study, "debrief")).status_code == 409
    assert post(client, api(study, "questionnaire"), {"answers": {"trust": 1}}).status_code in (409, 422)
    assert client.get(api(study, "completion")).status_code == 409
    post(client, api(study, "instructions"))
    assert post(client, api(study, "instructions")).json()["step"] == "trials"  # a resend: no harm, no move


def test_resent_end_steps_are_stored_once_and_answered_alike(client, prepare):
    from studyapp.models import QuestionnaireAnswer

    study = live_tabular(prepare)
    to_trials(client, study)
    finish(client, study)
    ratings = {"answers": {"trust": 4, "helpfulness": 5, "understanding": 3}}
    assert post(client, api(study, "questionnaire"), ratings).status_code == 200
    assert QuestionnaireAnswer.objects.count() == 3
    other = {"answers": {"trust": 1, "helpfulness": 5, "understanding": 3}}
    assert post(client, api(study, "questionnaire"), other).status_code == 409
    assert post(client, api(study, "demographics"), {"age_band": "25-34", "ml_experience": "none"}).status_code == 200
    assert post(client, api(study, "debrief")).json()["content"]["outcome"] == "completed"


class TestTheStudyLink:
    def test_agreeing_on_the_page_enrolls_and_opens_the_session(self, client, prepare):
        study = live_tabular(prepare)
        client.get(f"/s/{study.public_id}/")
        response = client.post(f"/s/{study.public_id}/?PROLIFIC_PID=x", {"choice": "agree"})
        assert response.status_code == 302 and response["Location"] == f"/s/{study.public_id}/session/"
        assert Participant.objects.count() == 1 and Trial.objects.count() == 6
        assert client.get(api(study, "state")).json()["step"] == "instructions"
        landing = client.get(f"/s/{study.public_id}/").content.decode()
        assert "Continue where you left off" in landing

    def test_declining_stores_nothing(self, client, prepare):
        study = live_tabular(prepare)
        response = client.post(f"/s/{study.public_id}/", {"choice": "decline"})
        assert response.status_code == 200 and "chose not to take part" in response.content.decode()
        assert not Participant.objects.exists()

    def test_staff_previews_never_create_participants(self, admin_client, prepare):
        study = prepare(study_with_arms())  # ready, not live
        assert admin_client.get(f"/s/{study.public_id}/").status_code == 200
        response = admin_client.post(f"/s/{study.public_id}/", {"choice": "agree"})
        assert "previews never create participants" in response.content.decode()
        assert not Participant.objects.exists()

    def test_staff_never_enroll_even_in_a_live_study(self, admin_client, prepare):
        study = live_tabular(prepare)
        response = admin_client.post(f"/s/{study.public_id}/", {"choice": "agree"})
        assert "logged in as staff" in response.content.decode()
        assert enroll(admin_client, study).json()["reason"] == "staff_preview"
        assert not Participant.objects.exists()

    def test_a_full_study_says_so_politely(self, prepare):
        study = live_tabular(prepare, target_per_arm=1)
        for _ in range(2):
            assert enroll(Client(), study).status_code == 201
        late = Client()
        late.get(f"/s/{study.public_id}/")
        page = late.post(f"/s/{study.public_id}/", {"choice": "agree"})
        assert "This study is full" in page.content.decode() and Participant.objects.count() == 2
        assert enroll(Client(), study).json()["reason"] == "full"

    def test_a_closed_study_says_so(self, client, prepare):
        from studyapp.services.studies import study_close

        study = study_close(study=live_tabular(prepare))
        assert client.get(f"/s/{study.public_id}/").status_code == 410
        assert enroll(client, study).json()["reason"] == "closed"


def test_abandoned_slots_are_released_and_refilled(prepare):
    study = live_tabular(prepare, target_per_arm=1)
    first, second = Client(), Client()
    enroll(first, study)
    enroll(second, study)
    assert enroll(Client(), study).json()["reason"] == "full"
    stale = Participant.objects.order_by("pk").first()
    Participant.objects.filter(pk=stale.pk).update(last_seen_at=timezone.now() - dt.timedelta(minutes=61))
    newcomer = enroll(Client(), study)
    assert newcomer.status_code == 201
    stale.refresh_from_db()
    assert stale.status == "abandoned"
    latest = Participant.objects.order_by("pk").last()
    assert latest.arm_id == stale.arm_id  # the released slot is the one refilled
    assert latest.assignment["counts"][stale.arm.name] == 0 and "draw" in latest.assignment


def test_twins_whose_outputs_and_truths_differ_receive_identical_content_before_answering(prepare):
    """The no-leakage proof: B's plan is A's, but before each of B's fetches the model's output on
    the asked item and its truth are changed. Everything B can fetch must be byte-identical to
    what A fetched (opaque ids aside), for forward and counterfactual trials alike."""
    study = live_images(prepare)
    a, b = Client(), Client()
    to_trials(a, study)
    twin = Participant.objects.get()
    twin_b = Participant.objects.create(study=study, arm=twin.arm, status="in_progress", step="trials",
                                        plan_seed=twin.plan_seed, n_trials=twin.n_trials, consented_at=timezone.now(),
                                        last_seen_at=timezone.now())
    for trial in Trial.objects.filter(participant=twin).order_by("position"):
        Trial.objects.create(participant=twin_b, position=trial.position, phase=trial.phase, task=trial.task,
                             stimulus_id=trial.stimulus_id, edit_id=trial.edit_id, options=trial.options,
                             show_explanation=trial.show_explanation, show_model_output=trial.show_model_output,
                             expected_answer=trial.expected_answer, n_options=trial.n_options, block=trial.block,
                             feedback=trial.feedback)
    session = b.session
    session["participation"] = {str(study.public_id): str(twin_b.public_id)}
    session.save()
    compared = set()
    while a.get(api(study, "state")).json()["step"] == "trials":
        got_a = a.get(api(study, "trial"))
        ta = Trial.objects.get(public_id=got_a.json()["trial"])
        tb = Trial.objects.get(participant=twin_b, position=ta.position)
        if not (ta.task == "forward" and ta.show_model_output):  # a learning trial shows the output by design
            _change_the_answer(study, tb)
            compared.add(ta.task)
        got_b = b.get(api(study, "trial"))
        assert _opaque(got_a.content, ta) == _opaque(got_b.content, tb)
        for url_a in _urls(got_a.json()):
            url_b = url_a.replace(str(ta.public_id), str(tb.public_id))
            assert a.get(url_a).content == b.get(url_b).content
        assert {k: v for k, v in got_a.items() if k.lower() not in ("date", "expires")} == \
               {k: v for k, v in got_b.items() if k.lower() not in ("date", "expires")}
        for client, trial in ((a, ta), (b, tb)):
            post(client, api(study, f"trials/{trial.public_id}/answer"), answer_body(0, confidence=4))
    assert {"forward", "counterfactual_predict", "counterfactual_choose", "attention_check"} <= compared


def _change_the_answer(study: Study, trial: Trial) -> None:
    """Give the item another model output and another truth (what B's world differs in)."""
    if trial.task == "counterfactual_choose":
        outputs = list(ModelOutput.objects.filter(model=study.model, edit_id__in=trial.options))
        values = [o.predicted for o in outputs]
        for output, value in zip(outputs, values[1:] + values[:1]):
            ModelOutput.objects.filter(pk=output.pk).update(predicted=value)
        Trial.objects.filter(pk=trial.pk).update(expected_answer=(trial.expected_answer + 1) % len(trial.options))
        return
    if trial.task == "counterfactual_predict":
        ModelOutput.objects.filter(model=study.model, edit_id=trial.edit_id).update(
            predicted=1 - trial.expected_answer)
    elif trial.task == "forward":
        ModelOutput.objects.filter(model=study.model, stimulus_id=trial.stimulus_id).update(
            predicted=1 - trial.expected_answer)
    Stimulus.objects.filter(pk=trial.stimulus_id).update(label=1 - Stimulus.objects.get(pk=trial.stimulus_id).label)
    if trial.task != "attention_check":
        Trial.objects.filter(pk=trial.pk).update(expected_answer=1 - trial.expected_answer)


def _opaque(content: bytes, trial: Trial) -> bytes:
    return content.replace(str(trial.public_id).encode(), b"<trial>")


def _urls(payload: dict) -> list[str]:
    return sorted(set(re.findall(r'"(/api/participate/[^"]+)"', json.dumps(payload))))


def test_answers_collected_through_the_api_feed_the_analysis_and_the_exports(prepare, staff_client):
    from studyapp.services.analysis import study_analyze

    study = live_tabular(prepare)
    for seed in range(6):
        run_participant(transport=DjangoTransport(), study_public_id=str(study.public_id),
                        rng=np.random.default_rng(seed), oracle=DatabaseOracle(study))
    run = study_analyze(study=study, seed=0)
    assert run.kind == "confirmatory" and run.results["analysed_participants"] == 6
    assert Response.objects.count() == 6 * 6
    from django.urls import reverse

    export = staff_client.get(reverse("export-responses", args=[study.pk]))
    lines = b"".join(export.streaming_content).decode().splitlines()
    assert len(lines) == 1 + 6 * 6


def test_the_consent_version_agreed_to_is_stored_and_a_text_changed_meanwhile_must_be_read_again(client, prepare):
    from studyapp.services.participants import consent_version

    study = live_tabular(prepare)
    url = f"/s/{study.public_id}/"
    shown = consent_version(study)
    assert f'value="{shown}"' in client.get(url).content.decode()
    Study.objects.filter(pk=study.pk).update(consent_text="Amended text: we now also record the time you take.")
    stale = client.post(url, {"choice": "agree", "consent_version": shown})
    assert stale.status_code == 200 and "changed after you opened this page" in stale.content.decode()
    assert "Amended text" in stale.content.decode() and not Participant.objects.exists()
    study.refresh_from_db()
    fresh = client.post(url, {"choice": "agree", "consent_version": consent_version(study)})
    assert fresh.status_code == 302
    assert Participant.objects.get().consent_version == consent_version(study) != shown


def test_participants_csv_names_the_consent_version_and_the_device_of_the_first_answer(client, prepare):
    from studyapp.exports.columns import participant_columns
    from studyapp.exports.rows import participant_rows

    study = live_tabular(prepare)
    enroll(client, study)
    post(client, api(study, "instructions"))
    trial = client.get(api(study, "trial")).json()
    device = {"viewport_width": 390, "viewport_height": 844, "device": "phone", "pointer": "coarse"}
    assert post(client, api(study, f"trials/{trial['trial']}/answer"),
                answer_body(trial["model_output"]["value"] if trial["model_output"] else 0,
                            client=device)).status_code == 201
    names = [c.name for c in participant_columns(likert_items=[])]
    row = dict(zip(names, next(iter(participant_rows(study=study, items=[])))))
    assert row["device"] == "phone" and row["consent_version"] == Participant.objects.get().consent_version
    assert len(row["consent_version"]) == 12
