"""Loading the long format fast: COPY on PostgreSQL and a cursor anywhere give the same frame, and
the exports stream their first rows without first computing, copying or sorting every row."""
from __future__ import annotations

import io
import json
import math
import re
import uuid
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from django.db import DataError, connection, transaction

from studyapp import analysis as stats
from studyapp.exports import rows as export_rows
from studyapp.exports import pg_lines, streaming
from studyapp.exports.cursors import streaming_plan, streaming_transaction
from studyapp.exports.files import export_response
from studyapp.models import Edit, ModelOutput, Participant, Response
from studyapp.selectors import ANALYSIS_COLUMNS, TRIAL_COLUMNS, trials_long_frame, trials_long_queryset
from studyapp.selectors import frames
from studyapp.services.analysis import study_analyze
from tests.analysis_factories import launch, study_with_items, write_simulated_trials
from tests.export_factories import exported_study
from tests.factories import HypothesisFactory, ParticipantFactory, StimulusFactory, TrialFactory, npy_bytes

pytestmark = pytest.mark.django_db

DTYPES = {"int": "int64", "Int64": "Int64", "bool": "bool", "boolean": "boolean", "str": "str",
          "uuid": "object", "datetime": "datetime64[us, UTC]"}
# Devices as browsers might report them: a comma and quotes (CSV quoting), COPY's own null
# marker as text, and an empty string (not missing).
DEVICES = ['tablet, "new"', "\\N", "", "phone"]
COLUMN_SETS = [TRIAL_COLUMNS, ANALYSIS_COLUMNS, ("device", "arm", "received_at")]


def methods() -> list[str]:
    return list(frames.METHODS) if frames.copy_available() else ["cursor"]


def varied_study():
    """The export study plus what a loader can get wrong: a counterfactual trial on an edit, a
    stimulus the model has no output for, an answer without a verdict or confidence, awkward device
    texts, a timestamp without microseconds, a simulated participant and a preview (never read)."""
    data = exported_study(launch=False)
    study = data.study
    stimulus = study.dataset.stimuli.order_by("index").first()
    edit = Edit.objects.create(stimulus=stimulus, settings_sha256="0" * 64, position=2, kind="feature_quantile",
                               data=npy_bytes([0, 0, 0]))
    ModelOutput.objects.create(model=study.model, edit=edit, predicted=0, probabilities=[0.9, 0.1])
    participant = data.participants[3]
    counterfactual = TrialFactory(participant=participant, position=6, phase="post_test",
                                  task="counterfactual_predict", stimulus=stimulus, edit=edit, expected_answer=0,
                                  n_options=2)
    Response.objects.create(trial=counterfactual, idempotency_key=uuid.uuid4(), payload_sha256="b" * 64, answer=1,
                            correct=None, confidence=None, client_rt_ms=900)
    no_output = StimulusFactory(dataset=study.dataset, split="test")
    TrialFactory(participant=participant, position=7, stimulus=no_output)
    responses = list(Response.objects.filter(trial__participant__study=study).order_by("pk"))
    for response, device in zip(responses, DEVICES):
        Response.objects.filter(pk=response.pk).update(client={"device": device})
    Response.objects.filter(pk=responses[-1].pk).update(received_at=datetime(2025, 3, 2, 8, 0, 0, tzinfo=UTC))
    simulated = ParticipantFactory(arm=data.control, study=study, simulated=True)
    TrialFactory(participant=simulated, position=0, stimulus=stimulus)
    preview = ParticipantFactory(arm=data.control, study=study, preview=True)
    TrialFactory(participant=preview, position=0, stimulus=stimulus)
    return data


def _same(value, expected) -> bool:
    """A frame cell against the ORM's value for it (missing is NA, NaN, NaT or None)."""
    if expected is None:
        return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value))
    if value is None or value is pd.NA or value is pd.NaT:
        return False
    if isinstance(expected, datetime):
        return pd.Timestamp(value) == pd.Timestamp(expected)
    return bool(value == expected)


@pytest.mark.postgres
def test_copy_and_cursor_give_identical_frames_column_for_column_and_row_for_row():
    study = varied_study().study
    for columns in COLUMN_SETS:
        for answered_only in (True, False):
            for uuid_text, categorical in ((False, False), (True, False), (True, True)):
                by_copy = trials_long_frame(study=study, columns=columns, answered_only=answered_only,
                                            uuid_text=uuid_text, categorical=categorical, method="copy")
                by_cursor = trials_long_frame(study=study, columns=columns, answered_only=answered_only,
                                              uuid_text=uuid_text, categorical=categorical, method="cursor")
                pd.testing.assert_frame_equal(by_copy, by_cursor, check_exact=True)
                if categorical:  # the same values as text columns, only typed as categoricals
                    text = trials_long_frame(study=study, columns=columns, answered_only=answered_only,
                                             uuid_text=True, method="copy")
                    texts = [c for c in columns if text[c].dtype == "str"]
                    assert texts and all(isinstance(by_copy[c].dtype, pd.CategoricalDtype) for c in texts)
                    pd.testing.assert_frame_equal(by_copy.astype(text.dtypes.to_dict()), text, check_exact=True)
                assert len(by_copy) == len(list(trials_long_queryset(study=study, answered_only=answered_only)))


@pytest.mark.parametrize("method", methods())
def test_an_integer_query_reads_into_the_same_matrix_in_its_order_by_either_reader(method):
    from studyapp.models import Trial

    study = varied_study().study
    queryset = (Trial.objects.filter(participant__study=study).order_by("participant_id", "-position")
                .values_list("participant_id", "position", "stimulus_id"))
    matrix = frames.int_matrix(queryset, width=3, method=method)
    assert matrix.dtype == "int64" and matrix.tolist() == [list(row) for row in queryset]
    assert frames.int_matrix(queryset.none(), width=3, method=method).shape == (0, 3)


@pytest.mark.parametrize("method", methods())
def test_the_frame_holds_the_database_values_in_the_dtypes_its_columns_declare(method):
    study = varied_study().study
    frame = trials_long_frame(study=study, answered_only=False, method=method)
    expected = list(trials_long_queryset(study=study, answered_only=False))

    assert list(frame.columns) == list(TRIAL_COLUMNS)
    assert {c: str(frame[c].dtype) for c in frame} == {c: DTYPES[frames.COLUMN_KINDS[c]] for c in TRIAL_COLUMNS}
    assert len(frame) == len(expected) == 6 * 6 + 2 + 1  # six planned each, two more, the simulated one
    for row, values in zip(frame.itertuples(index=False), expected):
        mismatched = [c for c, v, e in zip(TRIAL_COLUMNS, row, values) if not _same(v, e)]
        assert not mismatched, (mismatched, row, values)
    # Text survives exactly: quoting, the null marker as text, and '' apart from missing.
    assert set(DEVICES) <= set(frame["device"].dropna())
    assert frame["device"].isna().sum() == len(frame) - len(DEVICES)
    assert isinstance(frame["participant"].iloc[0], uuid.UUID)


@pytest.mark.parametrize("method", methods())
def test_a_column_keeps_its_dtype_when_nothing_is_missing_and_when_there_are_no_rows(method):
    study = study_with_items()
    empty = trials_long_frame(study=study, method=method)
    assert len(empty) == 0 and list(empty.columns) == list(TRIAL_COLUMNS)
    assert {c: str(empty[c].dtype) for c in empty} == {c: DTYPES[frames.COLUMN_KINDS[c]] for c in TRIAL_COLUMNS}
    waiting = ParticipantFactory(arm=study.arms.get(name="control"), study=study)
    TrialFactory(participant=waiting, position=0, stimulus=study.dataset.stimuli.first())
    unanswered = trials_long_frame(study=study, answered_only=False, method=method)
    assert {c: str(unanswered[c].dtype) for c in unanswered} == {c: DTYPES[frames.COLUMN_KINDS[c]]
                                                                  for c in TRIAL_COLUMNS}
    assert unanswered["idempotency_key"].tolist() == [None] and unanswered["device"].isna().all()
    waiting.delete()

    trials = stats.simulate_study(arm_accuracy={"control": 0.6, "explained": 0.8}, n_per_arm=2,
                                  trials_per_phase=3, seed=0)
    write_simulated_trials(study, trials)
    full = trials_long_frame(study=study, columns=ANALYSIS_COLUMNS, method=method, uuid_text=True)
    assert full["confidence"].isna().all() and full["response"].notna().all()
    assert str(full["response"].dtype) == "Int64" and str(full["correct"].dtype) == "boolean"
    assert str(full["participant"].dtype) == "str" and full["participant"].map(uuid.UUID).notna().all()


def test_the_copy_reader_is_refused_where_postgres_cannot_copy(monkeypatch):
    study = study_with_items()
    monkeypatch.setattr(frames, "copy_available", lambda **_: False)
    with pytest.raises(ValueError, match="COPY reader needs PostgreSQL"):
        trials_long_frame(study=study, method="copy")
    assert len(trials_long_frame(study=study)) == 0  # the default falls back to the cursor
    with pytest.raises(ValueError, match="unknown long-format columns"):
        trials_long_frame(study=study, columns=("participant", "shoe_size"))


@pytest.mark.postgres
def test_the_analysis_gives_the_same_results_whichever_reader_loaded_the_trials(monkeypatch):
    study = study_with_items(arms=("control", "explained", "placebo"))
    for label, arm in (("H1", "explained"), ("H2", "placebo")):
        HypothesisFactory(study=study, arm=study.arms.get(name=arm), label=label, outcome="gain")
    HypothesisFactory(study=study, arm=study.arms.get(name="explained"), label="H3", outcome="gain",
                      test="permutation", family="secondary")
    study = launch(study)
    trials = stats.simulate_study(arm_accuracy={"control": 0.6, "explained": 0.8, "placebo": 0.6}, n_per_arm=8,
                                  trials_per_phase=6, seed=3)
    write_simulated_trials(study, trials)

    by_copy = study_analyze(study=study, seed=5).results
    monkeypatch.setattr(frames, "copy_available", lambda **_: False)
    by_cursor = study_analyze(study=study, seed=5).results

    def comparable(results: dict) -> str:
        return json.dumps({k: v for k, v in results.items() if k != "created_at"}, sort_keys=True)

    assert by_copy["analysed_participants"] == 24
    assert comparable(by_copy) == comparable(by_cursor)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["responses", "participants"])
def test_exports_stream_from_cursors_that_postgres_does_not_copy_before_the_first_fetch(kind, monkeypatch):
    # Outside a transaction (as in a real request) Django would declare the cursor WITH HOLD, and
    # PostgreSQL would compute and store every row before handing over the first.
    study = exported_study().study
    monkeypatch.setattr(pg_lines, "FETCH_ROWS", 2)
    monkeypatch.setattr(export_rows, "PARTICIPANT_FETCH", 2)
    monkeypatch.setattr(streaming, "FIRST_BLOCK_ROWS", 1)
    assert connection.get_autocommit()
    response = export_response(study=study, kind=kind)
    content = iter(response.streaming_content)
    next(content)  # the header
    next(content)  # the first rows
    with connection.cursor() as cursor:
        cursor.execute("SELECT is_holdable FROM pg_cursors WHERE name LIKE '_django_curs_%%'")
        assert cursor.fetchall() == [(False,)]
    rest = b"".join(content)
    response.close()
    assert rest.count(b"\n") > 0 and connection.get_autocommit()  # the transaction ended with the stream


@pytest.mark.postgres
def test_export_queries_are_planned_without_sorting_every_row_and_the_setting_is_restored():
    study = exported_study().study
    sql, params = trials_long_queryset(study=study, answered_only=False).query.sql_with_params()
    with streaming_transaction(), connection.cursor() as cursor:
        with streaming_plan():
            cursor.execute("EXPLAIN " + sql, params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("SHOW enable_sort")
        after = cursor.fetchone()[0]
    # Ordered by participant straight from a trial index: no Sort node gathers every row first (an
    # Incremental Sort orders one participant's trials at a time, and streams).
    assert not re.search(r"^\s*(->\s+)?Sort\s+\(", plan, flags=re.MULTILINE), plan
    assert "Index Scan using" in plan and "studyapp_trial" in plan
    assert after == "on"


@pytest.mark.postgres
def test_the_participants_export_looks_up_each_participants_first_device_once(monkeypatch):
    data = exported_study()
    devices = {"phone": data.participants[0], "tablet": data.participants[4]}
    for device, participant in devices.items():
        Response.objects.filter(trial__participant=participant).update(client={"device": device})
    frame = pd.read_csv(io.StringIO(
        b"".join(export_response(study=data.study, kind="participants").streaming_content).decode()))
    by_id = dict(zip(frame["participant"], frame["device"]))
    assert by_id[str(devices["phone"].public_id)] == "phone" and by_id[str(devices["tablet"].public_id)] == "tablet"
    captured = {}
    monkeypatch.setattr(export_rows, "streamed", lambda queryset, **_: captured.setdefault("q", queryset) and [])
    list(export_rows.participant_rows(study=data.study))
    sql, params = captured["q"].query.sql_with_params()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)
        plan = cursor.fetchone()[0]

    def subplan_loops(node: dict) -> list[int]:
        found = [node["Actual Loops"]] if node.get("Parent Relationship") == "SubPlan" else []
        return found + [n for child in node.get("Plans", []) for n in subplan_loops(child)]

    participants = Participant.objects.filter(study=data.study).count()
    assert subplan_loops(plan[0]["Plan"]) == [participants]  # once per participant, not per trial


@pytest.mark.postgres
def test_the_copy_reader_reads_an_external_study_without_a_model_as_the_cursor_does():
    from tests.test_external_import import good_rows, import_bytes, to_csv

    study = import_bytes(to_csv(good_rows()))
    assert study.model_id is None
    by_copy = trials_long_frame(study=study, columns=TRIAL_COLUMNS, method="copy")
    by_cursor = trials_long_frame(study=study, columns=TRIAL_COLUMNS, method="cursor")
    pd.testing.assert_frame_equal(by_copy, by_cursor, check_exact=True)
    assert len(by_copy) and by_copy["model_output"].isna().all()


@pytest.mark.parametrize("spread", [1, 1_000_000])
def test_positions_in_finds_each_key_or_minus_one_by_table_or_by_search(spread):
    lookup = [k * spread for k in (7, 3, 11, 5)]
    keys = np.array([3 * spread, -1, 11 * spread, 4 * spread, 7 * spread, 5 * spread, 3 * spread], dtype=np.int64)
    assert frames.positions_in(lookup, keys).tolist() == [1, -1, 2, -1, 0, 3, 1]
    assert frames.positions_in([], keys).tolist() == [-1] * len(keys)
    assert frames.positions_in(lookup, keys[:0]).tolist() == []


@pytest.mark.postgres
def test_a_copy_that_fails_part_way_raises_its_error_and_leaves_the_connection_usable():
    from studyapp.models import Trial

    study = varied_study().study
    rows = Trial.objects.filter(participant__study=study).order_by("position")
    sql, params = rows.values_list("position").query.sql_with_params()
    # PostgreSQL fails on the fourth row, after it has sent three.
    failing = f"SELECT 1 / (3 - t.rank) FROM (SELECT row_number() OVER () AS rank FROM ({sql}) AS s) AS t"
    with pytest.raises(DataError, match="division by zero"), transaction.atomic():
        frames._copy_csv(failing, params, names=["x"], dtype={"x": "int64"}, using="default")
    # The parser gives up at the first row (text in an integer column) with megabytes still to come:
    # the rest of the COPY is drained, not left half-read on the connection.
    with pytest.raises(ValueError):
        frames._copy_csv("SELECT g::text || 'x' FROM generate_series(1, 300000) AS g", None, names=["x"],
                         dtype={"x": "int64"}, using="default")
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    assert len(trials_long_frame(study=study, method="copy")) == len(trials_long_frame(study=study, method="cursor"))


def test_rows_count_as_sorted_only_when_every_pair_ascends_by_first_then_second_key():
    def check(first, second):
        return frames._sorted(np.array(first), np.array(second))

    assert check([1, 1, 2, 5], [0, 3, 0, 0]) and check([7], [9]) and check([], [])
    assert check([1, 1, 2], [0, 0, 1])  # equal pairs keep their order
    assert not check([1, 1, 2], [3, 0, 1])
    assert not check([2, 1], [0, 5])
