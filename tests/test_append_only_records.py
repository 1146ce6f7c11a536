"""The study's record is append-only: frozen plans, confirmatory runs and deviations survive anyone.

The database refuses (triggers: the ORM, QuerySet.update/delete and raw SQL alike), the admin
refuses before trying, for superusers too, and says why in words. Confirmatory runs are numbered
per study ("look 2 of 2"), and a confirmatory run with no one to analyse is refused, not stored.
"""
from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.db import IntegrityError, connection, transaction
from django.urls import reverse

from studyapp import models as m
from studyapp.admin.studies import AnalysisRunAdmin
from studyapp.models import append_only
from studyapp.services.analysis import study_analyze
from studyapp.services.analysis_jobs import analysis_job_request, analysis_job_run
from studyapp.services.errors import ServiceError
from studyapp.services.preregistration import study_update_after_launch
from studyapp.services.studies import study_close
from tests.analysis_factories import add_participant, launch, study_with_items
from tests.factories import HypothesisFactory, StudyFactory

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent
OTHER_RULES = {"max_failed_attention_checks": 3}  # not the frozen rules: the request is exploratory
ANSWERS = ([1, 1, 0, 1, 0, 0], [0, 1, 1, 0, 1, 0], [1, 1, 0, 1, 1, 1], [1, 0, 0, 1, 0, 0])


def launched(*, participants: bool = True) -> m.Study:
    """A launched two-arm study with one hypothesis and, by default, four completed participants."""
    study = study_with_items(arms=("control", "explained"))
    HypothesisFactory(study=study, arm=study.arms.get(name="explained"), label="H1")
    study = launch(study)
    if participants:
        for arm, answers in zip(("control", "explained", "control", "explained"), ANSWERS):
            add_participant(study, arm, answers=answers)
    return study


def refused(action, words: str) -> bool:
    """True when ``action`` is refused by an append-only trigger whose message contains ``words``
    (in a savepoint: on PostgreSQL the test's transaction goes on)."""
    try:
        with transaction.atomic():
            action()
    except IntegrityError as exc:
        message = m.append_only_refusal(exc)
        assert message is not None and words in message, message
        return True
    return False


def raw(sql: str, *params) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


# ---------------------------------------------------------------- the database refuses


def test_a_confirmatory_run_cannot_be_deleted_or_changed_through_the_orm_querysets_or_raw_sql():
    study = launched()
    run = study_analyze(study=study)
    runs = m.AnalysisRun.objects.filter(pk=run.pk)
    deleted = "A confirmatory analysis run cannot be deleted"
    changed = "A confirmatory analysis run cannot be changed"
    assert refused(run.delete, deleted)
    assert refused(runs.delete, deleted)
    assert refused(lambda: raw("DELETE FROM studyapp_analysisrun WHERE id = %s", run.pk), deleted)
    assert refused(lambda: runs.update(results={}), changed)
    assert refused(lambda: runs.update(kind="exploratory"), changed)
    assert refused(run.save, changed)
    assert refused(lambda: raw("UPDATE studyapp_analysisrun SET seed = 99 WHERE id = %s", run.pk), changed)
    stored = m.AnalysisRun.objects.get(pk=run.pk)
    assert stored.results == run.results and stored.seed == run.seed and stored.kind == "confirmatory"


def test_an_exploratory_run_can_still_be_deleted_but_never_made_confirmatory():
    study = launched()
    first = study_analyze(study=study, exploratory_spec={"note": "a look at the pilot", "exclusion_rules": OTHER_RULES})
    second = study_analyze(study=study, exploratory_spec={"note": "another", "exclusion_rules": OTHER_RULES})
    assert first.kind == second.kind == "exploratory"
    assert refused(lambda: m.AnalysisRun.objects.filter(pk=first.pk).update(kind="confirmatory"),
                   "no run can become confirmatory after the fact")
    m.AnalysisRun.objects.filter(pk=first.pk).update(results={"note": "exploratory runs are the analyst's own"})
    first.delete()
    raw("DELETE FROM studyapp_analysisrun WHERE id = %s", second.pk)
    assert not m.AnalysisRun.objects.exists()


def test_a_recorded_deviation_cannot_be_deleted_or_changed():
    study = launched(participants=False)
    deviation = study_update_after_launch(study=study, field="target_per_arm", value=40, reason="Slow recruitment.")
    deviations = m.PreregistrationDeviation.objects.filter(pk=deviation.pk)
    assert refused(deviation.delete, "A recorded deviation from the pre-registration cannot be deleted")
    assert refused(deviations.delete, "cannot be deleted")
    assert refused(lambda: raw("DELETE FROM studyapp_preregistrationdeviation"), "cannot be deleted")
    assert refused(lambda: deviations.update(reason="Nothing happened."), "Record a new deviation that corrects it")
    assert refused(lambda: raw("UPDATE studyapp_preregistrationdeviation SET after = '30'"), "cannot be changed")
    assert m.PreregistrationDeviation.objects.get().reason == "Slow recruitment."


def test_a_launched_study_cannot_be_deleted_nor_its_frozen_plan_changed():
    study = launched(participants=False)
    studies = m.Study.objects.filter(pk=study.pk)
    deleted, frozen = "A launched study cannot be deleted", "The frozen plan of a launched study cannot be changed"
    assert refused(study.delete, deleted)
    assert refused(studies.delete, deleted)
    assert refused(lambda: raw("DELETE FROM studyapp_study WHERE id = %s", study.pk), deleted)
    assert refused(lambda: studies.update(frozen_config={**study.frozen_config, "hypotheses": []}), frozen)
    assert refused(lambda: studies.update(frozen_sha256="0" * 64), frozen)
    assert refused(lambda: studies.update(launched_at=None, frozen_sha256="", frozen_config=None), frozen)
    assert refused(lambda: raw("UPDATE studyapp_study SET launched_at = NULL WHERE id = %s", study.pk), frozen)
    fresh = m.Study.objects.get(pk=study.pk)
    assert (fresh.frozen_config, fresh.frozen_sha256, fresh.launched_at) == (
        study.frozen_config, study.frozen_sha256, study.launched_at)


def test_a_launched_study_can_still_be_closed_renamed_and_saved_whole():
    study = launched()
    study = study_close(study=study)
    assert study.state == "closed" and study.closed_at is not None
    m.Study.objects.filter(pk=study.pk).update(title="Renamed after closing", description="for the lab")
    study.refresh_from_db()
    study.save()  # every column written again, the frozen ones unchanged
    assert m.Study.objects.get(pk=study.pk).title == "Renamed after closing"


def test_a_draft_study_and_its_pilot_runs_can_still_be_deleted():
    study = study_with_items(arms=("control", "explained"))
    HypothesisFactory(study=study, arm=study.arms.get(name="explained"), label="H1")
    pilot = study_analyze(study=study, exploratory_spec={"note": "pilot"})
    assert pilot.kind == "exploratory"
    study.delete()
    assert not m.Study.objects.filter(pk=study.pk).exists() and not m.AnalysisRun.objects.exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_truncate_which_the_test_runner_flushes_with_is_not_refused():
    # pytest-django flushes transactional tests with TRUNCATE on PostgreSQL (row triggers do not
    # fire); this test's own teardown flushes a launched study, a confirmatory run and a deviation.
    study = launched()
    study_analyze(study=study)
    study_update_after_launch(study=study, field="target_per_arm", value=40, reason="Slow recruitment.")
    raw("TRUNCATE studyapp_analysisrun, studyapp_preregistrationdeviation CASCADE")
    assert not m.AnalysisRun.objects.exists() and not m.PreregistrationDeviation.objects.exists()


def test_the_refusal_reads_as_words_without_the_database_s_context_lines():
    study = launched(participants=False)
    with pytest.raises(IntegrityError) as caught, transaction.atomic():
        m.Study.objects.filter(pk=study.pk).delete()
    assert m.append_only_refusal(caught.value) == append_only.STUDY_DELETE
    assert m.append_only_refusal(IntegrityError("duplicate key value violates unique constraint")) is None


@pytest.mark.slow
def test_sqlite_refuses_the_same_and_gets_its_triggers_back_at_every_migrate(tmp_path):
    """The embedded default (make demo) runs SQLite: the same rules there. Django rebuilds a SQLite
    table for many schema changes, which drops its triggers: every migrate puts them back."""
    env = {"DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:  # as a later migration's table rebuild would
        db.execute("DROP TRIGGER studyapp_study_append_only_delete")
    run = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([sys.executable, "manage.py", "shell", "-c", _SQLITE_CHECK], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.findall(r"^(\w+): (.*)$", run.stdout, re.M) == [
        ("triggers", "6"),
        ("run_delete", "refused"), ("run_update", "refused"), ("exploratory_delete", "allowed"),
        ("deviation_update", "refused"), ("study_delete", "refused"), ("plan_update", "refused"),
        ("close_and_save", "allowed"),
    ]


_SQLITE_CHECK = """
from django.db import IntegrityError, connection, transaction
from studyapp import models as m
from tests.factories import StudyFactory

def attempt(name, action):
    try:
        with transaction.atomic():
            action()
    except IntegrityError as exc:
        assert m.append_only_refusal(exc), exc
        print(f"{name}: refused")
    else:
        print(f"{name}: allowed")

with connection.cursor() as cursor:
    cursor.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%append_only%'")
    print("triggers:", cursor.fetchone()[0])
study = StudyFactory()
m.Study.objects.filter(pk=study.pk).update(state="live", frozen_config={"a": [1, 2]}, frozen_sha256="f" * 64,
                                           launched_at="2025-01-06T09:00:00Z")
study.refresh_from_db()
run = m.AnalysisRun.objects.create(study=study, kind="confirmatory", number=1, results={})
pilot = m.AnalysisRun.objects.create(study=study, kind="exploratory", number=1, results={})
deviation = m.PreregistrationDeviation.objects.create(study=study, field="target_per_arm", reason="why")
attempt("run_delete", run.delete)
attempt("run_update", lambda: m.AnalysisRun.objects.filter(pk=run.pk).update(seed=3))
attempt("exploratory_delete", pilot.delete)
attempt("deviation_update", lambda: m.PreregistrationDeviation.objects.filter(pk=deviation.pk).update(reason="x"))
attempt("study_delete", lambda: m.Study.objects.filter(pk=study.pk).delete())
attempt("plan_update", lambda: m.Study.objects.filter(pk=study.pk).update(frozen_config={"a": [1]}))

def close_and_save():
    m.Study.objects.filter(pk=study.pk).update(state="closed", title="closed")
    study.refresh_from_db()
    study.save()

attempt("close_and_save", close_and_save)
"""


# ---------------------------------------------------------------- the admin refuses, for superusers too


def changelist_action(client, model: str, action: str, pks, **extra):
    return client.post(reverse(f"admin:studyapp_{model}_changelist"),
                       {"action": action, "_selected_action": [str(pk) for pk in pks], **extra}, follow=True)


def test_a_superuser_cannot_delete_a_launched_study_and_sees_why(admin_client):
    study = launched()
    change = reverse("admin:studyapp_study_change", args=[study.pk])
    delete = reverse("admin:studyapp_study_delete", args=[study.pk])
    page = admin_client.get(change).content.decode()
    assert delete not in page  # no Delete button
    for response in (admin_client.get(delete, follow=True), admin_client.post(delete, {"post": "yes"}, follow=True)):
        text = " ".join(response.content.decode().split())
        assert response.redirect_chain[-1][0] == change
        assert "was not deleted. A launched study cannot be deleted" in text
    assert m.Study.objects.filter(pk=study.pk).exists()


def test_a_launched_study_is_read_only_in_the_admin_for_a_superuser(admin_client):
    study = launched(participants=False)
    change = reverse("admin:studyapp_study_change", args=[study.pk])
    response = admin_client.get(change)
    assert response.status_code == 200 and 'name="_save"' not in response.content.decode()
    assert admin_client.post(change, {"title": "Changed", "slug": study.slug}).status_code == 403
    assert m.Study.objects.get(pk=study.pk).title == study.title


def test_delete_selected_refuses_the_whole_selection_when_it_holds_a_launched_study(admin_client):
    live = launched(participants=False)
    draft = StudyFactory(title="A draft")
    response = changelist_action(admin_client, "study", "delete_selected", [live.pk, draft.pk])
    text = " ".join(response.content.decode().split())
    assert f"Nothing was deleted: {live.title}. A launched study cannot be deleted" in text
    assert m.Study.objects.filter(pk__in=[live.pk, draft.pk]).count() == 2
    response = changelist_action(admin_client, "study", "delete_selected", [draft.pk], post="yes")
    assert response.status_code == 200 and not m.Study.objects.filter(pk=draft.pk).exists()


def test_confirmatory_runs_have_no_delete_in_the_admin_and_exploratory_runs_do(admin_client):
    study = launched()
    confirmatory = study_analyze(study=study)
    exploratory = study_analyze(study=study, exploratory_spec={"note": "look around", "exclusion_rules": OTHER_RULES})
    delete = reverse("admin:studyapp_analysisrun_delete", args=[confirmatory.pk])
    response = admin_client.post(delete, {"post": "yes"}, follow=True)
    assert "was not deleted. A confirmatory analysis run cannot be deleted" in response.content.decode()
    response = changelist_action(admin_client, "analysisrun", "delete_selected", [confirmatory.pk, exploratory.pk],
                                 post="yes")
    assert "Nothing was deleted: Confirmatory analysis, look 1 of 1" in response.content.decode()
    assert m.AnalysisRun.objects.count() == 2
    page = admin_client.get(reverse("admin:studyapp_analysisrun_delete", args=[exploratory.pk])).content.decode()
    assert "Are you sure you want to delete" in page and "Exploratory analysis 1" in page
    admin_client.post(reverse("admin:studyapp_analysisrun_delete", args=[exploratory.pk]), {"post": "yes"})
    assert list(m.AnalysisRun.objects.values_list("pk", flat=True)) == [confirmatory.pk]


def test_a_refusal_by_the_database_reaches_the_admin_as_words_not_a_server_error(admin_client, monkeypatch):
    # As in a race: the admin believed the run deletable, the database knows better.
    run = study_analyze(study=launched())
    monkeypatch.setattr(AnalysisRunAdmin, "refusal", lambda self, obj: None)
    response = admin_client.post(reverse("admin:studyapp_analysisrun_delete", args=[run.pk]), {"post": "yes"},
                                 follow=True)
    assert response.status_code == 200
    assert "was not deleted. A confirmatory analysis run cannot be deleted" in response.content.decode()
    response = changelist_action(admin_client, "analysisrun", "delete_selected", [run.pk], post="yes")
    assert "Nothing was deleted. A confirmatory analysis run cannot be deleted" in response.content.decode()
    assert m.AnalysisRun.objects.filter(pk=run.pk).exists()
    assert not LogEntry.objects.filter(action_flag=DELETION).exists()  # rolled back with the deletion


def test_deviations_are_shown_in_the_study_without_edit_or_delete(admin_client):
    study = launched(participants=False)
    study_update_after_launch(study=study, field="target_per_arm", value=40, reason="Slow recruitment.")
    page = admin_client.get(reverse("admin:studyapp_study_change", args=[study.pk])).content.decode()
    assert "Slow recruitment." in page
    assert "deviations-0-DELETE" not in page and 'name="deviations-0-reason"' not in page


def test_runs_and_related_objects_have_readable_names_in_lists_and_delete_confirmations(admin_client):
    study = launched()
    study_analyze(study=study)
    study_analyze(study=study, seed=1)
    page = admin_client.get(reverse("admin:studyapp_analysisrun_changelist")).content.decode()
    assert "Confirmatory analysis, look 1 of 2" in page and "Confirmatory analysis, look 2 of 2" in page
    draft = study_with_items(arms=("control", "explained"))
    m.Explanation.objects.create(arm=draft.arms.get(name="explained"), stimulus=draft.dataset.stimuli.first(),
                                 attributions=b"", config={}, config_sha256="0" * 64, seed=0, target=0)
    HypothesisFactory(study=draft, arm=draft.arms.get(name="explained"), label="H1")
    study_analyze(study=draft, exploratory_spec={"note": "pilot"})
    page = admin_client.get(reverse("admin:studyapp_study_delete", args=[draft.pk])).content.decode()
    assert "Are you sure" in page and " object (" not in page
    assert "Explanation of stimulus" in page and "in arm explained" in page and "Exploratory analysis 1" in page


# ---------------------------------------------------------------- numbering and the report


def test_runs_are_numbered_per_study_and_kind_in_the_order_they_are_stored():
    study, other = launched(), launched()
    exploratory = {"note": "x", "exclusion_rules": OTHER_RULES}
    numbers = [(run.kind, run.number) for run in (
        study_analyze(study=study), study_analyze(study=study, exploratory_spec=exploratory),
        study_analyze(study=study, seed=1), study_analyze(study=other))]
    assert numbers == [("confirmatory", 1), ("exploratory", 1), ("confirmatory", 2), ("confirmatory", 1)]
    with pytest.raises(IntegrityError, match="analysisrun_unique_number"), transaction.atomic():
        m.AnalysisRun.objects.create(study=other, kind="confirmatory", number=1, results={})


def test_the_report_says_look_2_of_2_and_that_there_was_more_than_one_look(staff_client):
    study = launched()
    first = study_analyze(study=study, seed=1)
    url = reverse("report-study", kwargs={"pk": study.pk})
    page = " ".join(staff_client.get(url).content.decode().split())
    assert "Confirmatory analysis, look 1 of 1" in page and "more than one look" not in page
    second = study_analyze(study=study, seed=2)
    page = " ".join(staff_client.get(url).content.decode().split())
    assert "Confirmatory analysis, look 2 of 2" in page and f"Run #{second.pk}," in page
    assert "This plan was analysed 2 times: there was more than one look at the data." in page
    looks = re.findall(r"<tr><td>(\d) of 2</td><td>[^<]+</td><td class=\"num\">(\d)</td>", page)
    assert looks == [("1", str(first.seed)), ("2", str(second.seed))]
    download = staff_client.get(reverse("report-study-download", kwargs={"pk": study.pk})).content.decode()
    assert "look 2 of 2" in download and "more than one look" in download


# ---------------------------------------------------------------- a look at nobody is refused


def test_a_confirmatory_run_with_no_analysable_participants_is_refused_and_nothing_is_stored():
    study = launched(participants=False)
    add_participant(study, "control", answers=[1, 0, 1], status="started")
    add_participant(study, "explained", answers=[1, 1, 1], status="withdrawn")
    with pytest.raises(ServiceError) as caught:
        study_analyze(study=study)
    message = " ".join(caught.value.messages)
    assert message.startswith("No confirmatory analysis was stored: there is no one to analyse in the compared "
                              "arms (control, explained): of 2 real participants in those arms, 0 completed.")
    assert not m.AnalysisRun.objects.exists()
    pilot = study_analyze(study=study, exploratory_spec={"note": "what is there", "exclusion_rules": OTHER_RULES})
    assert pilot.kind == "exploratory"  # an exploratory look is the analyst's own business


def test_completers_that_the_exclusion_rules_remove_leave_no_one_to_analyse():
    study = study_with_items(arms=("control", "explained"),
                             config={"exclusion_rules": {"max_failed_attention_checks": 0}})
    HypothesisFactory(study=study, arm=study.arms.get(name="explained"), label="H1")
    study = launch(study)
    for arm in ("control", "explained"):
        add_participant(study, arm, answers=[1, 0, 1], checks=[(0, 1)])  # failed its attention check
    with pytest.raises(ServiceError, match="2 completed, 2 of them excluded by the exclusion rules"):
        study_analyze(study=study)
    assert not m.AnalysisRun.objects.exists()


@pytest.mark.django_db(transaction=True)  # commits, so "Run analysis" runs the job in-process (embedded mode)
def test_the_refusal_fails_the_analysis_job_and_the_report_says_why(staff_client):
    study = launched(participants=False)
    job = analysis_job_request(study=study, seed=0, spec=None)
    assert analysis_job_run(job_id=job.pk) == "failed"
    job.refresh_from_db()
    assert job.run is None and job.error.startswith("No confirmatory analysis was stored: there is no one to analyse")
    response = staff_client.post(reverse("report-study-analyze", kwargs={"pk": study.pk}), {"seed": 4}, follow=True)
    page = " ".join(response.content.decode().split())
    assert "The analysis was not run: No confirmatory analysis was stored" in page
    assert not m.AnalysisRun.objects.exists()
