"""Preparation runs on a real Celery worker process through Redis, against PostgreSQL."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from studyapp.models import ModelOutput, Study
from studyapp.services.studies import study_prepare
from tests.conftest import isolated_broker_url
from tests.factories import study_with_arms

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def celery_worker(tmp_path):
    from worker import app

    broker = isolated_broker_url()
    db = connection.settings_dict
    env = {**os.environ, "CELERY_BROKER_URL": broker, "DATA_DIR": str(tmp_path),
           "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"}
    log = open(tmp_path / "worker.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", "cpu,gpu", "--pool", "solo",
         "--without-gossip", "--without-mingle", "-n", f"test-{os.getpid()}@%h", "-l", "info"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    assert app.conf.broker_url == broker  # set by conftest before any publish
    app.control.purge()  # leftovers of an interrupted run would run first
    app.conf.task_always_eager = False
    try:
        deadline = time.monotonic() + 60
        while "ready." not in (tmp_path / "worker.log").read_text():
            assert process.poll() is None, "worker exited:\n" + (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, "worker did not start:\n" + (tmp_path / "worker.log").read_text()
            time.sleep(0.2)
        yield process
    finally:
        app.conf.task_always_eager = True
        process.terminate()
        process.wait(timeout=30)
        log.close()


def wait_for_state(study: Study, state: str, log: Path, timeout: float = 60) -> Study:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        study.refresh_from_db()
        if study.state == state:
            return study
        time.sleep(0.2)
    raise AssertionError(f"study stayed {study.state}; wanted {state}. Worker log:\n{log.read_text()}")


def test_preparing_a_study_runs_on_the_worker_and_makes_it_ready(celery_worker, tmp_path):
    study = study_with_arms()
    study_prepare(study=study)  # commits, then enqueues on commit
    study = wait_for_state(study, Study.State.READY, tmp_path / "worker.log")
    assert ModelOutput.objects.filter(model=study.model, stimulus__isnull=False).count() == 10
    assert study.preparation["status"] == "done"
    assert "run_preparation_unit" in (tmp_path / "worker.log").read_text()  # it ran there, not in this process


def test_a_requested_analysis_runs_on_the_worker_and_stores_one_run(celery_worker, tmp_path):
    from studyapp.models import AnalysisJob, AnalysisRun
    from studyapp.services.analysis_jobs import analysis_job_request
    from tests.analysis_factories import add_participant, launch, study_with_items

    study = launch(study_with_items(arms=("control", "explained")))
    for arm, answers in (("control", [1, 0, 0, 1]), ("explained", [1, 1, 0, 1])):
        add_participant(study, arm, answers=answers)
    job = analysis_job_request(study=study, seed=4, spec=None)  # commits, then enqueues on commit
    deadline = time.monotonic() + 90
    while job.status in ("queued", "running"):
        assert time.monotonic() < deadline, "job stayed " + job.status + ":\n" + (tmp_path / "worker.log").read_text()
        time.sleep(0.3)
        job.refresh_from_db()
    assert job.status == AnalysisJob.Status.DONE, job.error
    assert AnalysisRun.objects.filter(study=study).get() == job.run and job.run.seed == 4
    assert "analyze_study" in (tmp_path / "worker.log").read_text()  # it ran there, not in this process
