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


def test_a_malformed_multipart_body_gets_a_400_and_one_log_line_without_a_traceback(admin_client, caplog):
    import logging
    import sys

    from studyapp.error_reports import NoTracebackForBadClientBodies

    with caplog.at_level(logging.WARNING, logger="django.request"):
        response = admin_client.generic("POST", "/admin/login/", b"--x\r\n\r\nb\r\n--x",
                                        content_type="multipart/form-data; boundary=\x01")
    assert response.status_code == 400
    logged = [r for r in caplog.records if r.name == "django.request"]
    assert len(logged) == 1 and logged[0].levelname == "WARNING" and logged[0].exc_info is None
    assert "/admin/login/" in logged[0].getMessage()
    try:  # any other error keeps its traceback
        raise ValueError("a real fault")
    except ValueError:
        record = logging.LogRecord("django.request", logging.ERROR, __file__, 1, "Internal Server Error", (),
                                   sys.exc_info())
    assert NoTracebackForBadClientBodies().filter(record) and record.exc_info[0] is ValueError
