"""Data collected elsewhere: a long-format CSV uploaded in the admin becomes an "external" study that
is frozen, analysed, reported and exported like a study run here; a malformed file is refused by row
and column and leaves nothing behind."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math

import pandas as pd
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import IntegrityError, transaction
from django.urls import reverse

from studyapp import models as m
from studyapp.services import external_import
from studyapp.services.errors import ServiceError
from studyapp.services.external_import import external_file_parse, external_study_import
from studyapp.services.studies import study_duplicate, study_freeze_external, study_launch, study_prepare
from tests.factories import MLModelFactory

pytestmark = pytest.mark.django_db

IMPORT_URL = reverse("admin:studyapp_study_import_external")
TABLES = (m.Study, m.Dataset, m.Stimulus, m.Edit, m.Arm, m.Participant, m.Trial, m.Response,
          m.QuestionnaireAnswer, m.ExternalStudyImport)
# Per participant k of an arm: accuracy threshold out of 10 items (varied so arms have a spread).
ACCURACY = {"c": (4, 5, 6), "e": (7, 8, 9)}


def good_rows(*, per_arm: int = 6, n_items: int = 10, response: bool = True) -> list[dict]:
    """Two conditions (c = control, e), one practice and n_items test trials per participant, a
    Likert rating on the first row only, and a column the import does not read."""
    rows = []
    for arm, thresholds in ACCURACY.items():
        for k in range(per_arm):
            pid = f"{arm.upper()}-{k:02d}"
            rows.append({"participant": pid, "condition": arm, "phase": "practice", "item": "demo", "correct": "true",
                         "rt_ms": "1500.4", "confidence": "", "response": "1", "n_options": "2",
                         "likert_trust": "", "browser": "firefox"})
            for i in range(n_items):
                correct = int((i * 7 + k * 3) % 10 < thresholds[k % 3])
                truth = i % 2
                rows.append({"participant": pid, "condition": arm, "phase": "test", "item": f"img_{i}",
                             "correct": str(correct), "rt_ms": str(700 + 13 * i + k), "confidence": str(1 + i % 7),
                             "response": str(truth if correct else 1 - truth), "n_options": "2",
                             "likert_trust": (str(3 + (arm == "e") + k % 2) if i == 0 else ""),
                             "browser": "firefox"})
    if not response:
        for row in rows:
            del row["response"]
    return rows


def to_csv(rows: list[dict], columns: list[str] | None = None) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns or list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def researcher():
    """A staff user with the study app's permissions (not a superuser)."""
    user = get_user_model().objects.create_user(username="researcher", password="pw-123456789", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="studyapp"))
    return user


def upload(client, data: bytes, *, name: str = "wave1.csv", **fields):
    post = {"title": "Natural images or nothing", "slug": "", "description": "", "control": "c",
            "arm_names": "e = natural images", "n_options": "", "exclusion_rules": "{}", **fields,
            "data_file": SimpleUploadedFile(name, data, content_type="text/csv")}
    return client.post(IMPORT_URL, post)


def import_bytes(data: bytes, **kwargs) -> m.Study:
    return external_study_import(file=io.BytesIO(data), file_name="wave1.csv", title="Imported", **kwargs)


def refusal(data: bytes, **kwargs) -> str:
    """The words of the refusal of ``data``; nothing may be stored."""
    with pytest.raises(ServiceError) as caught:
        import_bytes(data, **kwargs)
    assert_nothing_stored()
    return " | ".join(caught.value.messages)


def assert_nothing_stored() -> None:
    left = {t.__name__: t.objects.count() for t in TABLES if t.objects.exists()}
    assert not left, f"a refused file left rows behind: {left}"


def hypothesis_post(study: m.Study, hypotheses: list[dict]) -> dict:
    """The study page's POST for an imported draft: its fields, its arms as they are, new hypotheses."""
    data = {"title": study.title, "slug": study.slug, "description": "", "seed": 0, "target_per_arm": 30,
            "consent_text": "", "instructions": "", "debrief_text": "", "completion_code": "",
            "screened_out_code": "", "failed_checks_code": ""}
    arms = [{"id": a.pk, "study": study.pk, "name": a.name, "kind": a.kind, "method": "", "method_config": "{}",
             "manipulation": "none", "manipulation_config": "{}", "allocation_weight": 1, "position": a.position}
            for a in study.arms.order_by("position")]
    defaults = {"comparison": "arm_vs_control", "comparator_name": "", "statement": "It helps.",
                "outcome": "test_accuracy", "likert_item": "", "direction": "greater", "equivalence_margin": "",
                "test": "welch_t", "alpha": 0.05, "family": "primary", "correction": "holm",
                "planned_n_per_arm": 6, "stopping_rule": "", "exclusion_rules": "{}", "study": study.pk}
    for prefix, rows in (("arms", arms), ("hypotheses", [{**defaults, **h} for h in hypotheses]),
                         ("deviations", []), ("items", [])):
        data[f"{prefix}-TOTAL_FORMS"] = len(rows)
        data[f"{prefix}-INITIAL_FORMS"] = sum(1 for row in rows if row.get("id"))
        for i, row in enumerate(rows):
            data.update({f"{prefix}-{i}-{key}": value for key, value in row.items()})
    return data


def download(client, study: m.Study, kind: str) -> str:
    response = client.get(reverse(f"export-{kind}", kwargs={"pk": study.pk}))
    assert response.status_code == 200, kind
    return (b"".join(response.streaming_content) if response.streaming else response.content).decode()


# ---------------------------------------------------------------- a good file, end to end


@pytest.mark.postgres
def test_a_good_file_uploaded_in_the_admin_is_frozen_analysed_reported_and_exported_with_its_hash(client):
    from studyapp.services.analysis import study_analyze

    client.force_login(researcher())
    rows = good_rows()
    data = to_csv(rows)
    response = upload(client, data)

    assert response.status_code == 302, response.content.decode()[:3000]
    study = m.Study.objects.get()
    assert response["Location"] == reverse("admin:studyapp_study_change", args=[study.pk])
    assert (study.source, study.model_id, study.state, study.owner.username) == ("external", None, "draft", "researcher")
    arms = list(study.arms.order_by("position").values_list("name", "kind"))
    assert arms == [("c", "control"), ("natural images", "external")]
    people = m.Participant.objects.filter(study=study)
    assert people.count() == 12
    assert set(people.values_list("source", "status", "step")) == {("external", "completed", "done")}
    assert all(started == completed for started, completed in people.values_list("started_at", "completed_at"))
    assert set(people.filter(arm__name="c").values_list("external_id", flat=True)) == {f"C-{k:02d}" for k in range(6)}
    assert m.Trial.objects.filter(participant__study=study).count() == len(rows) == m.Response.objects.count()
    first = m.Trial.objects.select_related("response", "stimulus").get(participant__external_id="E-00", position=1)
    assert (first.phase, first.task, first.stimulus.source_name, first.stimulus.label, first.n_options) == (
        "test", "forward", "img_0", None, 2)
    assert (first.response.correct, first.response.client_rt_ms, first.response.confidence) == (True, 700, 1)
    assert m.Trial.objects.get(participant__external_id="E-00", position=0).response.client_rt_ms == 1500  # rounded
    ratings = dict(m.QuestionnaireAnswer.objects.filter(item="trust").values_list("participant__external_id", "value"))
    assert len(ratings) == 12 and ratings["E-01"] == 5 and ratings["C-00"] == 3
    record = study.external_import
    assert record.file_sha256 == hashlib.sha256(data).hexdigest() == study.dataset.content_sha256
    assert (record.file_name, record.n_rows, record.n_participants, record.n_items) == ("wave1.csv", len(rows), 12, 11)
    assert record.ignored_columns == ["browser"] and record.settings["answers_from_file"] is True
    assert (study.dataset.source, study.dataset.modality, study.dataset.class_names) == (
        "external", "external", ["option 1", "option 2"])

    # The researcher adds a hypothesis on the study page (its model and data are read-only there).
    page = client.get(reverse("admin:studyapp_study_change", args=[study.pk])).content.decode()
    assert "None: the data were collected elsewhere" in page
    # Nothing that only a platform study uses: participant texts, completion codes, item sample.
    assert "Consent text" not in page and "Completion code" not in page and "Item sample" not in page
    response = client.post(reverse("admin:studyapp_study_change", args=[study.pk]),
                           hypothesis_post(study, [{"label": "H1", "arm_name": "natural images"}]))
    assert response.status_code == 302, response.content.decode()[:3000]
    assert study.hypotheses.get().arm.name == "natural images"

    # Freeze, on the plan page (the Launch review page of a platform study).
    plan_url = reverse("admin:studyapp_study_launch_review", args=[study.pk])
    page = client.get(plan_url).content.decode()
    assert "Freeze this plan" in page and record.file_sha256 in page and "cannot be frozen" not in page
    assert client.post(plan_url, {"confirm": "on"}).status_code == 302
    study.refresh_from_db()
    assert study.state == "closed" and study.frozen_sha256 and study.launched_at
    assert study.frozen_config["dataset"]["content_sha256"] == record.file_sha256
    assert study.frozen_config["model"]["class_names"] == ["option 1", "option 2"]

    run = study_analyze(study=study, seed=3)
    assert run.kind == "confirmatory" and run.results["analysed_participants"] == 12
    assert run.results["plan_drift"] == []
    h1 = run.results["hypotheses"][0]
    assert h1["error"] is None and h1["decision"]["verdict"] == "supported"
    # Means of the per-participant test accuracies: (0.4 + 0.5 + 0.6) / 3 and (0.7 + 0.8 + 0.9) / 3.
    assert math.isclose(h1["descriptives"]["natural images"]["mean"], 0.8)
    assert math.isclose(h1["descriptives"]["c"]["mean"], 0.5)

    report = client.get(reverse("report-study", args=[study.pk]))
    assert report.status_code == 200 and "H1" in report.content.decode()

    responses = pd.read_csv(io.StringIO(download(client, study, "responses")))
    assert len(responses) == len(rows)
    assert responses["truth"].isna().all() and responses["model_output"].isna().all()
    test = responses.loc[responses["phase"] == "test"]
    assert test.groupby("arm")["correct"].mean().round(3).to_dict() == {"c": 0.5, "natural images": 0.8}
    participants = pd.read_csv(io.StringIO(download(client, study, "participants")))
    assert len(participants) == 12 and set(participants["source"]) == {"external"}
    # The file's own ids, to match rows with the researcher's data; no session duration is invented.
    assert set(participants["source_id"]) == {f"{arm}-{k:02d}" for arm in "CE" for k in range(6)}
    assert participants["duration_s"].isna().all()
    assert participants.set_index("arm")["likert_trust"].groupby(level=0).mean().to_dict() == {
        "c": 3.5, "natural images": 4.5}
    manifest = json.loads(download(client, study, "manifest"))
    imported = manifest["study"]["external_import"]
    assert manifest["study"]["source"] == "external" and manifest["models"] == []
    assert (imported["file_name"], imported["file_sha256"], imported["n_rows"]) == (
        "wave1.csv", hashlib.sha256(data).hexdigest(), len(rows))
    assert imported["imported_at"].endswith("Z")
    assert manifest["dataset"]["content_sha256"] == imported["file_sha256"]
    assert manifest["preregistration"]["frozen_sha256_verified"] is True


def test_a_file_without_a_response_column_stores_the_correctness_as_the_answer_and_refuses_straightlining():
    study = import_bytes(to_csv(good_rows(response=False)), control="c")
    answers = m.Response.objects.filter(trial__participant__study=study).values_list("answer", "correct")
    assert {(answer, correct) for answer, correct in answers} == {(1, True), (0, False)}
    assert study.external_import.settings["answers_from_file"] is False
    with pytest.raises(ServiceError) as caught:
        import_bytes(to_csv(good_rows(response=False)), exclusion_rules={"straightlining_max_run": 5})
    assert "straightlining_max_run needs the option each participant chose" in " ".join(caught.value.messages)


def test_the_same_file_imported_twice_makes_two_studies_with_their_own_answer_keys():
    data = to_csv(good_rows(per_arm=2, n_items=3))
    first, second = import_bytes(data), import_bytes(data)
    assert first.slug != second.slug and first.dataset_id != second.dataset_id
    assert m.Response.objects.count() == 2 * m.Response.objects.filter(trial__participant__study=first).count()


# ---------------------------------------------------------------- files that are refused


def test_a_file_without_a_required_column_is_refused_by_the_column_name_and_nothing_is_stored(client):
    client.force_login(researcher())
    rows = good_rows(per_arm=2, n_items=2)
    for row in rows:
        del row["rt_ms"]
    response = upload(client, to_csv(rows))
    assert response.status_code == 200
    page = response.content.decode()
    assert "The file has no column &#x27;rt_ms&#x27; (the response time in milliseconds)." in page
    assert_nothing_stored()


def test_a_bad_value_is_refused_naming_its_spreadsheet_row_and_column():
    rows = good_rows(per_arm=2, n_items=2)
    rows[2]["correct"] = "yes"   # spreadsheet row 4
    rows[4]["rt_ms"] = "fast"    # row 6
    rows[5]["confidence"] = "9"  # row 7
    words = refusal(to_csv(rows))
    assert "Row 4, column correct: 'yes' is not 0, 1, true or false" in words
    assert "Row 6, column rt_ms: 'fast' is not a number (milliseconds)" in words
    assert "Row 7, column confidence: 9 is outside 1-7 (a rating 1-7, or empty)" in words
    assert "3 problems found" in words


def test_an_unknown_phase_and_an_attention_check_are_refused_with_the_allowed_values():
    rows = good_rows(per_arm=2, n_items=2)
    rows[1]["phase"] = "posttest"
    words = refusal(to_csv(rows))
    assert "Row 3, column phase: 'posttest' is not one of pre_test, post_test, test, practice, learning" in words
    rows = [{**row, "task": "attention_check" if i == 1 else ""} for i, row in enumerate(good_rows(per_arm=2))]
    assert "Row 3, column task: attention checks are not imported" in refusal(to_csv(rows))


def test_a_participant_in_two_conditions_is_refused_because_arms_are_between_participants():
    rows = good_rows(per_arm=2, n_items=2)
    rows[2]["condition"] = "e"  # C-00's second test trial
    words = refusal(to_csv(rows))
    assert "participant 'C-00' is in more than one condition: 'c' (rows 2, 3), 'e' (row 4)" in words
    assert "Conditions are between participants" in words


def test_a_repeated_participant_item_and_phase_is_refused_naming_both_rows():
    rows = good_rows(per_arm=2, n_items=3)
    rows.insert(4, dict(rows[1]))  # C-00, img_0, test again, as row 6
    words = refusal(to_csv(rows))
    assert "Rows 3, 6: participant 'C-00' answers item 'img_0' in phase test more than once" in words


def test_an_empty_file_and_a_header_without_rows_are_refused():
    assert "is empty" in refusal(b"")
    assert "header row but no data rows" in refusal(b"participant,condition,phase,item,correct,rt_ms\n")


def test_too_many_rows_or_columns_are_refused_with_the_limit(monkeypatch):
    data = to_csv(good_rows(per_arm=3, n_items=10))
    monkeypatch.setattr(external_import, "CHUNK_ROWS", 7)  # the limit is found while reading, chunk by chunk
    assert "more than 20 data rows, the most one import takes" in refusal(data, max_rows=20)
    assert "has 11 columns; at most 10 are read" in refusal(data, max_columns=10)


def test_a_file_that_is_not_utf8_is_refused_naming_its_line():
    data = to_csv(good_rows(per_arm=1, n_items=2)).replace(b"img_1", "imgé".encode("latin-1"))
    words = refusal(data)
    assert "is not UTF-8 text: line 4 has the byte 0xe9" in words and "CSV UTF-8" in words


def test_only_the_first_problems_are_listed_then_how_many_more():
    rows = good_rows(per_arm=3, n_items=10)
    for row in rows:
        row["rt_ms"] = "-5"
    words = refusal(to_csv(rows), max_errors=4)
    assert words.count("column rt_ms: -5 is outside 0-86,400,000") == 4
    assert f"... and {len(rows) - 4} more." in words


def test_settings_that_do_not_fit_the_file_are_refused():
    data = to_csv(good_rows(per_arm=1, n_items=2))
    assert "The control condition 'control' is not in the file; its conditions: c, e." in refusal(data, control="control")
    assert "which the file does not have" in refusal(data, arm_names={"x": "other"})
    assert "total_seconds_window cannot be applied" in refusal(data, exclusion_rules={"total_seconds_window": [60, None]})


def test_forward_test_trials_with_different_option_counts_or_none_are_refused():
    rows = good_rows(per_arm=2, n_items=2)
    rows[2]["n_options"] = "4"
    assert "offer different numbers of options (2 on rows 3, 6, 7 and 4 more; 4 on row 4)" in refusal(to_csv(rows))
    rows = [{**row, "n_options": ""} for row in good_rows(per_arm=1, n_items=1)]
    assert "column n_options: is empty" in refusal(to_csv(rows))
    assert import_bytes(to_csv(rows), default_options=3).dataset.class_names == ["option 1", "option 2", "option 3"]


def test_a_failure_while_writing_leaves_nothing_behind(monkeypatch):
    """The answers fail after the study, its participants and the first trials were written."""
    def broken(row):
        raise IntegrityError("the database went away mid-import")

    monkeypatch.setattr(external_import, "_payload_sha256", broken)
    with pytest.raises(IntegrityError):
        import_bytes(to_csv(good_rows(per_arm=2, n_items=2)))
    assert_nothing_stored()


def test_parsing_reads_the_documented_columns_and_lists_the_others():
    parsed = external_file_parse(file=io.BytesIO(b"\xef\xbb\xbf" + to_csv(good_rows(per_arm=1, n_items=1)).replace(
        b"participant,condition", b" Participant ,ARM")), file_name="x.csv")
    assert parsed.ignored == ["browser"] and parsed.likert_items == ["trust"]
    assert list(parsed.rows["condition"]) == ["c", "c", "e", "e"] and parsed.has_response


# ---------------------------------------------------------------- the lifecycle of an imported study


def test_a_plan_that_cannot_run_on_the_imported_data_is_never_frozen():
    study = import_bytes(to_csv(good_rows(per_arm=2, n_items=2)), control="c")
    with pytest.raises(ServiceError) as caught:
        study_freeze_external(study=study)
    assert "Add at least one hypothesis" in " ".join(caught.value.messages)
    arm = study.arms.get(name="e")
    m.Hypothesis.objects.create(study=study, label="H1", statement="Gain", arm=arm, outcome="gain")
    m.Hypothesis.objects.create(study=study, label="H2", statement="Trust", arm=arm, outcome="likert",
                                likert_item="usefulness")
    with pytest.raises(ServiceError) as caught:
        study_freeze_external(study=study)
    words = " ".join(caught.value.messages)
    assert "Hypothesis H1: its outcome is the gain from pre-test to post-test" in words
    assert "Hypothesis H2: its outcome is the Likert item 'usefulness', which the file does not rate" in words
    study.refresh_from_db()
    assert study.state == "draft" and not study.frozen_sha256


def test_an_imported_study_is_never_prepared_launched_duplicated_or_shown_in_the_gallery(client):
    study = import_bytes(to_csv(good_rows(per_arm=1, n_items=1)))
    for service in (study_prepare, study_launch, study_duplicate):
        with pytest.raises(ServiceError, match="holds data collected elsewhere"):
            service(study=study)
    client.force_login(researcher())
    m.Study.objects.filter(pk=study.pk).update(owner=get_user_model().objects.get())
    response = client.get(reverse("admin:studyapp_study_gallery", args=[study.pk]))
    assert response.status_code == 302 and response["Location"].endswith(f"/{study.pk}/change/")
    assert m.Study.objects.filter(source="external").count() == 1


def test_the_database_refuses_a_platform_study_without_a_model_and_an_imported_one_with_a_model():
    study = import_bytes(to_csv(good_rows(per_arm=1, n_items=1)))
    with pytest.raises(IntegrityError), transaction.atomic():
        m.Study.objects.filter(pk=study.pk).update(source="platform")
    with pytest.raises(IntegrityError), transaction.atomic():
        m.Study.objects.filter(pk=study.pk).update(model=MLModelFactory())


@pytest.mark.parametrize("frozen", [False, True], ids=["draft", "frozen and analysed"])
def test_every_staff_page_of_an_imported_study_opens_without_a_server_error(frozen):
    """Each staff URL of the URLconf (the list test_permissions.py checks), opened by a superuser
    on an imported study: pages that read a study's model must not fail on a study without one."""
    from django.test import Client

    from studyapp.services.analysis import study_analyze
    from tests.test_permissions import EXPECTED, url_of

    study = import_bytes(to_csv(good_rows(per_arm=3, n_items=4)), control="c")
    if frozen:
        m.Hypothesis.objects.create(study=study, label="H1", statement="It helps.", arm=study.arms.get(name="e"))
        study = study_freeze_external(study=study)
        study_analyze(study=study)
    participant = m.Participant.objects.filter(study=study).first()
    objects = {"study": study, "participant": participant, "response": m.Response.objects.filter(
        trial__participant=participant).first(), "analysisrun": m.AnalysisRun.objects.filter(study=study).first()
        or m.AnalysisRun.objects.create(study=study, kind="exploratory", number=1),
        "dataset": study.dataset, "stimulus": study.dataset.stimuli.first(), "mlmodel": MLModelFactory()}
    client = Client()
    client.force_login(get_user_model().objects.create_user(username="root", password="pw-123456789",
                                                             is_staff=True, is_superuser=True))
    failed = []
    for route, kind in sorted(EXPECTED.items()):
        model = route.split("/")[2] if route.startswith("admin/studyapp/") else "study"
        if model not in objects and not route.startswith("admin/studyapp/study/"):
            continue  # the lab's other records (not about a study)
        url = url_of(route, objects)
        response = client.post(url, {"seed": 0}) if kind == "post" else client.get(url)
        if response.streaming:
            b"".join(response.streaming_content)
        # Items named only have no picture (404); records only services create have no add page (403).
        expected = (404,) if "image/" in route or "<int:obj>" in route else (403,) if kind == "nobody" else (200, 302)
        if response.status_code not in expected:
            failed.append(f"{url}: {response.status_code}")
    planner = client.get(reverse("report-planner") + f"?study={study.pk}")  # starts from the study's design
    assert not failed and planner.status_code == 200, failed


def test_rows_after_a_blank_line_keep_their_spreadsheet_numbers():
    data = to_csv(good_rows(per_arm=1, n_items=2)).replace(b"\nC-00,c,test,img_0", b"\n\nC-00,c,test,img_0")
    assert "Row 5, column correct: 'maybe'" in refusal(data.replace(b"img_1,0,", b"img_1,maybe,", 1))
    assert m.Trial.objects.filter(participant__study=import_bytes(data)).count() == 6
