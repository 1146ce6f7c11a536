"""Analyses requested from the report page, run by a worker (the ``cpu`` queue).

``analysis_job_request`` checks the request at once (never launched, bad seed, a frozen plan that
no longer matches its hash, a malformed exploratory request: the researcher reads why straight
away), stores a queued job and sends it after commit (a send that fails leaves it to the
dispatcher). ``analysis_job_run`` is the worker's
half and is idempotent: a job redelivered after a worker died runs again, and a job delivered
twice at once stores one AnalysisRun, because the run and the job's "done" are written together
under a lock on the job's row. Embedded mode (no broker) runs the job in-process on commit.
"""
from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from studyapp.models import AnalysisJob, Study
from studyapp.services.preregistration import analysis_request_check

logger = logging.getLogger(__name__)

ACTIVE = (AnalysisJob.Status.QUEUED, AnalysisJob.Status.RUNNING)


def analysis_job_request(*, study: Study, seed: int, spec: dict | None, requested_by: str = "") -> AnalysisJob:
    """Check the request and queue it; an identical request already queued or running is
    returned instead of a second job (a double click runs one analysis)."""
    analysis_request_check(study=study, seed=seed, spec=spec)
    with transaction.atomic():
        Study.objects.select_for_update().filter(pk=study.pk).first()  # serializes identical requests
        same = AnalysisJob.objects.filter(study=study, seed=seed, status__in=ACTIVE)
        existing = next((job for job in same if job.spec == spec), None)
        if existing is not None:
            if existing.status == AnalysisJob.Status.QUEUED and existing.enqueued_at is None:
                # Its message never left (broker down then): asking again sends it.
                transaction.on_commit(lambda: analysis_job_send(existing.pk))
            return existing
        job = AnalysisJob.objects.create(study=study, seed=seed, spec=spec, requested_by=requested_by)
        transaction.on_commit(lambda: analysis_job_send(job.pk))
    return job


def analysis_job_send(job_id: int) -> bool:
    """Send the job's message (see ``work_units.job_send``); never raises. In the embedded mode the
    job runs here and now."""
    from studyapp.services.work_units import job_send
    from worker.tasks import analyze_study

    return job_send(AnalysisJob, job_id, analyze_study, what="analysis job")


def _finish_failed(job_id: int, error: str) -> None:
    AnalysisJob.objects.filter(pk=job_id, status__in=ACTIVE).update(
        status=AnalysisJob.Status.FAILED, error=error, finished_at=timezone.now())


def analysis_job_run(*, job_id: int) -> str:
    """Run a queued (or redelivered running) job; returns the job's final status."""
    from studyapp.services.analysis import study_analyze  # the statistics stack: worker side only

    claimed = AnalysisJob.objects.filter(pk=job_id, status__in=ACTIVE).update(
        status=AnalysisJob.Status.RUNNING, started_at=timezone.now())
    if not claimed:  # done, failed or deleted: nothing to do
        return AnalysisJob.objects.filter(pk=job_id).values_list("status", flat=True).first() or "missing"
    try:
        with transaction.atomic():
            job = AnalysisJob.objects.select_for_update().select_related("study").get(pk=job_id)
            if job.status != AnalysisJob.Status.RUNNING:  # a twin delivery finished it meanwhile
                return job.status
            run = study_analyze(study=job.study, seed=job.seed, exploratory_spec=job.spec)
            job.status, job.run, job.finished_at = AnalysisJob.Status.DONE, run, timezone.now()
            job.save(update_fields=["status", "run", "finished_at"])
    except ValidationError as exc:  # ServiceError: a message for the researcher
        _finish_failed(job_id, " ".join(exc.messages))
        return AnalysisJob.Status.FAILED
    except Exception as exc:
        logger.exception("Analysis job %s failed", job_id)
        _finish_failed(job_id, f"The analysis failed unexpectedly ({exc.__class__.__name__}: {exc}). "
                               "The worker's log has the details.")
        raise
    return AnalysisJob.Status.DONE
