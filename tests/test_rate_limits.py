"""Rate limits and lockouts (issue 14): logins lock a client address out after repeated failures,
and participant enrollments and answers are counted in the shared cache (Redis under make test)."""
from __future__ import annotations

import pytest
from django.core.cache import cache
from django.test import Client, override_settings
from django.urls import reverse

from studyapp.models import Participant, Response
from tests.participation_helpers import answer_body, api, live_tabular, post, to_trials

pytestmark = [pytest.mark.django_db, pytest.mark.rate_limits]


def client_factory():
    return Client()


@pytest.fixture
def rates(settings):
    """Small limits for the test, with the counters of earlier runs cleared."""
    def set_rates(entry=None, answer=None):
        settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK,
                                   "DEFAULT_THROTTLE_RATES": {"participant_entry": entry, "participant_answer": answer}}
        cache.clear()
    yield set_rates
    cache.clear()


def test_enrollments_from_one_address_beyond_the_limit_get_429_and_enroll_nobody(prepare, rates):
    study = live_tabular(prepare)
    rates(entry="3/min")
    replies = []
    for _ in range(4):
        browser = client_factory()
        browser.get(f"/s/{study.public_id}/")
        replies.append(post(browser, api(study, "consent"), {"agree": True}))
    assert [r.status_code for r in replies] == [201, 201, 201, 429]
    assert int(replies[-1]["Retry-After"]) > 0 and "Nothing was lost" in replies[-1].json()["detail"]
    assert Participant.objects.count() == 3


def test_the_landing_page_says_please_wait_when_the_address_is_over_the_limit(prepare, rates):
    study = live_tabular(prepare)
    rates(entry="1/min")
    pages = []
    for _ in range(2):
        browser = client_factory()
        browser.get(f"/s/{study.public_id}/")
        pages.append(browser.post(f"/s/{study.public_id}/", {"choice": "agree"},
                                  HTTP_X_CSRFTOKEN=browser.cookies["csrftoken"].value))
    assert pages[0].status_code == 302 and pages[1].status_code == 429
    assert "Please wait a moment" in pages[1].content.decode() and Participant.objects.count() == 1


def test_answers_beyond_the_per_participant_limit_get_429_and_are_stored_once_when_resent(client, prepare, rates):
    study = live_tabular(prepare)
    to_trials(client, study)
    rates(answer="1/min")
    first = client.get(api(study, "trial")).json()
    assert post(client, api(study, f"trials/{first['trial']}/answer"), answer_body(0)).status_code == 201
    second = client.get(api(study, "trial")).json()
    body = answer_body(1)
    refused = post(client, api(study, f"trials/{second['trial']}/answer"), body)
    assert refused.status_code == 429 and Response.objects.count() == 1
    rates(answer="100/min")  # the limit's window has passed
    assert post(client, api(study, f"trials/{second['trial']}/answer"), body).status_code == 201
    assert Response.objects.count() == 2


def test_a_login_flood_from_one_address_is_locked_out_before_any_password_is_checked(client, admin_user, settings):
    settings.AXES_FAILURE_LIMIT = 3
    url = reverse("admin:login")
    codes = [client.post(url, {"username": "admin", "password": f"wrong-{i}"}).status_code for i in range(5)]
    # The attempt that reaches the limit is refused already (django-axes counts it first).
    assert codes == [200, 200, 429, 429, 429]
    # Locked out: even the right password is refused from this address until the cool-off.
    assert client.post(url, {"username": "admin", "password": "password"}).status_code == 429


def test_with_redis_down_answers_and_enrollments_go_through_uncounted(client, prepare, rates):
    study = live_tabular(prepare)
    rates(entry="100/min", answer="100/min")
    # Nothing listens on port 1: the counters cannot be read, as with Redis stopped.
    down = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1/0",
                        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1}}}
    with override_settings(CACHES=down):
        to_trials(client, study)
        trial = client.get(api(study, "trial")).json()
        assert post(client, api(study, f"trials/{trial['trial']}/answer"), answer_body(0)).status_code == 201
    assert Response.objects.count() == 1 and Participant.objects.count() == 1
