"""HEAD wherever GET is (link checkers and load-balancer probes use it) and the Permissions-Policy
header on every page (issue 14)."""
from __future__ import annotations

import pytest

from tests.participation_helpers import live_tabular

pytestmark = pytest.mark.django_db


def test_head_is_answered_like_get_on_the_home_page_health_check_and_participant_link(client, prepare):
    study = live_tabular(prepare)
    for path in ("/", "/healthz/", f"/s/{study.public_id}/"):
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == 200, path
        assert head["Content-Type"] == get["Content-Type"]
    from studyapp.models import Participant

    assert not Participant.objects.exists()  # a HEAD on the participant link enrolls nobody


def test_every_page_switches_off_browser_features_it_does_not_use(client):
    policy = client.get("/").headers["Permissions-Policy"]
    for feature in ("camera=()", "microphone=()", "geolocation=()", "payment=()"):
        assert feature in policy
