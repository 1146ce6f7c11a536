"""Simulated participants: through the real API, marked, balanced among themselves, never confirmatory."""
from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from studyapp.models import AnalysisRun, Participant, Response, Study, Trial
from studyapp.services.analysis import study_analyze
from studyapp.services.errors import ServiceError
from studyapp.services.participants import participants_delete_simulated
from studyapp.services.studies import study_launch
from tests.factories import study_with_arms
from tests.participation_helpers import enroll, live_tabular, post

pytestmark = pytest.mark.django_db


def simulate(study: Study, *args: str) -> str:
    out = io.StringIO()
    call_command("simulate_participants", "--study", study.slug, *args, stdout=out)
    return out.getvalue()


def test_a_pilot_on_a_ready_study_runs_simulated_participants_to_their_codes(prepare):
    study = prepare(study_with_arms())
    Study.objects.filter(pk=study.pk).update(completion_code="PILOT-OK")
    output = simulate(study, "--n", "6", "--accuracy", "integrated_gradients=0.9")
    assert "6 simulated participants finished" in output and "completed: 6" in output
    people = Participant.objects.filter(study=study)
    assert people.count() == 6 and all(p.simulated and p.completion_code == "PILOT-OK" for p in people)
    assert sorted(people.values_list("arm__name", flat=True)) == ["control"] * 3 + ["integrated_gradients"] * 3
    assert Response.objects.filter(trial__participant__study=study).count() == 6 * 6
    study.refresh_from_db()
    assert study.state == "ready"


def test_a_live_study_needs_allow_live(prepare):
    study = live_tabular(prepare)
    with pytest.raises(CommandError, match="is live: simulating participants there needs --allow-live"):
        simulate(study, "--n", "1")
    assert "1 simulated participants finished" in simulate(study, "--n", "1", "--allow-live")


def test_bad_arguments_are_explained(prepare):
    study = prepare(study_with_arms())
    with pytest.raises(CommandError, match="has no arm 'nope'"):
        simulate(study, "--n", "1", "--accuracy", "nope=0.5")
    with pytest.raises(CommandError, match="P must be from 0 to 1"):
        simulate(study, "--n", "1", "--accuracy", "control=2")
    with pytest.raises(CommandError, match="No study with the slug"):
        call_command("simulate_participants", "--study", "missing", "--n", "1")


def test_simulated_participants_never_fill_real_slots_or_enter_a_confirmatory_analysis(prepare, staff_client):
    from django.test import Client

    study = live_tabular(prepare, target_per_arm=1)
    simulate(study, "--n", "4", "--allow-live")
    assert enroll(Client(), study).status_code == 201  # four simulated, yet the study is not full
    # With no real participant to analyse, a confirmatory run is refused rather than stored as a look.
    with pytest.raises(ServiceError, match="4 simulated participants are never analysed confirmatorily"):
        study_analyze(study=study, seed=0)
    assert not AnalysisRun.objects.filter(study=study).exists()
    pilot = study_analyze(study=study, seed=0, simulated=True)
    assert pilot.kind == "exploratory" and pilot.results["analysed_participants"] == 4
    assert "run on simulated participants only" in pilot.results["exploratory_reasons"]
    csv = b"".join(staff_client.get(reverse("export-participants", args=[study.pk])).streaming_content).decode()
    header, *rows = csv.splitlines()
    column = header.split(",").index("simulated")
    assert sorted(row.split(",")[column] for row in rows) == ["0", "1", "1", "1", "1"]


def test_simulated_participants_can_be_deleted_with_everything_they_answered(prepare):
    study = prepare(study_with_arms())
    simulate(study, "--n", "2")
    study = study_launch(study=study)
    assert participants_delete_simulated(study=study) == 2
    assert not Participant.objects.exists() and not Trial.objects.exists() and not Response.objects.exists()


def test_a_forged_simulation_token_is_refused(client, prepare):
    study = prepare(study_with_arms())
    client.get(f"/api/participate/{study.public_id}/state")
    reply = post(client, f"/api/participate/{study.public_id}/consent", {"agree": True, "simulation": "forged:x"})
    assert reply.status_code == 422 and "not valid" in reply.json()["detail"]
    assert not Participant.objects.exists()


def test_nobody_real_can_join_a_study_that_is_only_ready(client, prepare):
    study = prepare(study_with_arms())
    reply = enroll(client, study)
    assert reply.status_code == 403 and reply.json()["reason"] == "not_open"


@pytest.mark.django_db(transaction=True)
def test_simulated_participants_speak_http_to_a_running_server(live_server, prepare):
    from studyapp.services.studies import study_prepare

    study = study_with_arms()
    study_prepare(study=study)
    study.refresh_from_db()
    assert "2 simulated participants finished" in simulate(study, "--n", "2", "--base-url", live_server.url)
    assert Participant.objects.filter(study=study, simulated=True, status="completed").count() == 2


def test_the_openapi_schema_documents_the_participant_api_and_is_valid(admin_client):
    from drf_spectacular.validation import validate_schema

    schema = admin_client.get(reverse("api-schema") + "?format=json").json()
    validate_schema(schema)
    paths = schema["paths"]
    prefix = "/api/participate/{study}/"
    for op in ("consent", "state", "instructions", "comprehension", "trial", "trials/{trial}/answer",
               "questionnaire", "demographics", "debrief", "completion", "media/{trial}/{slot}"):
        assert prefix + op in paths, op
    answer = paths[prefix + "trials/{trial}/answer"]["post"]
    assert {"200", "201", "409", "422"} <= set(answer["responses"])
    assert "participantSession" in schema["components"]["securitySchemes"]


def test_responses_csv_marks_every_row_of_a_simulated_participant(prepare, staff_client):
    from django.test import Client

    study = live_tabular(prepare)
    simulate(study, "--n", "2", "--allow-live")
    assert enroll(Client(), study).status_code == 201  # one real participant, not started
    csv = b"".join(staff_client.get(reverse("export-responses", args=[study.pk])).streaming_content).decode()
    header, *rows = csv.splitlines()
    simulated, participant = header.split(",").index("simulated"), header.split(",").index("participant")
    flags = {row.split(",")[participant]: row.split(",")[simulated] for row in rows}
    real = {str(p.public_id) for p in study.participants.filter(simulated=False)}
    assert sorted(flags.values()) == ["0", "1", "1"] and {pid for pid, flag in flags.items() if flag == "0"} == real
