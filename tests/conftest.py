"""Shared test setup.

- Every test gets its own MEDIA_ROOT/DATA_DIR under tmp_path (no litter in ./var).
- Celery runs tasks in-process by default; tests marked ``redis`` start a real worker instead.
- Tests marked ``postgres``/``redis`` need the real services. With CI=true they FAIL when the
  service is unreachable (a green CI must never hide a skipped integration test); locally they
  are skipped with the reason.
"""
from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _redis_url() -> str:
    return os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


def isolated_broker_url() -> str:
    """Redis database 13 of the test Redis: a developer's running worker never steals test tasks."""
    url = _redis_url()
    base = url.rsplit("/", 1)[0] if url.count("/") > 2 else url
    return f"{base}/13"


def redis_problem() -> str | None:
    import redis

    try:
        redis.Redis.from_url(_redis_url(), socket_connect_timeout=2).ping()
    except Exception as exc:
        return f"Redis at {_redis_url()} is unreachable ({exc.__class__.__name__}: {exc})"
    return None


def postgres_problem() -> str | None:
    from django.db import connection

    if connection.vendor != "postgresql":
        return (f"DATABASE_URL points at {connection.vendor}, not PostgreSQL "
                "(make test sets postgres://postgres@127.0.0.1:5432/studyapp)")
    return None


def _require(problem: str | None) -> None:
    if problem is None:
        return
    if IN_CI:
        pytest.fail(f"{problem}; CI=true, so this test fails instead of skipping.", pytrace=False)
    pytest.skip(problem)


@pytest.fixture(autouse=True)
def _isolated_media(request, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.DATA_DIR = tmp_path
    if not request.node.get_closest_marker("rate_limits"):
        # Rate limits count in the shared Redis: off, except in the tests of the limits themselves.
        settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK,
                                   "DEFAULT_THROTTLE_RATES": {"participant_entry": None, "participant_answer": None}}
    if request.node.get_closest_marker("postgres"):
        _require(postgres_problem())
    if request.node.get_closest_marker("redis"):
        _require(redis_problem())


@pytest.fixture(autouse=True, scope="session")
def _celery_in_process():
    from worker import app

    # Set before anything publishes: Celery caches its broker connection on first use.
    app.conf.broker_url = isolated_broker_url()
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield


@pytest.fixture
def prepare(django_capture_on_commit_callbacks):
    """prepare(study): run the real study_prepare service, its on-commit task included, and return
    the refreshed study (in-process, as in the embedded mode)."""
    from studyapp.services.studies import study_prepare

    def _prepare(study):
        with django_capture_on_commit_callbacks(execute=True):
            study_prepare(study=study)
        study.refresh_from_db()
        return study

    return _prepare


@pytest.fixture
def staff_client(client, django_user_model):
    """The test client, logged in as a superuser named "analyst": it may open every study's report and
    exports (which role may open what is tested in test_permissions.py)."""
    client.force_login(django_user_model.objects.create_user(username="analyst", password="pw-123456789",
                                                             is_staff=True, is_superuser=True))
    return client
