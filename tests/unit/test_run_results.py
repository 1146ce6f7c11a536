"""The typed results of an analysis run read every stored run and write back exactly what they read."""
from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import numpy as np
import pytest

from explainers.canonical import json_safe
from studyapp.analysis.run_results import (Decision, Describe, Effect, HypothesisResult, RunResults, StatRecord,
                                           not_computed)
from studyapp.analysis.software import software_versions

# AnalysisRun.results stored by the analysis service before the results were typed (captured from
# its runs in the test suite): a between-participants plan with secondary analyses and observers,
# an equivalence/gain plan, an exploratory Likert request, a plan with an untestable hypothesis.
STORED = sorted((Path(__file__).parent / "data" / "run_results").glob("*.json"))


def test_there_are_stored_runs_to_read():
    assert len(STORED) >= 3


@pytest.mark.parametrize("path", STORED, ids=lambda p: p.stem)
def test_a_run_stored_by_the_untyped_service_reads_and_writes_back_key_for_key(path):
    stored = json.loads(path.read_text())
    results = RunResults.from_dict(stored)
    assert results.to_dict() == stored
    assert not results.rest and not results.absent  # every key it stored is modelled
    for entry in results.hypotheses:
        assert isinstance(entry, HypothesisResult) and not entry.rest
        assert entry.verdict.verdict in ("supported", "not_supported", "equivalent", "inconclusive")


@pytest.mark.parametrize("path", STORED, ids=lambda p: p.stem)
def test_typed_fields_hold_the_stored_values(path):
    stored = json.loads(path.read_text())
    results = RunResults.from_dict(stored)
    for entry, raw in zip(results.hypotheses, stored["hypotheses"]):
        assert (entry.label, entry.p_value, entry.p_adjusted) == (raw["label"], raw["p_value"], raw["p_adjusted"])
        assert entry.verdict.verdict == raw["decision"]["verdict"]
        if "tests" in raw:
            assert entry.test_result("difference").p_value == raw["tests"]["difference"]["p_value"]
            assert entry.describe(raw["arm"]).n == raw["descriptives"][raw["arm"]]["n"]
    for measure, per_arm in stored["descriptives"].items():
        for arm, described in per_arm.items():
            assert results.descriptives[measure][arm].mean == described.get("mean")


def test_an_older_run_without_keys_reads_with_defaults_and_writes_back_without_them():
    older = {"kind": "confirmatory", "hypotheses": [{"label": "H1", "p_value": 0.01}]}
    results = RunResults.from_dict(older)
    assert results.descriptives == {} and results.participant_flow is None and results.arms == ()
    entry = results.hypotheses[0]
    assert entry.decision is None and entry.verdict == Decision() and entry.test_result("difference") == StatRecord()
    assert entry.describe("control") == Describe()
    assert results.to_dict() == older


def test_a_run_without_any_results_reads_as_nothing_computed():
    for stored in ({}, None, "not an object"):
        results = RunResults.from_dict(stored)
        assert results.hypotheses is None and results.kind is None
        assert results.to_dict() == {}


def test_keys_this_version_does_not_know_are_kept_as_they_are():
    newer = {"kind": "exploratory", "a_newer_section": {"x": [1, 2]},
             "hypotheses": [{"label": "E1", "a_newer_field": [1]}]}
    results = RunResults.from_dict(newer)
    assert results.rest == {"a_newer_section": {"x": [1, 2]}}
    assert results.hypotheses[0].rest == {"a_newer_field": [1]}
    assert results.to_dict() == newer


def test_a_malformed_section_reads_as_missing_instead_of_failing():
    results = RunResults.from_dict({"descriptives": 5, "hypotheses": "H1", "families": ["primary"]})
    assert results.descriptives == {} and results.hypotheses is None and results.families == {}


def test_a_number_among_records_stays_a_number():
    stored = {"label": "H1", "descriptives": {"explained": {"n": 8, "mean": 0.7}, "chance": 0.5},
              "effect_sizes": {"mean": {"name": "mean", "estimate": 0.7}, "difference_from_chance": 0.2}}
    entry = HypothesisResult.from_dict(stored)
    assert entry.describe("explained").n == 8 and entry.descriptives["chance"] == 0.5
    assert entry.describe("chance") == Describe()
    assert entry.effect("mean") == Effect.from_dict({"name": "mean", "estimate": 0.7})
    assert entry.effect("difference_from_chance") is None
    assert entry.to_dict() == stored


def test_a_record_built_in_code_writes_every_field_and_reads_back_equal():
    results = RunResults(kind="exploratory", hypotheses=(HypothesisResult(label="E1", p_value=0.2),),
                         descriptives={"test": {"control": Describe(n=3, mean=0.5)}})
    stored = results.to_dict()
    assert stored["hypotheses"][0]["decision"] is None and stored["descriptives"]["test"]["control"]["status"] == "ok"
    assert set(stored) == {f for f in RunResults.__dataclass_fields__ if f not in ("rest", "absent")}
    assert RunResults.from_dict(json.loads(json.dumps(stored))) == results


def test_a_section_not_computed_reads_with_its_reason():
    result = StatRecord.from_dict(not_computed("fewer than 2 analysed participants", "not_run"))
    assert not result.ok and result.reason == "fewer than 2 analysed participants"
    assert StatRecord.from_dict({"method": "Welch", "p_value": 0.3}).ok  # a test result without a status ran


def test_json_safe_turns_numpy_nan_and_uuids_into_plain_json():
    key = uuid.uuid4()
    value = {1: np.float64(0.5), "n": np.int64(3), "flag": np.bool_(True), "nan": math.nan, "inf": np.inf,
             "array": np.array([[1.0, np.nan]]), "tuple": (np.int32(1),), "id": key}
    assert json_safe(value) == {"1": 0.5, "n": 3, "flag": True, "nan": None, "inf": None, "array": [[1.0, None]],
                                "tuple": [1], "id": str(key)}
    assert json.dumps(json_safe(value), allow_nan=False)


def test_software_versions_name_python_and_each_package_or_say_it_is_missing():
    versions = software_versions(("numpy", "no-such-package-here"), missing=None)
    assert versions["python"] and versions["numpy"] == np.__version__
    assert versions["no-such-package-here"] is None
    assert software_versions(("no-such-package-here",))["no-such-package-here"] == "not installed"


def test_the_results_and_the_statistics_of_a_run_import_nothing_from_django():
    import subprocess
    import sys

    modules = ("run_results", "records", "hypotheses", "families", "outcomes", "flow", "secondary", "observers",
               "software")
    code = (f"import sys, importlib; [importlib.import_module('studyapp.analysis.' + m) for m in {modules!r}]; "
            "assert not any(m == 'django' or m.startswith('django.') for m in sys.modules), "
            "[m for m in sys.modules if m.startswith('django')]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2], timeout=120)
