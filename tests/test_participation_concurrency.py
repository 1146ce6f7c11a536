"""Concurrency on PostgreSQL (SQLite ignores row locks): balanced arms and answers stored once."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from django.test import Client

from studyapp.models import Arm, Participant, Response, Study
from studyapp.services.studies import study_launch, study_prepare
from tests.factories import ArmFactory, StimulusFactory, study_with_arms
from tests.participation_helpers import answer_body, api, enroll, post, to_trials

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def launched(study: Study) -> Study:
    study_prepare(study=study)  # Celery runs eagerly in tests: the task runs on commit
    study.refresh_from_db()
    assert study.state == "ready", study.preparation
    return study_launch(study=study)


def in_threads(n: int, work, workers: int = 20) -> list:
    barrier = threading.Barrier(min(n, workers))

    def run(i):
        try:
            if i < workers:
                barrier.wait()
            return work(i)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, range(n)))


def test_a_hundred_concurrent_enrollments_keep_arms_within_one_of_their_weighted_share():
    study = study_with_arms()
    StimulusFactory.create_batch(4, dataset=study.dataset, split="test")
    ArmFactory(study=study, name="saliency", kind="explanation", method="saliency", position=2, allocation_weight=2)
    Study.objects.filter(pk=study.pk).update(target_per_arm=1000)
    study = launched(study)

    statuses = in_threads(100, lambda i: enroll(Client(), study).status_code)
    assert statuses == [201] * 100
    weights = dict(Arm.objects.filter(study=study).values_list("name", "allocation_weight"))
    counts = {name: Participant.objects.filter(study=study, arm__name=name).count() for name in weights}
    total = sum(weights.values())
    for name, weight in weights.items():
        assert abs(counts[name] - 100 * weight / total) <= 1, counts
    assert Participant.objects.filter(study=study).count() == 100
    assert all(p.trials.count() == 6 for p in Participant.objects.filter(study=study))


def test_twenty_concurrent_copies_of_one_answer_store_one_row_and_all_get_the_same_reply():
    study = launched(study_with_arms())
    browser = Client()
    to_trials(browser, study)
    trial = browser.get(api(study, "trial")).json()
    body = answer_body(1)
    cookies = browser.cookies

    def send(i):
        copy = Client()
        copy.cookies = cookies
        reply = post(copy, api(study, f"trials/{trial['trial']}/answer"), body)
        return reply.status_code, reply.json()

    replies = in_threads(20, send)
    assert sorted(status for status, _ in replies) == [200] * 19 + [201]
    assert len({str(sorted(r.items())) for _, r in replies}) == 1
    assert Response.objects.count() == 1


def test_concurrent_enrollments_never_overfill_a_full_study():
    study = study_with_arms()
    Study.objects.filter(pk=study.pk).update(target_per_arm=3)
    study = launched(study)
    statuses = in_threads(12, lambda i: enroll(Client(), study).status_code, workers=12)
    assert statuses.count(201) == 6 and statuses.count(403) == 6
    assert Participant.objects.filter(study=study).count() == 6


def test_two_tabs_answering_the_same_trial_with_different_keys_store_one_answer():
    study = launched(study_with_arms())
    browser = Client()
    to_trials(browser, study)
    trial = browser.get(api(study, "trial")).json()

    def send(i):
        copy = Client()
        copy.cookies = browser.cookies
        return post(copy, api(study, f"trials/{trial['trial']}/answer"), answer_body(i % 2)).status_code

    statuses = in_threads(10, send, workers=10)
    assert statuses.count(201) == 1 and statuses.count(409) == 9
    assert Response.objects.count() == 1
