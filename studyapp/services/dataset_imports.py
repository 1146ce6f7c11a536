"""Importing an uploaded dataset: small uploads in the request, large ones in a worker, with progress.

A 13.9 MB CSV once held a request for 438 s, long past gunicorn's timeout. Now:

* **Request** (``dataset_import_start``): the checks that cost little whatever the file's size run at
  once (name, size, encoding, the CSV header and feature count, the zip's entry count from its end
  record, labels.csv and classes.txt), so the usual mistakes are reported on the form. An upload of at
  most ``INLINE_MAX_BYTES`` and ``INLINE_MAX_ROWS`` rows or ``INLINE_MAX_IMAGES`` images is then imported
  right there (about a second): the researcher lands on the dataset, or reads the problems on the form
  they just filled in, without a trip through a queue that may be busy with analyses. A larger one is
  saved under an opaque name with a queued :class:`DatasetImport`, sent to the worker after commit, and
  the researcher follows its progress page. In the embedded mode (no broker) the job runs in-process
  before that page opens.
* **Worker** (``dataset_import_run``), idempotent under redelivery. Contract:

  - *Claim* is one conditional UPDATE: a queued job, or a running one whose lease expired, becomes
    running for this worker with a fresh lease and one more attempt (never past ``max_attempts``).
    Two deliveries of one job: exactly one UPDATE matches; a duplicate or stale message does nothing.
  - *Lease and progress*: while it imports, a thread with its own connection writes the latest
    progress (phase, done, total) and renews the lease about every ``PROGRESS_SECONDS``. Its writes
    commit on their own, so the progress page sees them while the import's transaction is open.
  - *Success* is written in the transaction that writes the Dataset and its Stimulus rows: at its end
    the job row is locked (``select_for_update``) and, only if it is still running for this worker,
    marked succeeded with its dataset. A worker that lost its claim (its lease expired while it was
    stalled, and another worker took the job) raises there, and everything it wrote is rolled back.
    ``DatasetImport.dataset`` is one-to-one and dataset names are unique, so even then a job cannot
    produce two datasets. A worker killed mid-import commits nothing: no half dataset exists, and its
    image files, written before their rows, are left to ``cleanup_media`` (they belong to no row).
  - *Failure*: an upload the import refuses fails the job with the messages in words (final: the same
    file would be refused again). An unexpected error, or a worker that stops renewing its lease (the
    dispatcher notices), puts the job back in the queue until ``max_attempts``, then fails it saying why.
  - The uploaded files are deleted when the job succeeds or fails (they are cleared from the row in
    the transaction that finishes it, so a file whose deletion is interrupted belongs to no row and
    ``cleanup_media`` removes it); ``Dataset.content_sha256`` keeps the upload's fingerprint.
* **Dispatcher** (``dataset_imports_dispatch``, from ``worker.tasks.dispatch`` on Celery beat): releases
  jobs whose lease expired and sends queued jobs that have no recent message (a broker that was down,
  a message lost with it).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
from typing import IO

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError, InterfaceError, OperationalError, close_old_connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from studyapp.models import Dataset, DatasetImport
from studyapp.models.imports import ACTIVE_STATUSES
from studyapp.services.datasets import (DatasetValidationError, dataset_import_images, dataset_import_tabular,
                                        images_upload_check, tabular_upload_check)
from studyapp.services.datasets.common import MAX_MESSAGE_CHARS, display_name, read_upload
from studyapp.services.datasets.store import check_name
from studyapp.services.work_units import Beat, in_process, job_send, lease, worker_name

logger = logging.getLogger(__name__)
Status = DatasetImport.Status

# Imported in the request below these. Measured in-process on a busy 2-core machine with PostgreSQL: a CSV of
# 2,000 rows x 60 features (0.85 MB) 0.9 s; 500 8x8 PNG images 1.4 s, 2,000 of them 6.8 s (each image is
# decoded and written back as a PNG file); 100,000 rows x 20 features (14 MB) 28 s.
INLINE_MAX_BYTES = 1024 * 1024
INLINE_MAX_ROWS = 2_000
INLINE_MAX_IMAGES = 250
PROGRESS_SECONDS = 1.0
# A database that drops its connection: the job goes back to the queue and Celery retries the task.
_TRANSIENT = (OperationalError, InterfaceError)


class _LostClaim(Exception):
    """The job is no longer running for this worker: what it wrote must be rolled back."""


def _named(data: bytes, name: str) -> io.BytesIO:
    buffer = io.BytesIO(data)
    buffer.name = name
    return buffer


def _capped(messages: list[str]) -> list[str]:
    return [m if len(m) <= MAX_MESSAGE_CHARS else m[:MAX_MESSAGE_CHARS - 1] + "…" for m in messages] or [
        "The import failed without a message."]


# --------------------------------------------------------------------------- the request

def _check_name_free(name: str) -> str:
    name = check_name(name)
    running = DatasetImport.objects.filter(name=name, status__in=ACTIVE_STATUSES).first()
    if running is not None:
        raise DatasetValidationError(_name_importing(running))
    return name


def _name_importing(job: DatasetImport) -> str:
    when = timezone.localtime(job.created_at).strftime("%Y-%m-%d %H:%M") if job.created_at else "just now"
    return (f"A dataset named '{job.name}' is already being imported (upload of {when}, "
            f"{job.get_status_display().lower()}). Wait for that import to finish (Dataset imports shows it), "
            f"or choose another name.")


def dataset_import_start(*, name: str, kind: str, data_file: bytes | IO[bytes],
                         descriptions: bytes | IO[bytes] | None = None, label_column: str = "label",
                         class_names: list[str] | None = None, description: str = "",
                         started_by=None) -> Dataset | DatasetImport:
    """Check the upload and import it now (a small one: the Dataset is returned) or queue it for a worker
    (a large one: the queued DatasetImport is returned, and sent after commit). Raises
    DatasetValidationError with every problem the cheap checks find."""
    if kind not in DatasetImport.Kind.values:
        raise DatasetValidationError(f"Choose the kind of data: {', '.join(DatasetImport.Kind.values)}.")
    name = _check_name_free(name)
    filename = display_name(data_file, default="CSV file" if kind == DatasetImport.Kind.TABULAR else "archive")
    data = read_upload(data_file, what="data file")
    descriptions_name = display_name(descriptions, default="descriptions file")
    descriptions_data = None if descriptions is None else read_upload(descriptions, what=descriptions_name)
    label_column = (label_column or "label").strip()

    def upload() -> io.BytesIO:
        return _named(data, filename)

    def descriptions_upload() -> io.BytesIO | None:
        return None if descriptions_data is None else _named(descriptions_data, descriptions_name)

    if kind == DatasetImport.Kind.IMAGES:
        check = images_upload_check(archive=upload())
    else:
        check = tabular_upload_check(csv_file=upload(), label_column=label_column, descriptions=descriptions_upload(),
                                     class_names=class_names)
    max_items = INLINE_MAX_IMAGES if kind == DatasetImport.Kind.IMAGES else INLINE_MAX_ROWS
    if check.n_bytes <= INLINE_MAX_BYTES and check.n_items <= max_items:
        if kind == DatasetImport.Kind.IMAGES:
            return dataset_import_images(name=name, archive=upload(), description=description)
        return dataset_import_tabular(name=name, csv_file=upload(), label_column=label_column,
                                      descriptions=descriptions_upload(), class_names=class_names,
                                      description=description)
    job = DatasetImport(name=name, kind=kind, description=description, upload_name=filename[:255],
                        upload_bytes=len(data), content_sha256=hashlib.sha256(data).hexdigest(),
                        options={"label_column": label_column, "class_names": class_names,
                                 "descriptions_name": descriptions_name if descriptions_data is not None else ""},
                        started_by=started_by if getattr(started_by, "pk", None) else None)
    # The files are saved before their row exists: a refused row deletes them again.
    job.upload.save(filename, ContentFile(data), save=False)
    if descriptions_data is not None:
        job.descriptions_upload.save(descriptions_name, ContentFile(descriptions_data), save=False)
    try:
        with transaction.atomic():
            job.save()
            transaction.on_commit(lambda: dataset_import_send(job.pk))
    except BaseException as exc:
        _delete_files([job.upload.name, job.descriptions_upload.name])
        running = DatasetImport.objects.filter(name=name, status__in=ACTIVE_STATUSES).first()
        if isinstance(exc, IntegrityError) and running is not None:  # a second upload of the name, at once
            raise DatasetValidationError(_name_importing(running)) from None
        raise
    job.refresh_from_db()  # the embedded mode has already run it
    return job


def dataset_import_send(job_id: int) -> bool:
    """Send the job's message (see ``work_units.job_send``); never raises. In the embedded mode it runs
    here and now, and an unexpected error fails it (no dispatcher would ever run it again)."""
    from worker.tasks import import_dataset  # the worker package imports services, not the reverse

    return job_send(DatasetImport, job_id, import_dataset, what="dataset import",
                    on_error_in_process=lambda exc: _fail(job_id, None, [_unexpected(exc)]))


# --------------------------------------------------------------------------- the worker

class _Reporter(Beat):
    """The import's ``progress`` callback; its beat writes the latest report and renews the lease every
    PROGRESS_SECONDS (or a third of the lease). Reporting is an assignment, cheap enough per item."""

    def __init__(self, job_id: int, worker: str) -> None:
        self.job_id, self.worker = job_id, worker
        self.latest = ("starting", 0, 0)
        super().__init__(self._write, period=min(PROGRESS_SECONDS, settings.PREPARATION_LEASE_SECONDS / 3),
                         name=f"dataset-import-{job_id}")

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.latest = (phase, min(done, total), total)

    def _write(self) -> None:
        phase, done, total = self.latest
        now = timezone.now()
        DatasetImport.objects.filter(pk=self.job_id, status=Status.RUNNING, worker=self.worker).update(
            phase=phase[:40], progress_done=done, progress_total=total, progress_at=now,
            lease_expires_at=now + lease())


def _claim(job_id: int, worker: str) -> DatasetImport | None:
    now = timezone.now()
    claimable = Q(status=Status.QUEUED) | Q(status=Status.RUNNING, lease_expires_at__lt=now)
    claimed = DatasetImport.objects.filter(claimable, pk=job_id, attempts__lt=F("max_attempts")).update(
        status=Status.RUNNING, worker=worker, lease_expires_at=now + lease(), started_at=now, progress_at=now,
        attempts=F("attempts") + 1, phase="starting", progress_done=0, progress_total=0)
    return DatasetImport.objects.get(pk=job_id) if claimed else None


def _status(job_id: int) -> str:
    return DatasetImport.objects.filter(pk=job_id).values_list("status", flat=True).first() or "missing"


def _delete_files(names: list[str]) -> None:
    from django.core.files.storage import default_storage

    for name in filter(None, names):
        try:
            default_storage.delete(name)
        except Exception:  # it belongs to no row now: cleanup_media removes it later
            logger.warning("Could not delete the uploaded file %s", name, exc_info=True)


def _finished(job_id: int, worker: str | None, *, expired_before: dt.datetime | None = None, **fields) -> bool:
    """Finish the job (still running for ``worker``, with a lease that expired before ``expired_before`` when
    given; any active job when ``worker`` is None) with ``fields``; clear and then delete its uploaded
    files. False when it was no longer this worker's."""
    with transaction.atomic():
        jobs = DatasetImport.objects.select_for_update().filter(pk=job_id, status__in=ACTIVE_STATUSES)
        if worker is not None:
            jobs = jobs.filter(status=Status.RUNNING, worker=worker)
        if expired_before is not None:
            jobs = jobs.filter(lease_expires_at__lt=expired_before)
        locked = jobs.first()
        if locked is None:
            return False
        names = [locked.upload.name, locked.descriptions_upload.name]
        DatasetImport.objects.filter(pk=job_id).update(
            finished_at=timezone.now(), lease_expires_at=None, upload="", descriptions_upload="", **fields)
        transaction.on_commit(lambda: _delete_files(names))
    return True


def _fail(job_id: int, worker: str | None, messages: list[str], *, expired_before: dt.datetime | None = None) -> bool:
    return _finished(job_id, worker, expired_before=expired_before, status=Status.FAILED, messages=_capped(messages),
                     phase="failed")


def _unexpected(exc: BaseException) -> str:
    return (f"The import failed unexpectedly ({exc.__class__.__name__}: {exc}). The worker's log has the details; "
            f"tell the administrator.")


def _read_upload(job: DatasetImport) -> tuple[bytes, bytes | None]:
    try:
        with job.upload.open("rb") as handle:
            data = handle.read()
        descriptions = None
        if job.descriptions_upload:
            with job.descriptions_upload.open("rb") as handle:
                descriptions = handle.read()
    except (FileNotFoundError, ValueError):
        raise DatasetValidationError(
            "The uploaded file is no longer in storage: it was deleted, or this worker does not see the web "
            "server's files (give both the same DATA_DIR volume, or MEDIA_S3_BUCKET). Upload it again.") from None
    if hashlib.sha256(data).hexdigest() != job.content_sha256:
        raise DatasetValidationError("The uploaded file changed in storage after it was uploaded (its SHA-256 no "
                                     "longer matches). Upload it again.")
    return data, descriptions


def _import(job: DatasetImport, worker: str, reporter: _Reporter) -> Dataset:
    def finish(dataset: Dataset) -> None:
        # Inside the transaction that writes the dataset (see the contract): commit both or neither.
        locked = DatasetImport.objects.select_for_update().filter(pk=job.pk, status=Status.RUNNING,
                                                                  worker=worker).first()
        if locked is None:
            raise _LostClaim
        names = [locked.upload.name, locked.descriptions_upload.name]
        DatasetImport.objects.filter(pk=job.pk).update(
            status=Status.SUCCEEDED, dataset=dataset, finished_at=timezone.now(), lease_expires_at=None,
            phase="imported", progress_done=dataset.n_items, progress_total=dataset.n_items,
            progress_at=timezone.now(), messages=[], upload="", descriptions_upload="")
        transaction.on_commit(lambda: _delete_files(names))

    reporter("reading the upload", 0, 0)
    data, descriptions = _read_upload(job)
    upload = _named(data, job.upload_name or "upload")
    if job.kind == DatasetImport.Kind.IMAGES:
        return dataset_import_images(name=job.name, archive=upload, description=job.description, progress=reporter,
                                     finish=finish)
    return dataset_import_tabular(
        name=job.name, csv_file=upload, label_column=job.options.get("label_column") or "label",
        descriptions=None if descriptions is None else _named(
            descriptions, job.options.get("descriptions_name") or "descriptions file"),
        class_names=job.options.get("class_names"), description=job.description, progress=reporter, finish=finish)


def _again_or_fail(job_id: int, worker: str, error: str) -> str:
    """After an attempt that stopped unexpectedly: queued again for the dispatcher (or Celery's retry), or
    failed with the reason after the last attempt (or at once in the embedded mode, which has no dispatcher)."""
    job = DatasetImport.objects.filter(pk=job_id).values("attempts", "max_attempts").first()
    if job is None:
        return "missing"
    if job["attempts"] >= job["max_attempts"] or in_process():
        tries = f" It was tried {job['attempts']} times." if job["attempts"] > 1 else ""
        _fail(job_id, worker, [error + tries])
        return Status.FAILED
    DatasetImport.objects.filter(pk=job_id, status=Status.RUNNING, worker=worker).update(
        status=Status.QUEUED, worker="", lease_expires_at=None, enqueued_at=None, phase="waiting to run again",
        messages=[error])
    return Status.QUEUED


def dataset_import_run(*, job_id: int, worker: str | None = None) -> str:
    """Run a queued job (or one whose worker stopped); returns the job's status afterwards. See the
    module's contract: idempotent, all or nothing."""
    worker = worker or worker_name()
    job = _claim(job_id, worker)
    if job is None:  # finished, running elsewhere, out of attempts or deleted: nothing to do
        return _status(job_id)
    reporter = _Reporter(job_id, worker)
    try:
        with reporter:
            _import(job, worker, reporter)
    except DatasetValidationError as exc:  # the file itself: it would be refused again
        _fail(job_id, worker, list(exc.messages))
        return _status(job_id)
    except _LostClaim:
        logger.warning("Dataset import %s was taken over by another worker; %s wrote nothing", job_id, worker)
        return _status(job_id)
    except _TRANSIENT as exc:
        close_old_connections()
        try:
            _again_or_fail(job_id, worker, f"The database connection failed during the import ({exc}).")
        except _TRANSIENT:
            pass  # the lease runs out and the dispatcher queues it again
        raise  # Celery retries the task with backoff
    except Exception as exc:
        logger.exception("Dataset import %s failed", job_id)
        return _again_or_fail(job_id, worker, _unexpected(exc))
    return Status.SUCCEEDED


# --------------------------------------------------------------------------- the dispatcher

def expired_imports_release(*, now: dt.datetime | None = None) -> int:
    """Running jobs whose worker stopped renewing the lease: queued again, or failed after the last attempt
    with the reason in words."""
    now = now or timezone.now()
    released = 0
    for job in DatasetImport.objects.filter(status=Status.RUNNING, lease_expires_at__lt=now).only(
            "pk", "attempts", "max_attempts", "worker"):
        if job.attempts >= job.max_attempts:
            done = _fail(job.pk, job.worker, [
                f"The worker importing this file stopped without finishing it {job.attempts} times (it was killed, "
                f"perhaps for running out of memory, or its machine went away). Give the workers more memory, or "
                f"import a smaller file."], expired_before=now)
        else:
            done = DatasetImport.objects.filter(pk=job.pk, status=Status.RUNNING, lease_expires_at__lt=now).update(
                status=Status.QUEUED, lease_expires_at=None, worker="", enqueued_at=None,
                phase="waiting to run again",
                messages=[f"The worker {job.worker} stopped while importing this file; the import runs again."])
        released += bool(done)
    return released


def dataset_imports_dispatch() -> dict:
    """The dispatcher's tick for imports: release expired leases, send queued jobs that have no recent message."""
    released = expired_imports_release()
    recent = timezone.now() - dt.timedelta(seconds=settings.PREPARATION_RESEND_SECONDS)
    queued = DatasetImport.objects.filter(status=Status.QUEUED).filter(
        Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=recent)).values_list("pk", flat=True)
    return {"imports_released": released, "imports_sent": sum(dataset_import_send(pk) for pk in queued)}
