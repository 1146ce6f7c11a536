"""The live monitor: counts per arm and status as participants arrive, and the pause switches."""
from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from studyapp.models import Participant
from tests.participation_helpers import enroll, live_tabular

pytestmark = pytest.mark.django_db


def test_the_monitor_counts_real_participants_per_arm_and_refreshes_as_a_fragment(admin_client, prepare):
    study = live_tabular(prepare)
    for _ in range(3):
        assert enroll(Client(), study).status_code == 201
    url = reverse("admin:studyapp_study_monitor", args=[study.pk])
    page = admin_client.get(url).content.decode()
    assert "<strong>3</strong> real participants" in page and "staff/monitor.js" in page
    fragment = admin_client.get(url + "?fragment=1")
    assert "no-store" in fragment["Cache-Control"]
    body = fragment.content.decode()
    assert "<html" not in body and "3</strong> real participants" in body
    arms = {a.name: Participant.objects.filter(study=study, arm=a).count() for a in study.arms.all()}
    for name, n in arms.items():
        assert f"<td>{name}</td><td>0 / {study.target_per_arm}</td><td>{n}</td>" in body


def test_pausing_refuses_new_participants_politely_and_resuming_takes_them_again(admin_client, client, prepare):
    study = live_tabular(prepare)
    url = reverse("admin:studyapp_study_monitor", args=[study.pk])
    admin_client.post(url, {"paused": "1"})
    response = client.post(f"/s/{study.public_id}/", {"choice": "agree"})
    assert response.status_code == 503 and "This study is paused" in response.content.decode()
    assert enroll(Client(), study).json()["reason"] == "paused"  # the API says the same
    assert not Participant.objects.exists()
    admin_client.post(url, {"paused": "0"})
    assert enroll(Client(), study).status_code == 201


def test_a_paused_arm_gets_no_new_participants_while_the_others_do(admin_client, prepare):
    study = live_tabular(prepare)
    control = study.arms.get(kind="control")
    admin_client.post(reverse("admin:studyapp_study_monitor", args=[study.pk]), {"paused": "1", "arm": control.pk})
    for _ in range(4):
        assert enroll(Client(), study).status_code == 201
    assert not Participant.objects.filter(arm=control).exists()
    assert Participant.objects.count() == 4


def test_only_a_live_study_can_be_paused(admin_client, prepare):
    study = live_tabular(prepare)
    from studyapp.services.studies import study_close

    study_close(study=study)
    page = admin_client.post(reverse("admin:studyapp_study_monitor", args=[study.pk]), {"paused": "1"},
                             follow=True).content.decode()
    assert "Only a live study takes participants" in page


def test_the_monitor_releases_slots_of_participants_gone_past_the_timeout(admin_client, prepare):
    import datetime as dt

    from django.utils import timezone

    study = live_tabular(prepare)
    assert enroll(Client(), study).status_code == 201
    Participant.objects.update(last_seen_at=timezone.now() - dt.timedelta(hours=3))  # the default timeout is 60 min
    body = admin_client.get(reverse("admin:studyapp_study_monitor", args=[study.pk]) + "?fragment=1").content.decode()
    assert Participant.objects.get().status == "abandoned" and "1 abandoned (slot released)" in body


def test_the_excluded_count_is_counted_once_a_window_however_often_monitors_poll(admin_client, prepare, monkeypatch,
                                                                                settings):
    from django.core.cache import cache

    from studyapp.exports import rows

    study = live_tabular(prepare)
    assert enroll(Client(), study).status_code == 201
    counted = []
    real = rows.exclusion_flags
    monkeypatch.setattr(rows, "exclusion_flags", lambda **kw: counted.append(kw["study"].pk) or real(**kw))
    cache.delete(f"monitor-excluded:{study.public_id}")
    url = reverse("admin:studyapp_study_monitor", args=[study.pk]) + "?fragment=1"

    settings.MONITOR_EXCLUSIONS_SECONDS = 60
    bodies = [admin_client.get(url).content.decode() for _ in range(3)]
    assert counted == [study.pk]  # three polls, one count
    assert "0 excluded so far by the pre-registered rules (counted " in bodies[0]
    assert "at most once every 60 seconds" in bodies[2]

    settings.MONITOR_EXCLUSIONS_SECONDS = 0  # every poll counts again, and says nothing of a window
    body = admin_client.get(url).content.decode()
    admin_client.get(url)
    assert counted == [study.pk] * 3 and "excluded so far" in body and "at most once" not in body
