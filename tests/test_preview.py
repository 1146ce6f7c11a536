"""Preview as participant: a staff walk through the real pages of one arm, never data."""
from __future__ import annotations

import pytest
from django.urls import reverse

from studyapp.models import Participant
from tests.participation_helpers import api, live_tabular, post

pytestmark = pytest.mark.django_db


def test_a_preview_walks_the_chosen_arm_and_never_counts_analyses_or_exports(admin_client, prepare):
    from studyapp.exports.rows import participant_rows, response_rows

    study = live_tabular(prepare)
    arm = study.arms.get(name="integrated_gradients")
    url = reverse("admin:studyapp_study_preview", args=[study.pk])
    assert "Preview as a participant in integrated_gradients" in admin_client.get(url).content.decode()
    response = admin_client.post(url, {"arm": arm.pk})
    assert response.status_code == 302 and response["Location"] == reverse("study-session", args=[study.public_id])
    preview = Participant.objects.get()
    assert (preview.arm, preview.preview, preview.simulated) == (arm, True, True)
    assert admin_client.get(response["Location"]).status_code == 200
    assert admin_client.get(api(study, "state")).json()["step"] == "instructions"
    state = post(admin_client, api(study, "instructions")).json()
    assert state["step"] == "trials"
    trial = admin_client.get(api(study, "trial")).json()
    assert post(admin_client, api(study, f"trials/{trial['trial']}/answer"),
                {"idempotency_key": "8f6b7d1c-3a52-4c1e-9d62-0c4a2b8f1e11", "answer": 0,
                 "client_rt_ms": 900}).status_code == 201
    assert list(participant_rows(study=study, items=[])) == [] and list(response_rows(study=study)) == []
    # Another preview from the same browser replaces this one.
    admin_client.post(url, {"arm": study.arms.get(kind="control").pk})
    assert Participant.objects.count() == 1 and Participant.objects.get().arm.kind == "control"


def test_a_draft_cannot_be_previewed(admin_client):
    from tests.factories import study_with_arms

    study = study_with_arms()
    url = reverse("admin:studyapp_study_preview", args=[study.pk])
    page = admin_client.post(url, {"arm": study.arms.first().pk}, follow=True).content.decode()
    assert "Preview a prepared (ready) or live study" in page and not Participant.objects.exists()
