"""Large dataset uploads are imported by a worker with progress; small ones in the request.

The request refuses at once what the cheap checks find; the job imports all or nothing, once, however
often its message is delivered; a failing file ends failed with its messages; a worker killed
mid-import leaves no half dataset and the import runs again. The last tests use real worker processes
through a Redis of their own, against PostgreSQL.
"""
from __future__ import annotations

import datetime as dt
import io
import os
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth.models import Permission
from django.db import IntegrityError, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from studyapp.models import Dataset, DatasetImport, Stimulus
from studyapp.services import dataset_imports
from studyapp.services.dataset_imports import (dataset_import_run, dataset_import_start, dataset_imports_dispatch,
                                               expired_imports_release)
from studyapp.services.datasets import DatasetValidationError, common
from tests.celery_processes import Processes, RedisServer, use_broker
from tests.celery_processes import wait_for as _wait

pytestmark = pytest.mark.django_db


def csv_bytes(rows: int, features: int = 4, *, bad_row: int | None = None) -> bytes:
    """A valid table of ``rows`` rows (two classes); ``bad_row`` (0-based) gets a word in a number's place."""
    values = np.random.default_rng(0).normal(size=(rows, features)).round(3).astype(str)
    if bad_row is not None:
        values[bad_row, 1] = "twelve"
    labels = np.where(np.arange(rows) % 2 == 0, "yes", "no")
    lines = [",".join([f"f{j}" for j in range(features)] + ["label"])]
    lines += [",".join(row) + "," + label for row, label in zip(values.tolist(), labels)]
    return ("\n".join(lines) + "\n").encode()


def zip_bytes(n: int, *, labels_csv: bool = True) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(n):
            image = io.BytesIO()
            Image.fromarray(((np.arange(64).reshape(8, 8) + i) % 256).astype(np.uint8), "L").save(image, format="PNG")
            archive.writestr(f"img{i}.png", image.getvalue())
        if labels_csv:
            archive.writestr("labels.csv", "filename,label\n" + "".join(f"img{i}.png,{'ab'[i % 2]}\n" for i in range(n)))
    return buffer.getvalue()


def named(data: bytes, name: str) -> io.BytesIO:
    upload = io.BytesIO(data)
    upload.name = name
    return upload


def stored(folder: str) -> set[str]:
    from django.conf import settings

    path = Path(settings.MEDIA_ROOT) / folder
    return {p.name for p in path.iterdir()} if path.exists() else set()


@pytest.fixture
def via_worker(monkeypatch):
    """Every upload counts as large: it goes through a job (the files of these tests stay small and fast)."""
    monkeypatch.setattr(dataset_imports, "INLINE_MAX_BYTES", 0)


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    """committed(service, **kwargs): call it and run what it left for after commit (deleting files), as the
    worker's own transactions would."""
    def call(service, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return service(**kwargs)

    return call


def queue(name: str, data: bytes, *, kind: str = "tabular", filename: str = "data.csv", **options) -> DatasetImport:
    """Start an import whose message is not sent (the test runs the worker's half itself)."""
    job = dataset_import_start(name=name, kind=kind, data_file=named(data, filename), **options)
    assert isinstance(job, DatasetImport) and job.status == DatasetImport.Status.QUEUED
    return job


# --------------------------------------------------------------------------- the request

def test_a_small_upload_is_imported_in_the_request_and_keeps_no_job_or_file():
    dataset = dataset_import_start(name="small", kind="tabular", data_file=named(csv_bytes(20), "small.csv"))
    assert isinstance(dataset, Dataset) and dataset.n_items == 20
    assert not DatasetImport.objects.exists()
    assert stored("imports") == set()


def test_a_large_upload_is_queued_with_its_file_and_the_job_imports_it_into_one_dataset(
        via_worker, django_capture_on_commit_callbacks):
    data = csv_bytes(300)
    with django_capture_on_commit_callbacks(execute=True):
        job = dataset_import_start(name="large", kind="tabular", data_file=named(data, "large.csv"),
                                   description="Three hundred rows.")
        assert job.status == "queued" and job.upload.name.startswith("imports/") and "large" not in job.upload.name
        assert stored("imports") == {Path(job.upload.name).name}
    job.refresh_from_db()
    assert job.status == "succeeded" and job.phase == "imported"
    assert job.progress_done == job.progress_total == 300
    dataset = Dataset.objects.get()
    assert job.dataset == dataset and dataset.n_items == 300 and dataset.description.startswith("Three hundred rows.")
    assert dataset.content_sha256 == job.content_sha256
    # The upload is deleted once imported: the dataset keeps its fingerprint.
    assert job.upload.name == "" and stored("imports") == set()


def test_a_queued_table_keeps_its_label_column_class_names_and_feature_descriptions(via_worker, committed):
    data = csv_bytes(100).replace(b",label\n", b",outcome\n", 1)
    descriptions = named(b"feature,description,unit\nf0,Age,years\nf2,Weight,kg\n", "features.csv")
    job = committed(dataset_import_start, name="described", kind="tabular", data_file=named(data, "d.csv"),
                    label_column="outcome", class_names=["yes", "no"], descriptions=descriptions)
    job.refresh_from_db()
    assert job.status == "succeeded", job.messages
    assert job.dataset.class_names == ["yes", "no"]
    assert job.dataset.feature_descriptions == {"f0": {"description": "Age", "unit": "years"},
                                                "f2": {"description": "Weight", "unit": "kg"}}


def test_a_descriptions_file_naming_no_feature_of_the_header_is_refused_at_once(via_worker):
    with pytest.raises(DatasetValidationError, match="features.csv row 2 describes 'height', which is not a feature"):
        dataset_import_start(name="described", kind="tabular", data_file=named(csv_bytes(100), "d.csv"),
                             descriptions=named(b"feature,description\nheight,Height\n", "features.csv"))
    assert not DatasetImport.objects.exists()


@pytest.mark.parametrize("kind, data, filename, expected", [
    ("tabular", csv_bytes(3000, 12), "wide.csv", "more than 10 feature columns"),
    ("tabular", csv_bytes(3000).replace(b",label\n", b",class\n", 1), "data.csv",
     "data.csv has no label column 'label'"),
    ("tabular", b"\xff\xfef\x000\x00", "utf16.csv", "utf16.csv is saved as UTF-16"),
    ("tabular", csv_bytes(3000), "data.xlsx", "data.xlsx is a spreadsheet workbook (.xlsx), not a CSV file"),
    ("images", zip_bytes(300), "images.rar", "images.rar is a .rar archive; only .zip archives can be read"),
    ("images", zip_bytes(300, labels_csv=False), "images.zip", "The archive has no labels.csv"),
    ("images", zip_bytes(300), "images.zip", "The archive has 301 entries; at most 100 are allowed"),
])
def test_what_the_cheap_checks_find_is_refused_at_once_and_nothing_is_saved(
        settings, monkeypatch, via_worker, kind, data, filename, expected):
    settings.MAX_DATASET_FEATURES = 10
    monkeypatch.setattr(common, "MAX_ARCHIVE_ENTRIES", 100 if filename == "images.zip" and b"labels.csv" in data
                        else common.MAX_ARCHIVE_ENTRIES)
    with pytest.raises(DatasetValidationError) as refusal:
        dataset_import_start(name="refused", kind=kind, data_file=named(data, filename))
    assert expected in " ".join(refusal.value.messages)
    assert not DatasetImport.objects.exists() and stored("imports") == set()


def test_a_second_upload_of_a_name_being_imported_is_refused_in_words(via_worker):
    queue("twice", csv_bytes(50))
    with pytest.raises(DatasetValidationError, match="'twice' is already being imported"):
        queue("twice", csv_bytes(60))
    # The database says so too: two active imports of one name cannot exist.
    with pytest.raises(IntegrityError), transaction.atomic():
        DatasetImport.objects.create(name="twice", kind="tabular", content_sha256="0" * 64)
    assert DatasetImport.objects.count() == 1 and len(stored("imports")) == 1


# --------------------------------------------------------------------------- the worker's half

def test_a_file_the_import_refuses_ends_failed_with_the_messages_in_words_and_its_upload_deleted(
        via_worker, committed):
    job = queue("bad cell", csv_bytes(400, bad_row=250))
    assert committed(dataset_import_run, job_id=job.pk) == "failed"
    job.refresh_from_db()
    assert job.status == "failed" and job.finished_at is not None
    assert any("column 'f1' must contain numbers, but has non-numeric values: row 252: 'twelve'" in m
               for m in job.messages), job.messages
    assert not Dataset.objects.exists() and not Stimulus.objects.exists()
    assert job.upload.name == "" and stored("imports") == set()


@pytest.mark.postgres
def test_a_retried_or_duplicated_task_imports_the_file_once(via_worker):
    job = queue("once", csv_bytes(120))
    assert dataset_import_run(job_id=job.pk, worker="w1") == "succeeded"
    # The same message again (a retry, a redelivery after a lost ack) finds the job finished.
    assert dataset_import_run(job_id=job.pk, worker="w2") == "succeeded"
    assert dataset_import_run(job_id=job.pk, worker="w1") == "succeeded"
    assert Dataset.objects.count() == 1 and Stimulus.objects.count() == 120
    job.refresh_from_db()
    assert job.attempts == 1 and job.worker == "w1"


@pytest.mark.postgres
def test_a_duplicate_message_while_another_worker_holds_the_job_does_nothing(via_worker):
    job = queue("held", csv_bytes(50))
    DatasetImport.objects.filter(pk=job.pk).update(status="running", worker="w1", attempts=1,
                                                   lease_expires_at=timezone.now() + dt.timedelta(minutes=1))
    assert dataset_import_run(job_id=job.pk, worker="w2") == "running"
    job.refresh_from_db()
    assert job.worker == "w1" and job.attempts == 1 and not Dataset.objects.exists()


@pytest.mark.postgres
def test_a_worker_that_lost_its_claim_mid_import_rolls_back_everything_it_wrote(via_worker, monkeypatch):
    job = queue("taken over", zip_bytes(40), kind="images", filename="images.zip")
    report = dataset_imports._Reporter.__call__

    def taken_over_while_writing(self, phase, done, total):
        # Its lease ran out while it was stalled, and another worker claimed the job.
        if phase == "writing items" and done == 20:
            DatasetImport.objects.filter(pk=job.pk).update(worker="w2")
        report(self, phase, done, total)

    monkeypatch.setattr(dataset_imports._Reporter, "__call__", taken_over_while_writing)
    assert dataset_import_run(job_id=job.pk, worker="w1") == "running"
    assert not Dataset.objects.exists() and not Stimulus.objects.exists()
    assert stored("stimuli") == set(), "the images it had written are removed with its rows"
    monkeypatch.setattr(dataset_imports._Reporter, "__call__", report)
    DatasetImport.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert dataset_import_run(job_id=job.pk, worker="w3") == "succeeded"
    assert Dataset.objects.count() == 1 and Stimulus.objects.count() == 40 and len(stored("stimuli")) == 40


def test_a_job_whose_worker_stopped_runs_again_and_fails_after_the_last_attempt_saying_why(via_worker, committed):
    job = queue("stopped", csv_bytes(50))
    past = timezone.now() - dt.timedelta(seconds=1)
    DatasetImport.objects.filter(pk=job.pk).update(status="running", worker="host:12", attempts=1,
                                                   lease_expires_at=past)
    assert expired_imports_release() == 1
    job.refresh_from_db()
    assert job.status == "queued" and job.messages == [
        "The worker host:12 stopped while importing this file; the import runs again."]
    DatasetImport.objects.filter(pk=job.pk).update(status="running", worker="host:13", attempts=3,
                                                   lease_expires_at=past)
    assert committed(expired_imports_release) == 1
    job.refresh_from_db()
    assert job.status == "failed" and "stopped without finishing it 3 times" in job.messages[0]
    assert "perhaps for running out of memory" in job.messages[0]
    assert job.upload.name == "" and stored("imports") == set()


def test_an_unexpected_error_queues_the_job_again_until_its_last_attempt(via_worker, monkeypatch, committed):
    def broken(**kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(dataset_imports, "dataset_import_tabular", broken)
    monkeypatch.setattr(dataset_imports, "in_process", lambda: False)  # a worker, with a dispatcher behind it
    job = queue("unlucky", csv_bytes(50))
    for attempt in (1, 2):
        assert dataset_import_run(job_id=job.pk) == "queued"
        job.refresh_from_db()
        assert job.attempts == attempt and "RuntimeError: disk on fire" in job.messages[0]
        assert stored("imports"), "kept for the next attempt"
    assert committed(dataset_import_run, job_id=job.pk) == "failed"
    job.refresh_from_db()
    assert job.messages[0].endswith("It was tried 3 times.") and stored("imports") == set()


def test_in_the_embedded_mode_an_unexpected_error_fails_the_job_at_once(
        via_worker, monkeypatch, django_capture_on_commit_callbacks):
    monkeypatch.setattr(dataset_imports, "dataset_import_tabular", lambda **kwargs: 1 / 0)
    with django_capture_on_commit_callbacks(execute=True):
        job = dataset_import_start(name="embedded", kind="tabular", data_file=named(csv_bytes(50), "e.csv"))
    job.refresh_from_db()
    assert job.status == "failed" and "ZeroDivisionError" in job.messages[0]


def test_the_dispatcher_sends_a_queued_import_whose_message_never_left(via_worker):
    from worker.tasks import dispatch

    job = queue("lost message", csv_bytes(50))  # its on-commit send never ran: no enqueued_at
    assert job.enqueued_at is None
    result = dispatch()  # the beat task: preparation units, analysis jobs and imports
    assert result["imports_sent"] == 1 and result["imports_released"] == 0
    job.refresh_from_db()
    assert job.status == "succeeded"  # embedded mode: sending runs it
    assert dataset_imports_dispatch() == {"imports_released": 0, "imports_sent": 0}


# --------------------------------------------------------------------------- the admin

def admin_upload(client: Client, name: str, data: bytes, filename: str = "data.csv", kind: str = "tabular"):
    return client.post(reverse("admin:studyapp_dataset_add"),
                       {"name": name, "kind": kind, "label_column": "label", "data_file": named(data, filename)})


def test_the_admin_imports_a_large_file_on_the_embedded_default_and_its_progress_page_links_the_dataset(
        admin_client, via_worker, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_upload(admin_client, "from the admin", csv_bytes(200))
    job = DatasetImport.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("admin:studyapp_datasetimport_change",
                                                                           args=[job.pk])
    page = admin_client.get(response["Location"]).content.decode()
    dataset = Dataset.objects.get(name="from the admin")
    assert "Imported." in page and f'href="{reverse("admin:studyapp_dataset_change", args=[dataset.pk])}"' in page
    assert "has 200 items" in page and 'data-active="1"' not in page  # nothing left to refresh
    status = admin_client.get(reverse("admin:studyapp_datasetimport_status", args=[job.pk])).json()
    assert status["status"] == "succeeded" and status["done"] == status["total"] == 200
    assert status["dataset_url"] == reverse("admin:studyapp_dataset_change", args=[dataset.pk])
    assert job.started_by.username == "admin"


def test_the_progress_page_of_a_failed_import_says_why_in_words_and_offers_a_new_upload(
        admin_client, via_worker, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_upload(admin_client, "broken", csv_bytes(200, bad_row=7))
    page = admin_client.get(response["Location"]).content.decode()
    assert "The file could not be imported" in page and "row 9: &#x27;twelve&#x27;" in page
    assert f'href="{reverse("admin:studyapp_dataset_add")}"' in page and not Dataset.objects.exists()


def test_the_admin_form_shows_what_the_cheap_checks_find_without_queueing_anything(admin_client, via_worker):
    page = admin_upload(admin_client, "no label", csv_bytes(200).replace(b",label\n", b",klass\n", 1)).content.decode()
    assert "data.csv has no label column" in page and not DatasetImport.objects.exists()


def test_a_running_import_shows_its_phase_and_counts_and_keeps_refreshing(admin_client, via_worker):
    job = queue("running", csv_bytes(50))
    DatasetImport.objects.filter(pk=job.pk).update(status="running", worker="w", lease_expires_at=timezone.now(),
                                                   phase="writing items", progress_done=500, progress_total=2000)
    page = admin_client.get(reverse("admin:studyapp_datasetimport_change", args=[job.pk])).content.decode()
    assert "writing items, 500 of 2,000" in page and 'value="25"' in page and 'data-active="1"' in page
    assert "staff/preparation.js" in page  # swaps in the fragment below every 3 seconds
    fragment = admin_client.get(reverse("admin:studyapp_datasetimport_status", args=[job.pk]) + "?format=html")
    assert fragment.content.decode().startswith('<div id="preparation-progress"')
    assert admin_client.get(reverse("admin:studyapp_datasetimport_changelist")).status_code == 200


def test_the_progress_page_is_for_those_who_may_add_datasets_and_for_whoever_started_the_import(
        django_user_model, via_worker):
    def staff(username: str, *codenames: str):
        user = django_user_model.objects.create_user(username=username, password="pw-123456789", is_staff=True)
        user.user_permissions.add(*Permission.objects.filter(content_type__app_label="studyapp",
                                                             codename__in=codenames))
        return user

    starter = staff("starter")  # who may no longer add datasets, but started this import
    job = queue("whose", csv_bytes(50), started_by=starter)
    urls = [reverse("admin:studyapp_datasetimport_change", args=[job.pk]),
            reverse("admin:studyapp_datasetimport_status", args=[job.pk])]
    for user, allowed in ((staff("adder", "add_dataset"), True), (starter, True),
                          (staff("viewer", "view_dataset", "view_datasetimport"), False)):
        client = Client()
        client.force_login(user)
        for url in urls:
            assert (client.get(url).status_code == 200) == allowed, (user.username, url)


# --------------------------------------------------------------------------- real worker processes

FAST = {"PREPARATION_LEASE_SECONDS": "2", "PREPARATION_DISPATCH_SECONDS": "1", "PREPARATION_RESEND_SECONDS": "3"}


@pytest.fixture
def processes(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    procs = Processes(tmp_path, server.url, **FAST)
    try:
        with use_broker(server.url):
            yield procs
            procs.stop_all()
    finally:
        server.stop()


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_large_csv_is_imported_by_a_real_worker_with_progress_and_makes_exactly_one_dataset(
        processes, django_user_model):
    processes.worker("importer")
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("researcher", password="pw-123456789"))
    data = csv_bytes(20_000, 20)
    assert len(data) > dataset_imports.INLINE_MAX_BYTES  # large by the real rule, nothing patched
    response = admin_upload(client, "big table", data, filename="big.csv")
    assert response.status_code == 302, response.content.decode()[-2000:]
    job = DatasetImport.objects.get()
    status_url = reverse("admin:studyapp_datasetimport_status", args=[job.pk])
    seen = []

    def finished():
        status = client.get(status_url).json()
        seen.append((status["status"], status["phase"], status["done"], status["total"]))
        return not status["active"] and status

    final = _wait(finished, timeout=240, what="the import to finish", procs=processes, poll=0.05)
    assert final["status"] == "succeeded", (final, processes.logs())
    # The page saw it work, part way through (the worker reports about once a second).
    assert any(s == "running" and 0 < done < total for s, _, done, total in seen), seen
    assert Dataset.objects.count() == 1 and Stimulus.objects.count() == 20_000
    assert "worker.tasks.import_dataset" in processes.logs()  # it ran there, not in this process
    assert stored("imports") == set()


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_import_leaves_no_dataset_and_the_import_runs_again_to_exactly_one(processes):
    processes.beat()  # the dispatcher: worker.tasks.dispatch every second
    first = processes.worker("first")
    job = dataset_import_start(name="killed", kind="tabular", data_file=named(csv_bytes(40_000, 20), "big.csv"))
    writing = _wait(lambda: DatasetImport.objects.filter(pk=job.pk, phase="writing items", progress_done__gt=0).first(),
                    timeout=240, what="the worker to write items", procs=processes, poll=0.02)
    # Kill the whole worker (solo pool: it is the one importing) inside the transaction that writes.
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    assert writing.status == "running" and writing.progress_done < writing.progress_total
    assert not Dataset.objects.exists() and not Stimulus.objects.exists(), "nothing of it was committed"
    processes.worker("second")
    _wait(lambda: DatasetImport.objects.filter(pk=job.pk).exclude(status__in=["queued", "running"]).exists(),
          timeout=240, what="the import to run again and finish", procs=processes, poll=0.2)
    job.refresh_from_db()
    assert job.status == "succeeded" and job.attempts == 2, (job.status, job.messages)
    assert Dataset.objects.count() == 1 and Stimulus.objects.count() == 40_000
    assert stored("imports") == set()
