"""Settings come from the environment and fail loudly on malformed values."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from studyapp.env import env_bool, env_database, env_int, env_list

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION_ENV = {
    "DJANGO_DEBUG": "False",
    "DJANGO_SECRET_KEY": "k" * 20 + "-production-secret-key-for-the-deploy-check-0123456789",
    "DJANGO_ALLOWED_HOSTS": "studies.example.org",
}


def run_manage(*args: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("DJANGO_", "DATABASE_URL", "CELERY_", "REDIS_URL"))}
    clean.update({"DATA_DIR": str(tmp_path), **env})
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True,
                          text=True, timeout=120)


def test_a_malformed_boolean_names_the_variable_and_the_accepted_words():
    with pytest.raises(ImproperlyConfigured, match=r"DJANGO_DEBUG='maybe' is not a boolean.*true.*false"):
        env_bool("DJANGO_DEBUG", True, environ_={"DJANGO_DEBUG": "maybe"})


@pytest.mark.parametrize("word,expected", [("False", False), ("0", False), ("yes", True), ("ON", True)])
def test_boolean_words_are_understood(word, expected):
    assert env_bool("X", not expected, environ_={"X": word}) is expected


def test_an_unset_or_empty_variable_takes_the_default():
    assert env_int("MAX_UPLOAD_MB", 200, environ_={}) == 200
    assert env_int("MAX_UPLOAD_MB", 200, environ_={"MAX_UPLOAD_MB": "  "}) == 200


def test_a_malformed_number_is_refused_instead_of_truncated():
    with pytest.raises(ImproperlyConfigured, match=r"MAX_UPLOAD_MB='12abc' is not a whole number"):
        env_int("MAX_UPLOAD_MB", 200, environ_={"MAX_UPLOAD_MB": "12abc"})


def test_a_number_out_of_range_says_the_bound():
    with pytest.raises(ImproperlyConfigured, match="must be at least 1"):
        env_int("MAX_UPLOAD_MB", 200, minimum=1, environ_={"MAX_UPLOAD_MB": "0"})


def test_a_list_with_an_empty_entry_is_refused():
    with pytest.raises(ImproperlyConfigured, match="empty entry"):
        env_list("DJANGO_ALLOWED_HOSTS", [], environ_={"DJANGO_ALLOWED_HOSTS": "a.org,,b.org"})


def test_database_url_switches_between_sqlite_and_postgres():
    sqlite = env_database("DATABASE_URL", "sqlite:////tmp/x.sqlite3", environ_={})
    assert sqlite["ENGINE"] == "django.db.backends.sqlite3" and sqlite["NAME"] == "/tmp/x.sqlite3"
    pg = env_database("DATABASE_URL", "", environ_={"DATABASE_URL": "postgres://u:p@db:5432/studies"})
    assert (pg["ENGINE"], pg["HOST"], pg["PORT"], pg["NAME"], pg["USER"]) == (
        "django.db.backends.postgresql", "db", 5432, "studies", "u")


@pytest.mark.parametrize("url,message", [
    ("mysql://u@h/db", "unsupported database"),
    ("not a url", "is not a database URL"),
    ("postgres://u@h:5432", "names no database"),
])
def test_bad_database_urls_are_explained(url, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        env_database("DATABASE_URL", "", environ_={"DATABASE_URL": url})


def test_production_without_a_secret_key_refuses_to_start(tmp_path):
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != "DJANGO_SECRET_KEY"}
    result = run_manage("check", env=env, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is False" in result.stderr


def test_a_malformed_variable_stops_manage_py_with_a_clear_message(tmp_path):
    result = run_manage("check", env={"DJANGO_DEBUG": "perhaps"}, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "DJANGO_DEBUG='perhaps' is not a boolean" in result.stderr


def test_production_settings_pass_the_deploy_check_without_warnings(tmp_path):
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "System check identified no issues" in result.stdout


def test_the_embedded_default_uses_sqlite_and_runs_tasks_in_process(tmp_path):
    code = ("from django.conf import settings; import django; django.setup(); "
            "print(settings.DATABASES['default']['ENGINE'], settings.CELERY_TASK_ALWAYS_EAGER)")
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("DJANGO_", "DATABASE_URL", "CELERY_", "REDIS_URL"))}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={**clean, "DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "studyapp.settings",
                                 "DJANGO_DEBUG": "true"})
    assert result.stdout.split() == ["django.db.backends.sqlite3", "True"], result.stderr


def test_a_web_server_started_without_any_setting_refuses_instead_of_running_with_debug(tmp_path):
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("DJANGO_", "DATABASE_URL", "CELERY_", "REDIS_URL"))}
    result = subprocess.run([sys.executable, "-c", "import studyapp.wsgi"], cwd=ROOT, capture_output=True,
                            text=True, env={**clean, "DATA_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr and "DJANGO_DEBUG=true" in result.stderr


def test_manage_py_runs_the_embedded_development_default_without_any_setting(tmp_path):
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("DJANGO_", "DATABASE_URL", "CELERY_", "REDIS_URL"))}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
                            env={**clean, "DATA_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr


def test_error_reports_hide_the_service_urls_that_carry_passwords(settings):
    from django.views.debug import get_exception_reporter_filter

    settings.CELERY_BROKER_URL = "redis://:hunter2@redis:6379/0"
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": "redis://:hunter2@redis:6379/1"}}
    shown = repr(get_exception_reporter_filter(None).get_safe_settings())
    assert "hunter2" not in shown and "CELERY_BROKER_URL" in shown


def test_the_web_process_starts_without_loading_pytorch(tmp_path):
    # PyTorch costs ~250 MB per gunicorn worker; it is loaded only when a model is validated or run.
    code = ("import os, sys, django; os.environ['DJANGO_SETTINGS_MODULE'] = 'studyapp.settings'; django.setup(); "
            "from django.urls import resolve; resolve('/admin/'); import studyapp.urls; "
            "print('torch' in sys.modules, 'captum' in sys.modules)")
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("DJANGO_", "DATABASE_URL", "CELERY_", "REDIS_URL"))}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={**clean, "DATA_DIR": str(tmp_path), "DJANGO_DEBUG": "true"})
    assert result.stdout.split() == ["False", "False"], result.stderr


def test_a_worker_shares_the_hosts_cores_among_its_pool_processes(monkeypatch, settings):
    from types import SimpleNamespace

    from worker.celery import _threads_per_process

    variables = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    for variable in variables:
        monkeypatch.setenv(variable, "x")
        monkeypatch.delenv(variable)  # restored (absent) after the test
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    settings.WORKER_TORCH_THREADS = 0
    _threads_per_process(sender=SimpleNamespace(concurrency=4))
    assert [os.environ[v] for v in variables] == ["2", "2", "2"]
    # An explicit setting wins over the division, and a variable set by the operator wins over both.
    monkeypatch.delenv("MKL_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    settings.WORKER_TORCH_THREADS = 1
    _threads_per_process(sender=SimpleNamespace(concurrency=4))
    assert (os.environ["OMP_NUM_THREADS"], os.environ["MKL_NUM_THREADS"]) == ("3", "1")
