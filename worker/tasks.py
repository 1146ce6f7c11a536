"""Thin tasks: parse arguments, call one service. Every task is idempotent (late ack).

The database is the source of truth for every kind of queued work: a preparation unit, an
analysis job or a dataset import whose message is lost (broker restart, a failed send) is sent
again by ``dispatch``.
"""
from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError
from kombu.exceptions import OperationalError as BrokerError

# A database or broker connection that drops is retried with backoff; other errors are recorded
# on the unit by the service (which decides between another attempt and failing it).
TRANSIENT = (OperationalError, InterfaceError, BrokerError, ConnectionError)


@shared_task(name="worker.tasks.run_preparation_unit", autoretry_for=TRANSIENT, retry_backoff=True,
             retry_backoff_max=60, max_retries=8)
def run_preparation_unit(unit_id: int) -> str:
    from studyapp.services.preparation import preparation_unit_run

    return preparation_unit_run(unit_id=unit_id)


@shared_task(name="worker.tasks.dispatch", autoretry_for=TRANSIENT, retry_backoff=True, max_retries=3)
def dispatch() -> dict:
    from studyapp.services.dataset_imports import dataset_imports_dispatch
    from studyapp.services.work_units import dispatch as dispatch_units

    return {**dispatch_units(), **dataset_imports_dispatch()}


@shared_task(name="worker.tasks.prepare_study", autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def prepare_study(study_id: int) -> dict:
    """A message from before preparation was split into units: run the study's units here."""
    from studyapp.services.preparation import study_run_preparation

    return study_run_preparation(study_id=study_id)


# No autoretry: analysis_job_run records every failure on the job, and a failed job is never
# claimed again, so a retry could only ever find it finished.
@shared_task(name="worker.tasks.analyze_study")
def analyze_study(job_id: int) -> str:
    from studyapp.services.analysis_jobs import analysis_job_run

    return analysis_job_run(job_id=job_id)


# The default (cpu) queue. A database error is retried with backoff (dataset_import_run has put the
# job back in the queue first); every other outcome is recorded on the job, which a retry or a
# duplicate message finds claimed or finished and leaves alone.
@shared_task(name="worker.tasks.import_dataset", autoretry_for=TRANSIENT, retry_backoff=True, retry_backoff_max=60,
             max_retries=5)
def import_dataset(job_id: int) -> str:
    from studyapp.services.dataset_imports import dataset_import_run

    return dataset_import_run(job_id=job_id)
