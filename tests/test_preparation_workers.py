"""Preparation units on real worker processes through a real Redis, against PostgreSQL: a worker
SIGKILLed mid-preparation, the broker stopped during preparation and at Prepare, several workers
racing on one study, and an analysis requested while the broker is down.

Each test runs its own redis-server (so that it can stop it) and short leases and dispatcher
periods (settings below), and checks the records: every result exactly once, no unit lost or
duplicated, no orphan file.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from studyapp.models import Explanation, PreparationUnit, Study
from studyapp.services.studies import study_prepare
from tests.celery_processes import Processes, RedisServer, use_broker
from tests.celery_processes import wait_for as _wait
from tests.factories import ArmFactory, StimulusFactory, study_with_arms, with_hypothesis

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]
FAST = {"PREPARATION_LEASE_SECONDS": "3", "PREPARATION_DISPATCH_SECONDS": "1", "PREPARATION_RESEND_SECONDS": "3",
        "WORKER_TORCH_THREADS": "1",  # several solo workers share this host's cores
        "PREPARATION_CHUNK": "2"}


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def processes(tmp_path, redis_server):
    procs = Processes(tmp_path, redis_server.url, **FAST)
    with use_broker(redis_server.url):
        yield procs
        procs.stop_all()


def _study(items: int = 12) -> Study:
    """A tabular study with two real arms and a placebo, ``items`` test items (enough for the
    sanity checks) in chunks of two."""
    study = study_with_arms(methods=("integrated_gradients", "saliency"))
    StimulusFactory.create_batch(items, dataset=study.dataset, split="test")
    Study.objects.filter(pk=study.pk).update(config={"blocks": [{"phase": "test", "n_items": items}],
                                                     "attention_checks": {"count": 0}})
    study.refresh_from_db()
    ArmFactory(study=study, name="ig_inverted", kind="explanation", method="integrated_gradients",
               manipulation="inverted", position=3)
    Study.objects.filter(pk=study.pk).update(debrief_text="Some explanations were altered.")
    study.refresh_from_db()
    return with_hypothesis(study)


def _ready(study: Study) -> bool:
    study.refresh_from_db()
    return study.state == Study.State.READY


def _assert_complete_and_exactly_once(study: Study, tmp_path: Path) -> None:
    units = PreparationUnit.objects.filter(study=study)
    assert units.count() == units.values("key").distinct().count()
    assert not units.exclude(status="done").exists()
    sampled = study.items.count()
    arms = study.arms.exclude(kind="control")
    for arm in arms:
        rows = Explanation.objects.filter(arm=arm)
        assert rows.count() == rows.values("stimulus").distinct().count() == sampled, arm.name
        assert not rows.filter(image="").exists()
    # Every stored picture belongs to a row: no orphan from the killed attempt.
    folder = tmp_path / "media" / "explanations"
    on_disk = {f"explanations/{p.name}" for p in folder.iterdir()} if folder.exists() else set()
    referenced = set(Explanation.objects.exclude(image="").values_list("image", flat=True))
    assert on_disk == referenced


def test_a_worker_killed_mid_preparation_delays_the_study_by_about_one_lease_and_loses_nothing(processes, tmp_path):
    processes.beat()
    first = processes.worker("first")
    study = _study()
    study_prepare(study=study)
    # Kill the whole worker process (solo pool: it is the one doing the work) inside a unit.
    running = _wait(lambda: PreparationUnit.objects.filter(study=study, status="running", kind="sanity").first(),
                    timeout=120, what="a sanity-check unit to start", procs=processes, poll=0.01)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    killed_at = time.monotonic()
    assert not _ready(study)
    processes.worker("second")
    _wait(lambda: _ready(study), timeout=120, what="the study to become ready", procs=processes)
    waited = time.monotonic() - killed_at
    running.refresh_from_db()
    assert running.status == "done" and running.attempts == 2, "the killed unit ran again on the second worker"
    _assert_complete_and_exactly_once(study, tmp_path)
    # Bounded by the lease (3 s) and the dispatcher (1 s) plus the remaining work, not by hours.
    assert waited < 90


def test_the_broker_down_at_prepare_and_during_preparation_only_delays_it(processes, redis_server, tmp_path):
    processes.beat()
    processes.worker("w")
    # Prepare while Redis is down: no error for the researcher, units stored, nothing sent.
    redis_server.stop()
    study = _study()
    study_prepare(study=study)
    units = PreparationUnit.objects.filter(study=study)
    assert units.exists() and not units.filter(enqueued_at__isnull=False).exists()
    time.sleep(10)
    redis_server.start()
    _wait(lambda: _ready(study), timeout=120, what="the study prepared after the outage", procs=processes)
    _assert_complete_and_exactly_once(study, tmp_path)
    # Down for 10 s in the middle of a preparation: the queued messages are lost with it.
    second = _study()
    study_prepare(study=second)
    _wait(lambda: PreparationUnit.objects.filter(study=second, status="done", kind="maps").exists(), timeout=120,
          what="the second preparation to be under way", procs=processes, poll=0.01)
    redis_server.stop()
    time.sleep(10)
    assert not _ready(second)
    redis_server.start()
    _wait(lambda: _ready(second), timeout=120, what="the second study ready after the outage", procs=processes)
    _assert_complete_and_exactly_once(second, tmp_path)


@pytest.mark.parametrize("workers", [2, 3])
def test_several_workers_share_one_study_and_store_each_result_once(processes, tmp_path, workers):
    processes.beat()
    for n in range(workers):
        processes.worker(f"w{n}")
    study = _study(items=16)
    study_prepare(study=study)
    _wait(lambda: _ready(study), timeout=180, what="the study to become ready", procs=processes)
    _assert_complete_and_exactly_once(study, tmp_path)
    used = set(PreparationUnit.objects.filter(study=study).values_list("worker", flat=True))
    assert len(used) >= 2, f"one worker did everything: {used}"


def test_an_analysis_requested_with_the_broker_down_runs_once_when_it_is_back(processes, redis_server):
    from studyapp.models import AnalysisJob, AnalysisRun
    from studyapp.services.analysis_jobs import analysis_job_request
    from tests.analysis_factories import add_participant, launch, study_with_items

    processes.beat()
    processes.worker("w")
    study = launch(study_with_items(arms=("control", "explained")))
    for arm, answers in (("control", [1, 0, 0, 1]), ("explained", [1, 1, 0, 1])):
        add_participant(study, arm, answers=answers)
    redis_server.stop()
    job = analysis_job_request(study=study, seed=4, spec=None)  # no error for the researcher
    again = analysis_job_request(study=study, seed=4, spec=None)
    assert again.pk == job.pk
    job.refresh_from_db()
    assert job.status == "queued" and job.enqueued_at is None
    redis_server.start()
    _wait(lambda: AnalysisJob.objects.filter(pk=job.pk, status="done").exists(), timeout=120,
          what="the analysis to run", procs=processes)
    assert AnalysisRun.objects.filter(study=study).count() == 1
    assert AnalysisJob.objects.filter(study=study).count() == 1


def test_each_demo_study_reaches_ready_through_real_workers_with_every_arms_rows_and_files(processes, tmp_path):
    from studyapp.services.datasets import dataset_import_builtin
    from studyapp.services.demo import DEMOS, DemoResult, demo_model, demo_study

    processes.beat()
    processes.worker("w0")
    processes.worker("w1")
    result, studies = DemoResult(), []
    for spec in DEMOS[:2]:  # digits (within, counterfactual predict) and breast cancer (between, choose)
        dataset = dataset_import_builtin(which=spec.builtin)
        studies.append(demo_study(spec=spec, model=demo_model(spec=spec, dataset=dataset, result=result),
                                  dataset=dataset, result=result))
    for study in studies:
        assert study.state == Study.State.PREPARING  # sent to the workers, not run here
    for study in studies:  # all of them first: the orphan check looks at every study's files
        _wait(lambda study=study: _ready(study), timeout=300, what=f"{study.slug} to become ready", procs=processes)
    for study in studies:
        _assert_complete_and_exactly_once(study, tmp_path)
        sampled = study.items.values("stimulus").distinct().count()
        for arm in study.arms.exclude(kind="control"):
            rows = Explanation.objects.filter(arm=arm)
            assert rows.count() == sampled, arm.name
            assert all((tmp_path / "media" / name).is_file() for name in rows.values_list("image", flat=True))
        assert study.preparation["status"] == "done" and study.preparation["explanations_created"]
    workers = set(PreparationUnit.objects.values_list("worker", flat=True))
    assert len(workers) == 2
