"""Analyst exports: tidy CSVs that match the database, a codebook from the same spec, provenance, access."""
from __future__ import annotations

import io
import json
import math
import uuid
from datetime import datetime

import pandas as pd
import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.http import StreamingHttpResponse
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from studyapp.analysis.run_results import RunResults
from studyapp.exports import rows as export_rows
from studyapp.exports import pg_lines, streaming
from studyapp.exports.admin_actions import export_manifest_json, export_responses_csv
from studyapp.exports.columns import EXPORTS, HYPOTHESIS_COLUMNS, RESPONSE_COLUMNS, export_columns, iso_utc
from studyapp.exports.cursors import server_side_rows, timestamptz_as_iso
from studyapp.exports.files import FILES, KINDS
from studyapp.models import Participant, QuestionnaireAnswer, Study
from studyapp.selectors import TRIAL_COLUMNS, trials_long_queryset
from explainers.canonical import canonical_json
from tests.analysis_factories import tamper_with_frozen_plan
from tests.export_factories import EXCLUSION_RULES, exported_study

pytestmark = pytest.mark.django_db

CSV_KINDS = ("responses", "participants", "hypotheses", "codebook")


def _url(study: Study, kind: str) -> str:
    return reverse(f"export-{kind.replace('_', '-')}", kwargs={"pk": study.pk})


def _download(client, study: Study, kind: str) -> str:
    response = client.get(_url(study, kind))
    assert response.status_code == 200, response
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return body.decode("utf-8")


def _frame(client, study: Study, kind: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(_download(client, study, kind)))


def _norm(value):
    """One comparable spelling for a DB value and its CSV round trip."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (datetime, pd.Timestamp)):
        return pd.Timestamp(value).tz_convert("UTC")
    if isinstance(value, uuid.UUID):
        return str(value)
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _typed(frame: pd.DataFrame, columns) -> pd.DataFrame:
    """Parse the datetime columns the codebook declares (pandas leaves them as text)."""
    frame = frame.copy()
    for column in columns:
        if column.type == "datetime":
            frame[column.name] = pd.to_datetime(frame[column.name], utc=True, format="ISO8601")
    return frame


def test_responses_csv_round_trips_through_pandas_and_matches_the_database_row_for_row(staff_client):
    data = exported_study()
    frame = _typed(_frame(staff_client, data.study, "responses"), RESPONSE_COLUMNS)

    assert list(frame.columns) == [c.name for c in RESPONSE_COLUMNS]
    database = list(trials_long_queryset(study=data.study))
    assert len(frame) == len(database) == len(data.participants) * 6
    exported = [tuple(_norm(v) for v in row) for row in frame[list(TRIAL_COLUMNS)].itertuples(index=False)]
    assert exported == [tuple(_norm(v) for v in row) for row in database]
    # Tidy values: 0/1 booleans, empty = missing, UTC timestamps.
    assert set(frame["correct"].dropna().unique()) <= {0, 1}
    assert set(frame["show_explanation"].unique()) == {0, 1}
    unanswered = frame[frame["response"].isna()]
    assert len(unanswered) == 1 and unanswered["received_at"].isna().all()
    assert str(frame["received_at"].dt.tz) == "UTC"
    assert frame["attention_check"].tolist() == [int(t == "attention_check") for t in frame["task"]]


def test_raw_csv_writes_booleans_as_digits_and_timestamps_as_iso_utc(staff_client):
    data = exported_study()
    lines = _download(staff_client, data.study, "responses").splitlines()
    header, first = lines[0].split(","), dict(zip(lines[0].split(","), lines[1].split(",")))
    assert header[: len(TRIAL_COLUMNS)] == list(TRIAL_COLUMNS)
    assert first["show_model_output"] == "0" and first["correct"] in {"0", "1"}
    assert first["received_at"] == "2025-03-01T09:00:01.123456Z"
    assert first["confidence"] == "5" and "True" not in lines[1] and "None" not in lines[1]


@pytest.mark.postgres  # server-side cursors are a PostgreSQL feature (CI fails rather than skips)
def test_the_response_export_is_a_streaming_response_fed_lazily_by_a_server_side_cursor(staff_client, monkeypatch):
    data = exported_study()
    monkeypatch.setattr(export_rows, "CHUNK_SIZE", 2)
    monkeypatch.setattr(streaming, "BLOCK_ROWS", 1)
    monkeypatch.setattr(pg_lines, "FETCH_ROWS", 2)

    with CaptureQueriesContext(connection) as before_streaming:
        response = staff_client.get(_url(data.study, "responses"))
        assert isinstance(response, StreamingHttpResponse) and response.streaming
        content = iter(response.streaming_content)
        header = next(content)
    assert header.startswith(b"study,participant,")
    # The long-format query has not run yet: rows are read only as the client consumes them.
    assert not [q for q in before_streaming.captured_queries if '"model_output"' in q["sql"]]

    with CaptureQueriesContext(connection) as first_block:
        first_row = next(content)
    assert [q for q in first_block.captured_queries if '"model_output"' in q["sql"]]
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM pg_cursors WHERE name LIKE '_django_curs_%%'")
        open_cursors = cursor.fetchall()
    assert len(open_cursors) == 1  # rows come from a named (server-side) cursor, 2 at a time
    rest = b"".join(content)
    assert len((first_row + rest).splitlines()) == len(data.participants) * 6
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_cursors WHERE name LIKE '_django_curs_%%'")
        assert cursor.fetchone()[0] == 0  # closed once exhausted


def test_the_fast_cursor_gives_the_same_rows_as_the_orm_iterator_in_the_same_order():
    data = exported_study()
    queryset = trials_long_queryset(study=data.study)
    fast = list(server_side_rows(queryset, chunk_size=4))
    slow = list(queryset.iterator(chunk_size=4))
    assert len(fast) == len(slow) == len(data.participants) * 6
    def text(row):  # what the writer makes of either spelling
        return [iso_utc(v) if isinstance(v, datetime) else str(v) if isinstance(v, uuid.UUID) else v for v in row]

    assert [text(row) for row in fast] == [text(row) for row in slow]
    if connection.vendor == "postgresql":  # the fast path hands uuids and timestamps over as text
        assert isinstance(fast[0][TRIAL_COLUMNS.index("participant")], str)
        assert fast[0][TRIAL_COLUMNS.index("received_at")].endswith("Z")


@pytest.mark.parametrize("text, iso", [
    ("2025-03-01 09:00:01.123456+00", "2025-03-01T09:00:01.123456Z"),
    ("2025-03-01 09:00:01.12+00", "2025-03-01T09:00:01.120000Z"),
    ("2025-03-01 09:00:01+00", "2025-03-01T09:00:01.000000Z"),
    ("2025-03-01 11:00:01.5+02", "2025-03-01T09:00:01.500000Z"),
    (None, None),
])
def test_postgres_timestamps_become_iso_utc_text_without_datetime_objects(text, iso):
    assert timestamptz_as_iso(text) == iso


def test_every_exported_column_is_described_in_the_codebook(staff_client):
    data = exported_study()
    codebook = _frame(staff_client, data.study, "codebook").fillna("")
    described = {(f, c) for f, c in zip(codebook["file"], codebook["column"])}
    for kind in CSV_KINDS:
        header = _download(staff_client, data.study, kind).splitlines()[0].split(",")
        assert header == codebook.loc[codebook["file"] == FILES[kind], "column"].tolist()
        assert {(FILES[kind], name) for name in header} <= described
    manifest = json.loads(_download(staff_client, data.study, "manifest"))
    assert {("manifest.json", key) for key in manifest} <= described
    assert (codebook["meaning"] != "").all() and (codebook["type"] != "").all()
    # Categorical columns list their allowed values, and the exported values are among them.
    responses = _frame(staff_client, data.study, "responses")
    allowed = dict(zip(codebook["column"], codebook["allowed_values"]))
    assert set(responses["task"]) <= set(allowed["task"].split("|"))
    # The JSON and HTML renderings come from the same spec.
    document = json.loads(_download(staff_client, data.study, "codebook_json"))
    assert [len(f["columns"]) for f in document["files"]] == [
        len(cols) for cols in export_columns(study=data.study).values()]
    assert "likert_trust_in_model" in _download(staff_client, data.study, "codebook_html")


def test_participants_csv_has_one_row_per_participant_with_phase_accuracy_and_likert_columns(staff_client):
    data = exported_study()
    frame = _typed(_frame(staff_client, data.study, "participants"),
                   export_columns(study=data.study)["participants.csv"])
    assert len(frame) == len(data.participants) and frame["participant"].tolist() == [str(p.public_id) for p in data.participants]
    first = frame.iloc[0]
    # Participant 0: pre-test 2 scored (position 0 wrong, 1 right), post-test 2 scored (5 unanswered).
    assert (first["n_pre_test"], first["accuracy_pre_test"]) == (2, 0.5)
    assert (first["n_post_test"], first["accuracy_post_test"]) == (2, 0.5)
    assert first["gain"] == 0.0 and math.isnan(first["accuracy_learning"])
    assert (first["n_trials"], first["n_answered"], first["n_attention_checks"]) == (6, 5, 1)
    assert first["started_at"] == pd.Timestamp(data.participants[0].started_at)
    assert first["duration_s"] == 20 * 60
    likert = {(str(a.participant.public_id), a.item): a.value
              for a in QuestionnaireAnswer.objects.select_related("participant")}
    for row in frame.itertuples():
        assert row.likert_useful == likert[(row.participant, "useful")]
        expected = likert.get((row.participant, "Trust in model"))
        if expected is None:
            assert math.isnan(row.likert_trust_in_model)
        else:
            assert row.likert_trust_in_model == expected
    assert set(frame["arm"]) == {"control", "saliency"} and set(frame["status"]) == {"completed"}


def test_a_prolific_id_is_never_exported(staff_client):
    data = exported_study()
    Participant.objects.filter(pk=data.participants[0].pk).update(source="prolific", external_id="5f1e0c2bprolific")
    text = _download(staff_client, data.study, "participants")
    assert "5f1e0c2bprolific" not in text
    assert _frame(staff_client, data.study, "participants")["source_id"].isna().all()


def test_exclusion_flags_mark_the_participant_who_failed_the_attention_check(staff_client):
    data = exported_study()
    assert data.study.frozen_config["study"]["config"]["exclusion_rules"] == EXCLUSION_RULES
    participants = _frame(staff_client, data.study, "participants").set_index("participant")
    bad = str(data.inattentive.public_id)
    assert participants.loc[bad, "exclusion_rules"] == "max_failed_attention_checks"
    assert participants["excluded"].to_dict() == {str(p.public_id): int(p == data.inattentive)
                                                  for p in data.participants}
    assert participants.drop(index=bad)["exclusion_rules"].isna().all()
    responses = _frame(staff_client, data.study, "responses")
    assert responses.groupby("participant")["excluded"].agg(["min", "max"]).to_dict("index") == {
        str(p.public_id): {"min": int(p == data.inattentive), "max": int(p == data.inattentive)}
        for p in data.participants}
    assert set(responses.loc[responses["participant"] == bad, "exclusion_rules"]) == {"max_failed_attention_checks"}


def test_hypotheses_csv_carries_the_analysis_results_labelled_confirmatory_or_exploratory(staff_client):
    data = exported_study(with_run=True)
    frame = _frame(staff_client, data.study, "hypotheses").set_index("label")
    assert frame.index.tolist() == ["H1", "E1"]
    h1, e1 = frame.loc["H1"], frame.loc["E1"]
    assert (h1["analysis"], h1["preregistered"], h1["plan_matches"], h1["analysis_run"], h1["analysis_seed"]) == (
        "confirmatory", 1, 1, data.run.pk, 11)
    assert (h1["arm"], h1["comparator"], h1["outcome"]) == ("saliency", "control", "gain")
    stored = RunResults.from_dict(data.run.results).hypotheses[0]
    assert not stored.error, stored.error
    assert h1["p_value"] == pytest.approx(stored.p_value) and h1["p_adjusted"] == pytest.approx(stored.p_adjusted)
    assert h1["statistic"] == pytest.approx(stored.test_result("difference").statistic)
    assert h1["effect_estimate"] == pytest.approx(stored.test_result("difference").effect.estimate)
    assert h1["decision"] == stored.decision.verdict
    # The inattentive control participant is excluded: 2 analysed per arm.
    assert (h1["n_arm"], h1["n_comparator"]) == (3, 2)
    assert (e1["analysis"], e1["analysis_run"], e1["analysis_run_kind"], e1["outcome"]) == (
        "exploratory", data.exploratory.pk, "exploratory", "likert")
    assert e1["preregistered"] == 0 and e1["p_value"] == pytest.approx(
        RunResults.from_dict(data.exploratory.results).hypotheses[0].p_value)


def test_hypotheses_of_a_study_never_analysed_are_exported_without_results(staff_client):
    data = exported_study(launch=False, with_run=False)
    frame = _frame(staff_client, data.study, "hypotheses")
    assert frame["label"].tolist() == ["H1"]
    assert frame.loc[0, "preregistered"] == 0 and frame.loc[0, "analysis"] == "exploratory"
    assert frame[["analysis_run", "p_value", "decision"]].isna().all().all()
    assert frame.loc[0, "comparator"] == "control"  # "the control arm when empty", resolved


def test_manifest_hashes_seeds_and_plan_equal_the_database(staff_client):
    data = exported_study(with_run=True)
    study = Study.objects.select_related("model", "dataset").get(pk=data.study.pk)
    manifest = json.loads(_download(staff_client, study, "manifest"))

    assert manifest["models"][0]["weights_sha256"] == study.model.weights_sha256
    assert manifest["dataset"]["content_sha256"] == study.dataset.content_sha256
    assert manifest["dataset"]["split_info"] == study.dataset.split_info
    prereg = manifest["preregistration"]
    assert prereg["frozen_sha256"] == study.frozen_sha256 and prereg["frozen_sha256_verified"] is True
    assert pd.Timestamp(prereg["launched_at"]) == pd.Timestamp(study.launched_at)
    assert prereg["frozen_config"] == json.loads(canonical_json(study.frozen_config))
    arms = {a["name"]: a for a in manifest["arms"]}
    assert arms["saliency"]["method_config"] == {"abs": False}
    assert arms["saliency"]["explanations"]["configs"] == [
        {"config_sha256": "c" * 64, "count": study.dataset.stimuli.count(), "config": {"method": "saliency", "abs": False}}]
    assert arms["saliency"]["explanations"]["seeds"] == [7] and arms["control"]["explanations"]["count"] == 0
    assert manifest["stimuli"]["seed"] == 7 and manifest["stimuli"]["dataset_indices"] == sorted(
        study.dataset.stimuli.order_by("index").values_list("index", flat=True)[:4])
    assert set(manifest["software"]) >= {"python", "django", "torch", "captum", "numpy", "scipy", "statsmodels",
                                         "pandas"}
    assert manifest["software"]["django"] and manifest["software"]["pandas"] == pd.__version__
    assert [d["reason"] for d in manifest["deviations"]] == ["Pilot only."]
    assert [(r["id"], r["kind"], r["number"], r["plan_matches"]) for r in manifest["analysis_runs"]] == [
        (data.run.pk, "confirmatory", 1, True), (data.exploratory.pk, "exploratory", 1, True)]
    assert manifest["exclusions"] == {"evaluated": True, "rules": EXCLUSION_RULES, "n_participants": 6,
                                      "n_excluded": 1, "per_rule": {"max_failed_attention_checks": 1}}
    assert manifest["exported_at"].endswith("Z")


def test_a_tampered_frozen_plan_is_reported_as_unverified(staff_client):
    data = exported_study(with_run=False)
    tamper_with_frozen_plan(data.study, dict(data.study.frozen_config, hypotheses=[]))
    manifest = json.loads(_download(staff_client, data.study, "manifest"))
    assert manifest["preregistration"]["frozen_sha256_verified"] is False


def test_file_names_carry_the_study_slug_and_never_arm_or_class_labels(staff_client):
    data = exported_study(with_run=False)
    for kind in KINDS:
        if kind == "codebook_html":
            continue  # rendered inline
        disposition = staff_client.get(_url(data.study, kind))["Content-Disposition"]
        assert disposition == f'attachment; filename="{data.study.slug}_{FILES[kind]}"'
        for label in ["control", "saliency", *data.study.model.class_names]:
            assert label not in disposition


def test_anonymous_and_non_staff_users_are_refused_every_export(client):
    data = exported_study(with_run=False)
    urls = [_url(data.study, kind) for kind in KINDS]
    api = [reverse("export-api-studies")] + [
        reverse("export-api-file", kwargs={"pk": data.study.pk, "kind": kind}) for kind in KINDS]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    for url in api:
        assert client.get(url).status_code == 403
    user = get_user_model().objects.create_user(username="participant", password="pw-123456789")
    client.force_login(user)
    for url in urls:
        assert client.get(url).status_code == 302
    for url in api:
        assert client.get(url).status_code == 403


def test_the_api_lists_studies_with_export_links_and_serves_each_kind(staff_client):
    data = exported_study(with_run=False)
    listing = staff_client.get(reverse("export-api-studies")).json()
    entry = next(s for s in listing if s["id"] == data.study.pk)
    assert entry["slug"] == data.study.slug and entry["n_participants"] == len(data.participants)
    assert entry["frozen_sha256"] == data.study.frozen_sha256
    assert set(entry["exports"]) == set(KINDS)
    csv_response = staff_client.get(entry["exports"]["responses"], HTTP_ACCEPT="text/csv")
    assert csv_response.status_code == 200 and csv_response.streaming
    assert b"".join(csv_response.streaming_content).decode() == _download(staff_client, data.study, "responses")
    manifest = staff_client.get(entry["exports"]["manifest"]).json()
    assert manifest["study"]["slug"] == data.study.slug
    assert staff_client.get(reverse("export-api-file", kwargs={"pk": data.study.pk, "kind": "nope"})).status_code == 404
    assert staff_client.get(reverse("export-api-file", kwargs={"pk": 10**9, "kind": "manifest"})).status_code == 404


def test_the_api_is_documented_in_the_openapi_schema():
    from drf_spectacular.generators import SchemaGenerator

    from studyapp.exports import urls

    schema = SchemaGenerator(patterns=urls.urlpatterns).get_schema(request=None, public=True)
    operation = schema["paths"]["/api/studies/{id}/exports/{kind}/"]["get"]
    kind = next(p for p in operation["parameters"] if p["name"] == "kind")
    assert sorted(kind["schema"]["enum"]) == sorted(KINDS)
    assert {"text/csv", "application/json"} <= set(operation["responses"]["200"]["content"])
    assert "/api/studies/" in schema["paths"]


def test_admin_actions_export_exactly_one_selected_study(rf):
    data = exported_study(with_run=False)
    other = exported_study(with_run=False)

    class FakeAdmin:
        messages: list[str] = []

        def message_user(self, request, message, level=None):
            self.messages.append(message)

    admin = FakeAdmin()
    response = export_responses_csv(admin, rf.get("/"), Study.objects.filter(pk=data.study.pk))
    assert isinstance(response, StreamingHttpResponse)
    assert data.study.slug in response["Content-Disposition"]
    assert len(b"".join(response.streaming_content).splitlines()) == 1 + len(data.participants) * 6
    assert export_manifest_json(admin, rf.get("/"), Study.objects.filter(pk__in=[data.study.pk, other.study.pk])) is None
    assert admin.messages == ["Select exactly one study to export."]


def test_a_study_without_participants_exports_header_only_files(staff_client):
    data = exported_study(with_run=False)
    empty = Study.objects.create(title="Empty", slug="empty-study", model=data.study.model,
                                 dataset=data.study.dataset)
    for kind in ("responses", "participants"):
        text = _download(staff_client, empty, kind)
        assert len(text.splitlines()) == 1
    assert Participant.objects.filter(study=empty).count() == 0


@pytest.mark.postgres
def test_postgres_formats_exactly_the_bytes_the_python_writer_writes():
    data = exported_study()
    # Text that needs CSV quoting: a comma, a double quote and a line break in an arm name.
    arm = data.study.arms.order_by("position").last()
    type(arm).objects.filter(pk=arm.pk).update(name='placebo, "fake"\nmap')
    flags = export_rows.exclusion_flags(study=data.study)
    assert flags and any(excluded for _, excluded in flags.values())
    python = "".join(streaming.csv_lines(columns=RESPONSE_COLUMNS, rows=export_rows.response_rows(study=data.study)))
    postgres = streaming.csv_header(RESPONSE_COLUMNS) + "".join(
        pg_lines.response_lines(study=data.study, flags=flags))
    assert '"placebo, ""fake""\nmap"' in postgres
    assert postgres == python
    # Exclusions not evaluated: both cells empty, as in the Python path.
    assert all(line.endswith(",,") for line in
               "".join(pg_lines.response_lines(study=data.study, flags=None)).splitlines() if line.count(",") > 5)


def test_every_download_kind_comes_from_the_one_list_of_exports():
    assert list(FILES) == ["responses", "participants", "hypotheses", "items", "codebook", "codebook_json",
                           "codebook_html", "manifest"]
    assert [FILES[kind] for kind in EXPORTS] == [spec.suffix for spec in EXPORTS.values()]


def test_a_hypotheses_row_and_its_columns_cannot_disagree():
    names = [c.name for c in HYPOTHESIS_COLUMNS]
    assert export_rows._row(dict(zip(names, range(len(names))))) == tuple(range(len(names)))
    with pytest.raises(KeyError, match="differ"):
        export_rows._row({name: None for name in names[1:]})
