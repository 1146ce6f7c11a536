"""Participant sessions in Redis, written through to PostgreSQL (studyapp/sessions.py): read
without a database query while Redis is up, and a Redis outage costs speed, never a session."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from studyapp.models import Response
from tests.conftest import _redis_url
from tests.participation_helpers import answer_body, api, live_tabular, post, to_trials

pytestmark = pytest.mark.django_db

REDIS = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _redis_url(),
                     "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1}}}
# Nothing listens on port 1: every cache call fails at once, as with Redis stopped.
REDIS_DOWN = {"default": {**REDIS["default"], "LOCATION": "redis://127.0.0.1:1/0"}}


@pytest.mark.redis
@override_settings(SESSION_ENGINE="studyapp.sessions", CACHES=REDIS)
def test_with_redis_up_a_trial_fetch_reads_the_session_without_a_database_query(client, prepare):
    study = live_tabular(prepare)
    to_trials(client, study)
    client.get(api(study, "trial"))  # the first read after enrollment may fill the cache
    with CaptureQueriesContext(connection) as queries:
        assert client.get(api(study, "trial")).status_code == 200
    assert not [q for q in queries.captured_queries if "django_session" in q["sql"]]


@override_settings(SESSION_ENGINE="studyapp.sessions", CACHES=REDIS_DOWN)
def test_with_redis_down_a_participant_enrolls_answers_and_resumes_from_the_database(client, prepare):
    study = live_tabular(prepare)
    to_trials(client, study)  # enrollment rotates the session key: the cache delete fails quietly
    trial = client.get(api(study, "trial")).json()
    reply = post(client, api(study, f"trials/{trial['trial']}/answer"), answer_body(1))
    assert reply.status_code == 201 and Response.objects.count() == 1
    assert client.get(api(study, "state")).json()["step"] == "trials"


@pytest.mark.redis
def test_a_session_survives_redis_going_down_between_two_requests(client, prepare):
    study = live_tabular(prepare)
    with override_settings(SESSION_ENGINE="studyapp.sessions", CACHES=REDIS):
        to_trials(client, study)
        first = client.get(api(study, "trial")).json()
    with override_settings(SESSION_ENGINE="studyapp.sessions", CACHES=REDIS_DOWN):
        reply = post(client, api(study, f"trials/{first['trial']}/answer"), answer_body(0))
        assert reply.status_code == 201
        assert client.get(api(study, "trial")).json()["trial"] != first["trial"]
