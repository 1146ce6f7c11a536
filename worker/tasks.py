"""Thin tasks: parse arguments, call one service. Every task is idempotent (late ack)."""
from __future__ import annotations

from celery import shared_task


@shared_task(name="worker.tasks.prepare_study", autoretry_for=(ConnectionError,), retry_backoff=True,
             max_retries=5)
def prepare_study(study_id: int) -> dict:
    from studyapp.services.preparation import study_run_preparation

    return study_run_preparation(study_id=study_id)


# No autoretry: analysis_job_run records every failure on the job, and a failed job is never
# claimed again, so a retry could only ever find it finished.
@shared_task(name="worker.tasks.analyze_study")
def analyze_study(job_id: int) -> str:
    from studyapp.services.analysis_jobs import analysis_job_run

    return analysis_job_run(job_id=job_id)
