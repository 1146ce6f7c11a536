"""The participant link and operational endpoints."""
from __future__ import annotations

import pytest
from django.urls import reverse

from studyapp.models import Study
from tests.factories import study_with_arms

pytestmark = pytest.mark.django_db


def with_state(state: str) -> Study:
    study = study_with_arms()
    extra = {"frozen_config": {}, "frozen_sha256": "f" * 64, "launched_at": "2026-01-01T00:00Z"} \
        if state in ("live", "closed") else {}
    Study.objects.filter(pk=study.pk).update(state=state, **extra)
    return study


def test_a_live_study_shows_its_consent_page_to_anyone(client):
    study = with_state("live")
    response = client.get(reverse("study-landing", args=[study.public_id]))
    assert response.status_code == 200
    page = response.content.decode()
    assert study.title in page and study.consent_text in page
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]


def test_the_landing_page_never_names_arms_or_the_model(client):
    study = with_state("live")
    page = client.get(reverse("study-landing", args=[study.public_id])).content.decode()
    for secret in ["integrated_gradients", "control", study.model.name, study.slug]:
        assert secret not in page


@pytest.mark.parametrize("state", ["draft", "preparing", "ready"])
def test_a_study_that_is_not_live_is_hidden_from_participants_but_previewable_by_staff(client, admin_client, state):
    study = with_state(state)
    url = reverse("study-landing", args=[study.public_id])
    assert client.get(url).status_code == 404
    preview = admin_client.get(url)
    assert preview.status_code == 200 and "Preview for staff" in preview.content.decode()


def test_a_study_that_is_not_live_is_hidden_from_staff_who_may_not_see_it(client, django_user_model):
    study = with_state("ready")
    stranger = django_user_model.objects.create_user("stranger", password="x", is_staff=True)
    client.force_login(stranger)
    url = reverse("study-landing", args=[study.public_id])
    assert client.get(url).status_code == 404
    study.collaborators.add(stranger)
    assert client.get(url).status_code == 200


def test_a_closed_study_says_so(client):
    study = with_state("closed")
    response = client.get(reverse("study-landing", args=[study.public_id]))
    assert response.status_code == 410 and "has closed" in response.content.decode()


def test_an_unknown_study_link_is_not_found(client):
    assert client.get("/s/00000000-0000-0000-0000-000000000000/").status_code == 404


def test_health_check_reports_the_database(client):
    response = client.get(reverse("healthz"))
    assert response.status_code == 200 and response.json() == {"status": "ok", "database": "ok"}


def test_the_openapi_schema_is_for_staff_only(client, admin_client):
    assert client.get(reverse("api-schema")).status_code in (401, 403)
    assert admin_client.get(reverse("api-schema")).status_code == 200
