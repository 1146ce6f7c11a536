"""Analysis requests: checked at once, queued for the worker, run exactly once, failures explained."""
from __future__ import annotations

import pytest
from django.urls import reverse

from studyapp import models as m
from studyapp.services.analysis_jobs import analysis_job_request, analysis_job_run
from studyapp.services.errors import ServiceError
from tests.analysis_factories import add_participant, launch, study_with_items, tamper_with_frozen_plan

pytestmark = pytest.mark.django_db


@pytest.fixture
def study() -> m.Study:
    study = launch(study_with_items(arms=("control", "explained")))
    answers = ([1, 1, 0, 1, 0, 0], [0, 1, 1, 0, 1, 0], [1, 1, 0, 1, 1, 1], [1, 0, 0, 1, 0, 0])
    for arm, given in zip(("control", "explained", "control", "explained"), answers):
        add_participant(study, arm, answers=given)
    return study


def report(client, study) -> str:
    """The staff report page, whitespace collapsed."""
    return " ".join(client.get(reverse("report-study", kwargs={"pk": study.pk})).content.decode().split())


def test_a_queued_request_is_shown_on_the_report_until_the_worker_stores_its_run(staff_client, study):
    # In a test transaction nothing commits, so the job stays queued, as with a busy worker.
    response = staff_client.post(reverse("report-study-analyze", kwargs={"pk": study.pk}), {"seed": 3})
    job = m.AnalysisJob.objects.get(study=study)
    assert response["Location"].endswith("#analysis-jobs") and job.status == "queued"
    assert job.requested_by == "analyst" and job.spec is None and job.seed == 3
    assert f"Request #{job.pk} (seed 3, the frozen plan): <strong>queued</strong>" in report(staff_client, study)

    assert analysis_job_run(job_id=job.pk) == "done"

    job.refresh_from_db()
    assert job.run.kind == "confirmatory" and job.run.seed == 3 and job.finished_at is not None
    page = report(staff_client, study)
    assert f"Request #{job.pk}" not in page and f'id="run-{job.run.pk}"' in page


def test_an_identical_request_while_one_is_queued_is_the_same_job(study):
    first = analysis_job_request(study=study, seed=1, spec=None)
    assert analysis_job_request(study=study, seed=1, spec=None) == first
    assert analysis_job_request(study=study, seed=2, spec=None) != first
    assert m.AnalysisJob.objects.count() == 2


def test_a_job_delivered_twice_or_redelivered_after_a_worker_died_stores_one_run(study):
    job = analysis_job_request(study=study, seed=1, spec=None)
    m.AnalysisJob.objects.filter(pk=job.pk).update(status="running")  # its worker died mid-run
    assert analysis_job_run(job_id=job.pk) == "done"
    assert analysis_job_run(job_id=job.pk) == "done"
    assert m.AnalysisRun.objects.filter(study=study).count() == 1


def test_a_request_that_cannot_run_is_refused_at_once_and_nothing_is_queued():
    never_launched = study_with_items()
    with pytest.raises(ServiceError, match="never launched"):
        analysis_job_request(study=never_launched, seed=0, spec=None)
    with pytest.raises(ServiceError, match="seed must be a whole number"):
        analysis_job_request(study=never_launched, seed=-1, spec={"note": "pilot"})
    assert not m.AnalysisJob.objects.exists()


def test_a_job_that_fails_in_the_worker_records_why_and_the_report_says_so(staff_client, study):
    job = analysis_job_request(study=study, seed=0, spec=None)
    frozen = {**study.frozen_config, "title": "edited behind the plan's back"}
    tamper_with_frozen_plan(study, frozen)  # the plan no longer matches its hash

    assert analysis_job_run(job_id=job.pk) == "failed"

    job.refresh_from_db()
    assert job.run is None and "no longer matches the SHA-256" in job.error
    assert not m.AnalysisRun.objects.exists()
    page = report(staff_client, study)
    assert f"Request #{job.pk} (seed 0) <strong>failed</strong>" in page and "no longer matches the SHA-256" in page
