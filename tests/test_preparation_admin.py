"""The researcher's view of a preparation: progress per step on the study and report pages
(refreshed without reloading), failed units in words, "Retry failed units" and "Cancel preparation"."""
from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from studyapp.models import PreparationUnit, Study
from studyapp.services import preparation, work_units
from tests.factories import study_with_arms

pytestmark = pytest.mark.django_db


@pytest.fixture
def failing_saliency(monkeypatch):
    """The saliency arm's maps fail every attempt (quickly), until the fixture's ``fix()``."""
    real = preparation.WORK["maps"]

    def maps(unit):
        if unit.arm.method == "saliency":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(unit)
    monkeypatch.setitem(preparation.WORK, "maps", maps)
    monkeypatch.setattr(work_units, "backoff", lambda attempts: dt.timedelta(seconds=0.01))
    return lambda: monkeypatch.setitem(preparation.WORK, "maps", real)


def test_the_study_page_shows_progress_per_step_and_refreshes_it_while_preparing(admin_client, prepare):
    study = prepare(study_with_arms())
    page = admin_client.get(reverse("admin:studyapp_study_change", args=[study.pk])).content.decode()
    assert "Prepared: " in page and "Model outputs" in page and "Arm &#x27;integrated_gradients&#x27;" in page
    assert "staff/preparation.js" in page
    # While preparing, the fragment says so and asks to be refreshed.
    Study.objects.filter(pk=study.pk).update(state="preparing")
    PreparationUnit.objects.filter(study=study, kind="render").update(status="pending")
    fragment = admin_client.get(reverse("admin:studyapp_study_preparation", args=[study.pk]))
    text = fragment.content.decode()
    assert "no-store" in fragment["Cache-Control"] and 'data-active="1"' in text
    assert "Preparing: " in text and "about " in text and "left (from the measured unit times)" in text
    assert "Cancel preparation" in text


def test_a_failed_unit_is_shown_in_words_and_retry_from_the_page_completes_the_study(
        admin_client, prepare, failing_saliency, django_capture_on_commit_callbacks):
    study = prepare(study_with_arms(methods=("integrated_gradients", "saliency")))
    assert study.state == Study.State.PREPARING
    url = reverse("admin:studyapp_study_preparation", args=[study.pk])
    text = admin_client.get(url).content.decode()
    assert "Preparation stopped on 1 failed unit" in text and "an illegal memory access" in text
    assert "Retry failed units" in text
    report = admin_client.get(reverse("report-study", args=[study.pk])).content.decode()
    assert "an illegal memory access" in report and 'id="preparation-progress"' in report
    failing_saliency()  # the cause is fixed
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(url, {"do": "retry"})
    assert response.status_code == 302
    study.refresh_from_db()
    assert study.state == Study.State.READY


def test_cancel_from_the_list_sends_the_study_back_to_draft(admin_client, prepare, failing_saliency):
    study = prepare(study_with_arms(methods=("integrated_gradients", "saliency")))
    admin_client.post(reverse("admin:studyapp_study_changelist"),
                      {"action": "cancel_preparation", "_selected_action": [study.pk]})
    study.refresh_from_db()
    assert study.state == Study.State.DRAFT
    assert not PreparationUnit.objects.filter(study=study).exclude(status="done").exists()
    text = admin_client.get(reverse("admin:studyapp_study_preparation", args=[study.pk])).content.decode()
    assert "Preparation was cancelled; the 4 units it finished are kept" in text and 'data-active' not in text


def test_retry_on_a_study_with_nothing_failed_says_so(admin_client, prepare):
    study = prepare(study_with_arms())
    response = admin_client.post(reverse("admin:studyapp_study_changelist"),
                                 {"action": "retry_failed_units", "_selected_action": [study.pk]}, follow=True)
    assert "only a study in preparation has units to retry" in response.content.decode()


def test_staff_who_may_only_view_studies_see_progress_but_cannot_retry_or_cancel(client, django_user_model, prepare,
                                                                                 failing_saliency):
    study = prepare(study_with_arms(methods=("integrated_gradients", "saliency")))
    viewer = django_user_model.objects.create_user(username="viewer", password="pw-123456789", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_study"))
    study.collaborators.add(viewer)
    client.force_login(viewer)
    url = reverse("admin:studyapp_study_preparation", args=[study.pk])
    text = client.get(url).content.decode()
    assert "failed unit" in text and "Retry failed units" not in text
    assert client.post(url, {"do": "cancel"}).status_code == 403
    study.refresh_from_db()
    assert study.state == Study.State.PREPARING
