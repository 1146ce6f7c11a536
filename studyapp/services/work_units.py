"""Claiming, leasing, completing and re-sending preparation units.

Contract (the database is the source of truth; a broker message only says "look at unit N"):

* **Claim** (``unit_claim``) is one conditional UPDATE: a pending unit whose dependencies are done
  and whose backoff has passed, or a running unit whose lease expired, becomes running for this
  worker with a fresh lease and one more attempt. Two workers claiming the same unit: exactly one
  UPDATE matches. A duplicate or stale message finds nothing to claim and does nothing.
* **Lease**: while a unit runs, ``Heartbeat`` renews its lease every third of
  ``PREPARATION_LEASE_SECONDS``. A worker killed with SIGKILL stops renewing, and the dispatcher
  hands its unit to another worker about one lease later (not after the broker's visibility
  timeout of hours).
* **Completion** (``unit_complete``) locks the study row, then the unit row, checks that the unit
  is still this worker's, and in the same transaction writes the unit's results, marks it done,
  adds the units it makes possible and, when it was the study's last unit, marks the study ready.
  Locking the study first serializes completions of one study, so the last one always sees every
  other unit done; results are written with unique keys, so a unit run twice (a lease that
  expired under a live but stalled worker) still stores each result once.
* **Failure** (``unit_fail``): the attempt's error is kept; the unit goes back to pending after a
  backoff, or is failed with the error in words after ``max_attempts``. A unit whose worker keeps
  dying (out of memory, say) is failed by the dispatcher after the same number of attempts. Other
  units go on; a failed unit's dependents wait for "Retry failed units".
* **Sending** happens after commit and never raises: with the broker down the unit keeps no
  ``enqueued_at`` and ``dispatch`` (Celery beat, and every worker after each unit) sends it later.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from studyapp.models import AnalysisJob, PreparationUnit, Study

logger = logging.getLogger(__name__)
Unit = PreparationUnit
Status = PreparationUnit.Status


def in_process() -> bool:
    """The embedded mode (no broker): queued work runs in this process, not through messages."""
    from worker import app

    return bool(app.conf.task_always_eager)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def lease() -> dt.timedelta:
    return dt.timedelta(seconds=settings.PREPARATION_LEASE_SECONDS)


def backoff(attempts: int) -> dt.timedelta:
    """2, 4, 8 ... seconds, at most five minutes."""
    return dt.timedelta(seconds=min(300, 2 ** max(1, attempts)))


def ready_unit_ids(*, study_id: int, now: dt.datetime | None = None) -> list[int]:
    """Pending units of the study whose dependencies are done and whose backoff has passed."""
    now = now or timezone.now()
    units = list(Unit.objects.filter(study_id=study_id).values("pk", "key", "status", "depends_on", "not_before"))
    done = {u["key"] for u in units if u["status"] == Status.DONE}
    return [u["pk"] for u in units if u["status"] == Status.PENDING and set(u["depends_on"]) <= done
            and (u["not_before"] is None or u["not_before"] <= now)]


def unit_claim(*, unit_id: int, worker: str) -> PreparationUnit | None:
    """The unit, now running for ``worker``; None when it is not claimable (see the contract)."""
    unit = Unit.objects.filter(pk=unit_id).values("study_id", "depends_on", "status").first()
    if unit is None or unit["status"] in (Status.DONE, Status.FAILED):
        return None
    done = set(Unit.objects.filter(study_id=unit["study_id"], key__in=unit["depends_on"], status=Status.DONE)
               .values_list("key", flat=True))
    if done != set(unit["depends_on"]):
        return None
    now = timezone.now()
    claimable = (Q(status=Status.PENDING) & (Q(not_before__isnull=True) | Q(not_before__lte=now))
                 | Q(status=Status.RUNNING, lease_expires_at__lt=now))
    claimed = (Unit.objects.filter(claimable, pk=unit_id, attempts__lt=F("max_attempts"),
                                   study__state=Study.State.PREPARING)
               .update(status=Status.RUNNING, worker=worker, lease_expires_at=now + lease(), started_at=now,
                       attempts=F("attempts") + 1))
    if not claimed:
        return None
    return Unit.objects.select_related("study__model", "study__dataset", "arm").get(pk=unit_id)


class Beat:
    """Calls ``beat()`` every ``period`` seconds from a thread with its own database connection while
    a piece of work runs (a context manager): renewing a lease, reporting progress. A failed beat
    (a database blip) is logged and the next one tries again; the lease has slack for it. SQLite
    (embedded, one process) starts no thread: no other worker can take the work over."""

    def __init__(self, beat: Callable[[], None], *, period: float, name: str) -> None:
        self.beat, self.period, self.name = beat, period, name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.period):
                try:
                    self.beat()
                except Exception:
                    logger.warning("%s: could not write to the database", self.name, exc_info=True)
                    close_old_connections()
        finally:
            connection.close()

    def __enter__(self):
        if connection.vendor != "sqlite":
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


class Heartbeat(Beat):
    """Renews a running unit's lease every third of the lease while the unit's work runs."""

    def __init__(self, unit: PreparationUnit, worker: str) -> None:
        self.unit_id, self.worker = unit.pk, worker
        super().__init__(self._renew, period=settings.PREPARATION_LEASE_SECONDS / 3, name=f"lease-{unit.pk}")

    def _renew(self) -> None:
        Unit.objects.filter(pk=self.unit_id, status=Status.RUNNING, worker=self.worker).update(
            lease_expires_at=timezone.now() + lease())


def unit_complete(*, unit: PreparationUnit, worker: str, seconds: float,
                  write: Callable[[], dict | None], expand: Callable[[], Iterable[PreparationUnit]] | None = None,
                  finish: Callable[[Study], None] | None = None) -> bool:
    """Write the unit's results (``write``, returning its JSON result; the time it took is added as
    ``write_seconds``; ``seconds`` is the work before it), mark it done, add the units
    that ``expand`` returns, and when nothing is left, call ``finish(study)`` (all in one
    transaction). False, writing nothing, when the unit is no longer this worker's."""
    with transaction.atomic():
        study = Study.objects.select_for_update().filter(pk=unit.study_id, state=Study.State.PREPARING).first()
        locked = Unit.objects.select_for_update().filter(pk=unit.pk, status=Status.RUNNING, worker=worker).first()
        if study is None or locked is None:
            return False
        writing = time.perf_counter()
        result = {**(write() or {}), "write_seconds": round(time.perf_counter() - writing, 4)}
        Unit.objects.filter(pk=unit.pk).update(
            status=Status.DONE, finished_at=timezone.now(), seconds=round(seconds, 4), result=result,
            lease_expires_at=None, files_pending=[], error="")
        if expand is not None:
            Unit.objects.bulk_create(list(expand()), ignore_conflicts=True)
        if finish is not None and not Unit.objects.filter(study=study).exclude(status=Status.DONE).exists():
            finish(study)
    return True


def unit_fail(*, unit: PreparationUnit, worker: str, error: str) -> dt.timedelta | None:
    """Record a failed attempt: back to pending after a backoff (returned), or failed for good."""
    with transaction.atomic():
        Study.objects.select_for_update().filter(pk=unit.study_id).first()
        locked = Unit.objects.select_for_update().filter(pk=unit.pk, status=Status.RUNNING, worker=worker).first()
        if locked is None:
            return None
        if locked.attempts >= locked.max_attempts:
            Unit.objects.filter(pk=unit.pk).update(status=Status.FAILED, error=error, lease_expires_at=None,
                                                   finished_at=timezone.now())
            return None
        wait = backoff(locked.attempts)
        Unit.objects.filter(pk=unit.pk).update(status=Status.PENDING, error=error, lease_expires_at=None, worker="",
                                               not_before=timezone.now() + wait, enqueued_at=None)
        return wait


def units_send(unit_ids: Iterable[int], *, countdown: float | None = None) -> int:
    """Send one message per unit (the ``gpu`` queue); never raises. Returns how many were sent.
    In the embedded mode nothing is sent: ``preparation_run_here`` runs the units."""
    from worker.tasks import run_preparation_unit  # the worker package imports services, not the reverse

    if in_process():
        return 0
    sent = []
    for unit_id in unit_ids:
        try:
            run_preparation_unit.apply_async((unit_id,), countdown=countdown, retry=False)
        except Exception as exc:  # broker down: the dispatcher sends it once the broker is back
            logger.warning("Could not send preparation unit %s (%s); the dispatcher will send it later", unit_id, exc)
            break
        sent.append(unit_id)
    if sent:
        Unit.objects.filter(pk__in=sent).update(enqueued_at=timezone.now())
    return len(sent)


def job_send(model, job_id: int, task, *, what: str,
             on_error_in_process: Callable[[BaseException], None] | None = None) -> bool:
    """Send one queued job's message (``task.apply_async((job_id,))``) and record ``enqueued_at``;
    never raises. With the broker down the job keeps no ``enqueued_at`` and its dispatcher sends it
    later (returns False). In the embedded mode the task runs here and now; an unexpected error is
    handed to ``on_error_in_process`` (no dispatcher would ever run the job again), or raised when
    there is none. ``what`` names the job in the log ("analysis job", "dataset import")."""
    if in_process():
        model.objects.filter(pk=job_id).update(enqueued_at=timezone.now())
        if on_error_in_process is None:
            task.delay(job_id)
            return True
        try:
            task.delay(job_id)
        except Exception as exc:
            logger.exception("%s %s failed in-process", what.capitalize(), job_id)
            on_error_in_process(exc)
        return True
    try:
        task.apply_async((job_id,), retry=False)
    except Exception as exc:
        logger.warning("Could not send %s %s (%s); the dispatcher will send it later", what, job_id, exc)
        return False
    model.objects.filter(pk=job_id).update(enqueued_at=timezone.now())
    return True


def study_units_send(*, study_id: int) -> int:
    """Send the study's units that can run now and have no recent message."""
    recent = timezone.now() - dt.timedelta(seconds=settings.PREPARATION_RESEND_SECONDS)
    ids = ready_unit_ids(study_id=study_id)
    unsent = Unit.objects.filter(pk__in=ids).filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=recent))
    return units_send(unsent.values_list("pk", flat=True))


def expired_units_release(*, now: dt.datetime | None = None) -> int:
    """Running units whose worker stopped renewing the lease: pending again, or failed after the
    last attempt with the reason in words."""
    now = now or timezone.now()
    released = 0
    for unit in Unit.objects.filter(status=Status.RUNNING, lease_expires_at__lt=now).only("pk", "attempts",
                                                                                        "max_attempts", "worker"):
        if unit.attempts >= unit.max_attempts:
            changed = Unit.objects.filter(pk=unit.pk, status=Status.RUNNING, lease_expires_at__lt=now).update(
                status=Status.FAILED, lease_expires_at=None, finished_at=now,
                error=f"The worker running this unit stopped without finishing it {unit.attempts} times (it was "
                      "killed, perhaps for running out of memory, or its machine went away). Give the workers more "
                      "memory or lower PREPARATION_CHUNK, then retry the failed units.")
        else:
            changed = Unit.objects.filter(pk=unit.pk, status=Status.RUNNING, lease_expires_at__lt=now).update(
                status=Status.PENDING, lease_expires_at=None, worker="", enqueued_at=None,
                error=f"The worker {unit.worker} stopped while running this unit; it runs again.")
        released += changed
    return released


def analysis_jobs_send() -> int:
    """Queued analysis jobs whose message never reached the broker (or was lost with it)."""
    from studyapp.services.analysis_jobs import analysis_job_send

    recent = timezone.now() - dt.timedelta(seconds=settings.PREPARATION_RESEND_SECONDS)
    jobs = AnalysisJob.objects.filter(status=AnalysisJob.Status.QUEUED).filter(
        Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=recent)).values_list("pk", flat=True)
    return sum(analysis_job_send(job_id) for job_id in jobs)


def dispatch() -> dict:
    """The dispatcher's tick: release expired leases, send what can run and has no message."""
    released = expired_units_release()
    sent = sum(study_units_send(study_id=pk)
               for pk in Study.objects.filter(state=Study.State.PREPARING).values_list("pk", flat=True))
    return {"released": released, "sent": sent, "analysis_jobs_sent": analysis_jobs_send()}
