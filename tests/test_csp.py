"""Content-Security-Policy: strict on every participant page and API response; the admin and the
staff pages only add inline styles (scripts stay 'self' everywhere)."""
from __future__ import annotations

import pytest
from django.conf import settings

from tests.participation_helpers import api, enroll, live_tabular, post

pytestmark = pytest.mark.django_db

STRICT = settings.CONTENT_SECURITY_POLICY["DIRECTIVES"]


def policy(response) -> dict[str, list[str]]:
    assert "Content-Security-Policy" in response, f"no CSP header on {response.status_code} {response}"
    directives = {}
    for part in response["Content-Security-Policy"].split(";"):
        name, *sources = part.split()
        directives[name] = sources
    return directives


def assert_strict(response) -> None:
    directives = policy(response)
    assert directives == STRICT
    # What "strict" means, independent of the settings (a weakened setting fails here too).
    assert directives["script-src"] == directives["style-src"] == ["'self'"]
    assert directives["object-src"] == directives["base-uri"] == ["'none'"]
    assert "unsafe" not in response["Content-Security-Policy"]


def test_the_landing_page_of_a_live_study_carries_the_strict_policy(client, prepare):
    study = live_tabular(prepare)
    response = client.get(f"/s/{study.public_id}/")
    assert response.status_code == 200
    assert_strict(response)


def test_the_session_page_and_the_participant_api_carry_the_strict_policy(client, prepare):
    study = live_tabular(prepare)
    consent = enroll(client, study)
    assert consent.status_code == 201
    assert_strict(consent)
    state = client.get(api(study, "state"))
    assert state.status_code == 200
    assert_strict(state)
    assert_strict(post(client, api(study, "instructions")))
    session_page = client.get(f"/s/{study.public_id}/session/")
    assert session_page.status_code == 200
    assert_strict(session_page)


def test_refusals_and_unknown_pages_carry_the_strict_policy_too(client, prepare):
    study = live_tabular(prepare)
    no_session = client.get(api(study, "state"))
    assert no_session.status_code >= 400
    assert_strict(no_session)
    assert_strict(client.get("/s/00000000-0000-0000-0000-000000000000/"))


@pytest.mark.parametrize("path", ["/admin/", "/admin/studyapp/study/", "/staff/planner/"])
def test_admin_and_staff_pages_allow_inline_styles_but_never_inline_scripts(admin_client, path):
    response = admin_client.get(path)
    assert response.status_code == 200
    directives = policy(response)
    assert directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'", "'unsafe-inline'"]
    assert {k: v for k, v in directives.items() if k != "style-src"} == {
        k: v for k, v in STRICT.items() if k != "style-src"}


def test_a_path_that_only_looks_like_the_admin_stays_strict(client):
    assert_strict(client.get("/administrator/"))
