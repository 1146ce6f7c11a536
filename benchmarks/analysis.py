"""Scale of the analysis and of the streaming CSV export on a simulated study in PostgreSQL.

    .venv/bin/python benchmarks/analysis.py                      # build 10,000 x 100 (1,000,000 responses), measure
    .venv/bin/python benchmarks/analysis.py --reuse              # reuse the study an earlier run built
    .venv/bin/python benchmarks/analysis.py --participants 400   # quick run (40,000 responses)
    .venv/bin/python benchmarks/analysis.py --reuse --baseline 15aeb21   # side by side with that revision

Database: ``DATABASE_URL`` (default ``postgres://postgres@127.0.0.1:5432/studyapp_bench``), created
when missing and migrated. It is disposable: building a study empties it first (``manage.py
flush``), and the script refuses to do that to a database whose name lacks "bench".

What it does and prints:

1. Generates the trials with ``studyapp.analysis.simulate_study`` (4 arms, pre-test and post-test,
   ``--trials`` / 2 items per phase from a sample of 200 stimuli of a 2,000-item dataset) and loads participants, trials and
   responses with ``COPY ... FROM STDIN`` (psycopg2 ``copy_expert``); generation and load times
   are printed separately. The study is launched (frozen plan, one hypothesis per arm vs control)
   and has exclusion rules, so the export computes real exclusion flags.
2. In a fresh child process: ``trials_long_frame`` by COPY and by cursor (the analysis columns and
   every column), checked equal, with rows/s of wall time and of CPU time (this process plus its
   PostgreSQL backend, read from /proc: the figure that does not depend on what else runs).
3. In a fresh child process: the time and peak RSS of ``studyapp.services.analysis.study_analyze``
   (or, if that service is missing, of ``trials_long_frame`` + ``primary_analysis``, and it says so).
   ``--baseline REV`` runs the same child on the source of git revision REV (``git archive``) on
   the same data, for the speed-up; ``--mixed-max-trials N`` sets ANALYSIS_MIXED_MAX_TRIALS for
   both (below the limit the mixed-model fit dominates everything else).
4. The do-it-yourself path a researcher would take instead: download responses.csv, read it with
   pandas, compute each participant's gain and run scipy's Welch t-test with Holm's correction
   (and statsmodels' GEE), timed part by part and compared with the analysis.
5. In a fresh child process per file: the streaming responses and participants exports exactly as
   the download view builds them (``studyapp.exports.files.export_response``), consumed chunk by
   chunk into /dev/null: rows, seconds, rows/s, time to the first row, RSS along the way and the
   peak RSS (``resource.getrusage``; a fresh process so the loader's memory does not count), and
   the exclusion flags alone (computed before the first row, so that a failure is an error).

Goals (issue 13): loading at 500,000 rows/s or more, the analysis at least 3x faster than before
on the same data, the first export row within 2 s; export at over 100,000 rows/s in constant
memory (peak RSS under 300 MB).
"""
from __future__ import annotations

import argparse
import atexit
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
# A child measuring the baseline imports studyapp from another source tree (--baseline).
sys.path.insert(0, os.environ.get("BENCH_SOURCE_ROOT") or str(ROOT))
from benchmarks.common import _proc_stat, verdict  # noqa: E402
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/studyapp_bench"
ARM_ACCURACY = {"control": 0.62, "integrated_gradients": 0.70, "saliency": 0.66, "smoothgrad": 0.62}
N_ITEMS = 200  # stimuli the study samples for its trials ...
N_DATASET = 2_000  # ... from a dataset of this size, with the model's output on every item
EXCLUSION_RULES = {"max_failed_attention_checks": 1, "straightlining_max_run": 15,
                   "total_seconds_window": [120, 7200]}


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak RSS of this process: getrusage's ru_maxrss, or VmHWM after reset_peak_rss()."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm == hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs), so the peak measured
    afterwards belongs to the measured work, not to imports (django.setup() imports torch, via the
    admin, and matplotlib)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


# -- database -----------------------------------------------------------------------------------

def ensure_database(url: str) -> None:
    import psycopg2

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    connection = psycopg2.connect(admin_url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE DATABASE "{name}"')
            print(f"created database {name}")
    connection.close()


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studyapp.settings")
    import django

    django.setup()


# -- building the study -------------------------------------------------------------------------

def _copy(cursor, model, frame) -> None:
    """COPY a DataFrame into the model's table; every column of the table needs a value, or it fails."""
    from django.db import connection

    table = model._meta.db_table
    in_table = {c.name for c in connection.introspection.get_table_description(cursor, table)}
    missing = in_table - set(frame.columns)
    if missing:
        raise SystemExit(f"{table}: no values for columns {sorted(missing)}; update the benchmark loader")
    frame = frame[[c for c in frame.columns if c in in_table]]  # a model field whose migration is pending
    columns = ", ".join(f'"{c}"' for c in frame.columns)
    for start in range(0, len(frame), 200_000):
        buffer = io.StringIO()
        frame.iloc[start:start + 200_000].to_csv(buffer, header=False, index=False)
        buffer.seek(0)
        cursor.copy_expert(f'COPY "{table}" ({columns}) FROM STDIN WITH (FORMAT csv)', buffer)


def _reserve_ids(cursor, model, n: int) -> int:
    """First of n consecutive ids taken from the table's sequence (the rows are COPYed with them)."""
    cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [model._meta.db_table])
    sequence = cursor.fetchone()[0]
    cursor.execute("SELECT nextval(%s)", [sequence])
    first = cursor.fetchone()[0]
    cursor.execute("SELECT setval(%s, %s)", [sequence, first + n - 1])
    return first


def _hex_ids(n: int) -> list[str]:
    """n random 128-bit ids as 32 hex digits (PostgreSQL's uuid type accepts them undashed)."""
    digits = os.urandom(16 * n).hex()
    return [digits[i:i + 32] for i in range(0, 32 * n, 32)]


def _arm_sizes(participants: int) -> dict[str, int]:
    base, extra = divmod(participants, len(ARM_ACCURACY))
    return {arm: base + (i < extra) for i, arm in enumerate(ARM_ACCURACY)}


def build_study(*, slug: str, participants: int, trials: int, seed: int):
    import hashlib

    import numpy as np
    import pandas as pd
    from django.core.files.base import ContentFile
    from django.db import connection, transaction

    from studyapp import models as m
    from studyapp.analysis import simulate_study
    from studyapp.services.studies import study_launch

    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    sim = simulate_study(arm_accuracy=ARM_ACCURACY, n_per_arm=_arm_sizes(participants),
                         trials_per_phase=trials // 2, n_items=N_ITEMS, seed=seed)
    n = len(sim)
    print(f"simulate_study: {n:,} trials in {time.perf_counter() - started:.1f} s")

    started = time.perf_counter()
    weights = b"benchmark weights (never loaded)"
    dataset = m.Dataset.objects.create(
        name=f"{slug} data", modality="tabular", input_shape=[3], class_names=["no", "yes"],
        feature_names=["a", "b", "c"], content_sha256=hashlib.sha256(b"benchmark dataset").hexdigest(),
        n_items=N_DATASET, value_range=[0.0, 1.0], split_info={"seed": seed, "test_fraction": 1.0, "stratified": False})
    model = m.MLModel.objects.create(
        name=f"{slug} model", architecture="tabular_mlp", dataset=dataset, input_shape=[3], class_names=["no", "yes"],
        weights=ContentFile(weights, name="w.safetensors"), weights_sha256=hashlib.sha256(weights).hexdigest())
    dataset_stimuli = m.Stimulus.objects.bulk_create(
        [m.Stimulus(dataset=dataset, index=i, label=int(rng.integers(2)), split="test", data=b"")
         for i in range(N_DATASET)], batch_size=1_000)
    outputs = rng.integers(0, 2, N_DATASET)
    m.ModelOutput.objects.bulk_create([m.ModelOutput(model=model, stimulus=s, predicted=int(p), probabilities=[0.5, 0.5])
                                       for s, p in zip(dataset_stimuli, outputs)], batch_size=1_000)
    sample = np.sort(rng.choice(N_DATASET, N_ITEMS, replace=False))  # the study's stimulus sample
    stimuli = [dataset_stimuli[i] for i in sample]
    predicted = outputs[sample]
    study = m.Study.objects.create(title="Benchmark", slug=slug, model=model, dataset=dataset, seed=seed,
                                   completion_code="BENCHDONE", config={"exclusion_rules": EXCLUSION_RULES})
    arms = {}
    for position, name in enumerate(ARM_ACCURACY):
        control = name == "control"
        arms[name] = m.Arm.objects.create(study=study, name=name, position=position,
                                          kind="control" if control else "explanation",
                                          method="" if control else name, method_config={} if control else {"n": 50})
        if not control:
            m.Hypothesis.objects.create(study=study, label=f"H{position}", statement=f"{name} beats control on gain",
                                        arm=arms[name], outcome="gain", direction="greater", family="primary",
                                        correction="holm")
    m.Study.objects.filter(pk=study.pk).update(state=m.Study.State.READY)
    study = study_launch(study=study)

    arm_names = sim["arm"].cat.categories
    participant_index = sim["participant_id"].to_numpy()
    n_participants = int(participant_index.max()) + 1
    first_of = np.searchsorted(participant_index, np.arange(n_participants))
    participant_arm = np.asarray(arm_names)[sim["arm"].cat.codes.to_numpy()[first_of]]
    t0 = pd.Timestamp("2025-03-01T09:00:00Z")
    started_at = t0 + pd.to_timedelta(np.arange(n_participants) * 37, unit="s")
    duration = pd.to_timedelta(rng.integers(900, 2400, n_participants), unit="s")
    position = np.tile(np.arange(trials), n_participants)
    item = sim["item_id"].to_numpy()
    expected = predicted[item]
    correct = sim["correct"].to_numpy().astype(bool)
    client_rt = rng.integers(800, 9000, n)
    sent_at = started_at.tz_localize(None).to_numpy()[participant_index] + (position * 6_000 + client_rt).astype("timedelta64[ms]")
    print(f"generated columns in {time.perf_counter() - started:.1f} s")

    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        p0 = _reserve_ids(cursor, m.Participant, n_participants)
        t_first = _reserve_ids(cursor, m.Trial, n)
        r0 = _reserve_ids(cursor, m.Response, n)
        _copy(cursor, m.Participant, pd.DataFrame({
            "id": p0 + np.arange(n_participants), "study_id": study.pk,
            "arm_id": [arms[a].pk for a in participant_arm], "public_id": _hex_ids(n_participants),
            "external_id": [f"SIM{i:06d}" for i in range(n_participants)], "source": "prolific",
            "source_params": "{}", "status": "completed", "started_at": started_at,
            "consented_at": started_at + pd.Timedelta(seconds=30), "completed_at": started_at + duration,
            "last_seen_at": started_at + duration, "comprehension_attempts": rng.integers(1, 4, n_participants),
            "instructions_ms": rng.integers(5_000, 120_000, n_participants), "step": "done",
            "simulated": False, "preview": False, "assignment": "{}", "demographics": "{}", "completion_code": "BENCHDONE",
            "consent_version": "bench", "instructions_shown_at": started_at, "n_trials": trials, "plan_seed": None}))
        _copy(cursor, m.Trial, pd.DataFrame({
            "id": t_first + np.arange(n), "participant_id": p0 + participant_index, "public_id": _hex_ids(n),
            "position": position, "phase": sim["phase"].astype(str).to_numpy(), "task": "forward",
            "stimulus_id": np.array([s.pk for s in stimuli])[item], "edit_id": None,
            "show_explanation": (sim["arm"].to_numpy() != "control") & (sim["phase"].to_numpy() == "post_test"),
            "show_model_output": False, "expected_answer": expected, "n_options": 2, "block": 0, "feedback": "none",
            "options": "[]", "served_at": None}))
        _copy(cursor, m.Response, pd.DataFrame({
            "id": r0 + np.arange(n), "trial_id": t_first + np.arange(n), "idempotency_key": _hex_ids(n),
            "payload_sha256": "0" * 64, "answer": np.where(correct, expected, 1 - expected), "correct": correct,
            "confidence": rng.integers(1, 8, n), "client_rt_ms": client_rt, "server_rt_ms": client_rt + 40,
            "client_sent_at": pd.DatetimeIndex(sent_at, tz="UTC"),
            "received_at": pd.DatetimeIndex(sent_at + np.timedelta64(250, "ms"), tz="UTC"), "events": "[]",
            "client": '{"device": "desktop"}', "focus_losses": 0}))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    print(f"COPY load of {n_participants:,} participants, {n:,} trials and {n:,} responses: "
          f"{time.perf_counter() - started:.1f} s")
    return study


# -- children: one fresh process per measurement -------------------------------------------------

def child_analysis(study_id: int) -> dict:
    from studyapp.models import Study

    study = Study.objects.get(pk=study_id)
    # The statistics stack is imported lazily on a first run (seconds); a worker keeps it loaded, so it is
    # imported here, timed apart, and the run measures the analysis itself.
    started = time.perf_counter()
    import sklearn.linear_model  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import statsmodels.api  # noqa: F401
    from statsmodels.genmod import generalized_estimating_equations  # noqa: F401
    stack_import = time.perf_counter() - started
    import_peak = peak_rss_mb()
    baseline = rss_mb()
    reset = reset_peak_rss()
    started = time.perf_counter()
    try:
        from studyapp.services.analysis import study_analyze
    except ImportError:
        study_analyze = None
    if study_analyze is not None:
        what = "studyapp.services.analysis.study_analyze"
        run = study_analyze(study=study, seed=0)
        seconds = time.perf_counter() - started
        verdicts = {h["label"]: (h.get("decision") or {}).get("verdict") for h in run.results.get("hypotheses", [])}
        p_values = {h["label"]: h.get("p_value") for h in run.results.get("hypotheses", [])}
        mixed = sorted({(s.get("mixed_logistic") or {}).get("status") for s in run.results.get("secondary", {}).values()})
        extra = {"analysed_participants": run.results.get("analysed_participants"), "verdicts": verdicts,
                 "p_values": p_values, "mixed_logistic": mixed}
    else:
        from studyapp.analysis import primary_analysis
        from studyapp.selectors import trials_long_frame

        what = "trials_long_frame + primary_analysis (studyapp.services.analysis.study_analyze is missing)"
        frame = trials_long_frame(study=study).rename(columns={"participant": "participant_id",
                                                               "stimulus": "item_id"})
        frame["correct"] = frame["correct"].astype("float64")
        result = primary_analysis(frame, control="control", outcome="gain")
        seconds = time.perf_counter() - started
        extra = {"rejected": result.rejected()}
    peak = peak_rss_mb()
    from studyapp.selectors import ANALYSIS_COLUMNS, trials_long_frame

    started = time.perf_counter()
    rows = len(trials_long_frame(study=study, columns=ANALYSIS_COLUMNS))  # what the analysis loads
    load = time.perf_counter() - started
    return {"what": what, "seconds": seconds, "rss_baseline_mb": baseline, "peak_rss_mb": peak,
            "import_peak_mb": import_peak, "peak_reset": reset,
            "trials_long_frame_seconds": load, "trials_long_frame_rows": rows, "stack_import_s": stack_import, **extra}


def _backend_cpu_s(connection) -> float:
    """CPU seconds so far of this connection's PostgreSQL backend (a local server: /proc)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    stat = _proc_stat(pid)
    return stat[2] if stat else float("nan")


def child_load(study_id: int) -> dict:
    """trials_long_frame by COPY and by cursor, analysis columns and every column: wall and CPU."""
    import pandas as pd
    from django.db import connection

    from studyapp.models import Study
    from studyapp.selectors import ANALYSIS_COLUMNS, TRIAL_COLUMNS, trials_long_frame

    study = Study.objects.get(pk=study_id)
    trials_long_frame(study=study, columns=("position",), method="cursor")  # connect, warm the caches
    out = {}
    for label, columns in (("analysis", ANALYSIS_COLUMNS), ("all", TRIAL_COLUMNS)):
        frames = {}
        for method in ("copy", "cursor"):
            cpu, backend = time.process_time(), _backend_cpu_s(connection)
            started = time.perf_counter()
            # The analysis columns as the analysis reads them: participant ids as text, text columns
            # as categoricals (studyapp.services.analysis._trials).
            frames[method] = trials_long_frame(study=study, columns=columns, method=method,
                                               uuid_text=label == "analysis", categorical=label == "analysis")
            seconds = time.perf_counter() - started
            out[f"{label}_{method}"] = {"rows": len(frames[method]), "columns": len(columns), "seconds": seconds,
                                        "client_cpu_s": time.process_time() - cpu,
                                        "backend_cpu_s": _backend_cpu_s(connection) - backend}
        pd.testing.assert_frame_equal(frames["copy"], frames["cursor"], check_exact=True)
    return out


def child_diy(study_id: int) -> dict:
    """What a researcher would do without the analysis: download responses.csv, read it with pandas,
    compute each participant's gain and run the same tests (scipy Welch t, Holm with statsmodels,
    statsmodels GEE clustered by participant)."""
    import numpy as np
    import pandas as pd
    from scipy import stats
    from statsmodels.genmod.cov_struct import Exchangeable
    from statsmodels.genmod.families import Binomial
    from statsmodels.genmod.generalized_estimating_equations import GEE
    from statsmodels.stats.multitest import multipletests

    from studyapp.exports.files import export_response
    from studyapp.models import Study

    study = Study.objects.get(pk=study_id)
    times = {}
    started = time.perf_counter()
    with tempfile.NamedTemporaryFile(suffix=".csv") as file:
        response = export_response(study=study, kind="responses")
        for chunk in response.streaming_content:
            file.write(chunk)
        response.close()
        file.flush()
        times["export_s"] = time.perf_counter() - started
        started = time.perf_counter()
        frame = pd.read_csv(file.name)
        times["read_csv_s"] = time.perf_counter() - started
    started = time.perf_counter()
    kept = frame.loc[(frame["participant_status"] == "completed") & (frame["excluded"] == 0)
                     & (frame["task"] == "forward") & frame["response"].notna()
                     & frame["phase"].isin(["pre_test", "post_test"])]
    accuracy = kept.groupby(["participant", "arm", "phase"])["correct"].mean().unstack("phase")
    gain = (accuracy["post_test"] - accuracy["pre_test"]).dropna().reset_index(name="gain")
    arms = [a for a in ARM_ACCURACY if a != "control"]
    control = gain.loc[gain["arm"] == "control", "gain"]
    p_values = {arm: stats.ttest_ind(gain.loc[gain["arm"] == arm, "gain"], control, equal_var=False,
                                     alternative="greater").pvalue for arm in arms}
    multipletests(list(p_values.values()), method="holm")
    times["tests_s"] = time.perf_counter() - started
    started = time.perf_counter()
    for arm in arms:
        rows = kept.loc[kept["arm"].isin([arm, "control"])]
        post = (rows["phase"] == "post_test").to_numpy(float)
        treated = (rows["arm"] == arm).to_numpy(float)
        exog = np.column_stack([np.ones(len(rows)), post, treated, post * treated])
        GEE(rows["correct"].to_numpy(float), exog, groups=pd.factorize(rows["participant"])[0],
            family=Binomial(), cov_struct=Exchangeable()).fit(cov_type="robust")
    times["gee_s"] = time.perf_counter() - started
    return {**times, "rows": len(frame), "p_values": p_values}


def child_export(study_id: int, kind: str) -> dict:
    from django.http import StreamingHttpResponse

    from studyapp.exports.files import export_response
    from studyapp.models import Study

    study = Study.objects.get(pk=study_id)
    import_peak = peak_rss_mb()
    baseline = rss_mb()
    reset = reset_peak_rss()
    started = time.perf_counter()
    response = export_response(study=study, kind=kind)
    assert isinstance(response, StreamingHttpResponse), type(response)
    lines = size = chunks = 0
    first_row = None
    samples = []
    with open(os.devnull, "wb") as sink:
        for chunk in response.streaming_content:
            sink.write(chunk)
            size += len(chunk)
            lines += chunk.count(b"\n")
            chunks += 1
            if first_row is None and lines > 1:
                first_row = time.perf_counter() - started
            if chunks % 100 == 0:
                samples.append(rss_mb())
    response.close()
    seconds = time.perf_counter() - started
    rows = lines - 1
    from studyapp.exports.rows import exclusion_flags

    flags_started = time.perf_counter()
    exclusion_flags(study=study)
    flags_s = time.perf_counter() - flags_started
    return {"kind": kind, "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "mb": size / 2**20,
            "first_row_s": first_row, "exclusion_flags_s": flags_s, "rss_baseline_mb": baseline,
            "rss_during_mb": [min(samples, default=baseline), max(samples, default=baseline)],
            "peak_rss_mb": peak_rss_mb(), "import_peak_mb": import_peak, "peak_reset": reset}


def run_child(*args: str, source: str | None = None) -> dict:
    env = os.environ.copy()
    if source:
        env["BENCH_SOURCE_ROOT"] = source
    result = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                            env=env, cwd=source or ROOT)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"child {args} failed")
    return json.loads(result.stdout.strip().splitlines()[-1])


def baseline_tree(rev: str) -> str:
    """The project's source at git revision ``rev``, unpacked into a temporary folder (read-only git use)."""
    folder = tempfile.mkdtemp(prefix="bench-baseline-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return folder


def _ratio(slow: float | None, fast: float | None) -> str:
    return f"{slow / fast:.1f}x" if slow and fast else "n/a"


def report_load(study_id: int) -> None:
    load = run_child("load", str(study_id))
    print("loading (trials_long_frame, identical frames by both methods; the 15 analysis columns as the analysis "
          "reads them, ids as text and text as categoricals; rows/s of wall time, and of the CPU time of this "
          "process + its PostgreSQL backend, parallel workers not counted):")
    for label in ("analysis", "all"):
        for method in ("copy", "cursor"):
            m = load[f"{label}_{method}"]
            cpu = m["client_cpu_s"] + m["backend_cpu_s"]
            print(f"  {method:6} {m['columns']:2} columns: {m['rows']:,} rows in {m['seconds']:.2f} s = "
                  f"{m['rows'] / m['seconds']:,.0f} rows/s (CPU {m['client_cpu_s']:.2f} s here + "
                  f"{m['backend_cpu_s']:.2f} s in PostgreSQL = {m['rows'] / cpu:,.0f} rows per CPU-s)")
    copy = load["analysis_copy"]
    print(f"  goal >= 500,000 rows/s (COPY, analysis columns): "
          f"{verdict(copy['rows'] / copy['seconds'] >= 500_000)}; COPY vs cursor "
          f"{_ratio(load['analysis_cursor']['seconds'], copy['seconds'])}")


def report_analysis(study_id: int, baseline: str | None) -> dict:
    a = run_child("analysis", str(study_id))
    old = run_child("analysis", str(study_id), source=baseline) if baseline else None
    print(f"analysis [{a['what']}]: {a['seconds']:.1f} s"
          + (f"; baseline {old['seconds']:.1f} s, {_ratio(old['seconds'], a['seconds'])} faster (goal >= 3x: "
             f"{verdict(old['seconds'] >= 3 * a['seconds'])})" if old else ""))
    print(f"  RSS {a['rss_baseline_mb']:.0f} MB after django.setup(), peak during the analysis "
          f"{a['peak_rss_mb']:.0f} MB" + ("" if a["peak_reset"] else " (peak includes imports)")
          + (f"; baseline peak {old['peak_rss_mb']:.0f} MB" if old else ""))
    print(f"  not counted: importing statsmodels and scikit-learn first, {a['stack_import_s']:.1f} s (once per worker)")
    print(f"  loading the analysis columns: trials_long_frame {a['trials_long_frame_seconds']:.2f} s for "
          f"{a['trials_long_frame_rows']:,} rows" + (f"; baseline {old['trials_long_frame_seconds']:.2f} s" if old else ""))
    same = old is None or old.get("verdicts") == a.get("verdicts")
    print(f"  {json.dumps({k: v for k, v in a.items() if k in ('analysed_participants', 'verdicts', 'mixed_logistic')})}"
          + ("" if old is None else f"; same verdicts as the baseline: {same}"))
    return a


def report_diy(study_id: int, analysis: dict | None) -> None:
    d = run_child("diy", str(study_id))
    total = d["export_s"] + d["read_csv_s"] + d["tests_s"]
    print(f"do it yourself (download responses.csv, pandas.read_csv, scipy Welch t + Holm): {total:.1f} s "
          f"(export {d['export_s']:.1f} s, read_csv {d['read_csv_s']:.1f} s, tests {d['tests_s']:.2f} s); "
          f"with statsmodels GEE per arm +{d['gee_s']:.1f} s = {total + d['gee_s']:.1f} s")
    if analysis and analysis.get("p_values"):
        ours = [p for p in analysis["p_values"].values() if p is not None]
        gap = max((abs(a - b) for a, b in zip(sorted(ours), sorted(d["p_values"].values()))), default=float("nan"))
        print(f"  the analysis ({analysis['seconds']:.1f} s, every test, bootstrap and check) takes "
              f"{analysis['seconds'] / total:.2f}x the do-it-yourself Welch path and "
              f"{analysis['seconds'] / (total + d['gee_s']):.2f}x the path with GEE (below 1 beats it); "
              f"largest difference between the Welch p-values: {gap:.1e}")


def report_exports(study_id: int, baseline: str | None) -> None:
    for kind in ("responses", "participants"):
        e = run_child(kind, str(study_id))
        old = run_child(kind, str(study_id), source=baseline) if baseline else None
        print(f"export {kind}.csv: {e['rows']:,} rows, {e['mb']:.0f} MB in {e['seconds']:.1f} s = "
              f"{e['rows_per_s']:,.0f} rows/s; first row after {e['first_row_s'] or 0:.2f} s "
              f"(goal <= 2 s: {verdict((e['first_row_s'] or 0) <= 2)})"
              + (f"; baseline first row {old['first_row_s'] or 0:.2f} s, all in {old['seconds']:.1f} s" if old else ""))
        print(f"  before the first row: exclusion flags (services.exclusions.participant_exclusions) "
              f"{e['exclusion_flags_s']:.2f} s")
        print(f"  RSS {e['rss_baseline_mb']:.0f} MB after django.setup() (import peak {e['import_peak_mb']:.0f} MB), "
              f"{e['rss_during_mb'][0]:.0f}-{e['rss_during_mb'][1]:.0f} MB while streaming, peak during the export "
              f"{e['peak_rss_mb']:.0f} MB" + ("" if e["peak_reset"] else " (peak includes imports)")
              + ("; goals > 100,000 rows/s, peak < 300 MB" if kind == "responses" else ""))


CHILDREN = {"analysis": child_analysis, "load": child_load, "diy": child_diy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=100, help="trials per participant (even)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="reuse the study of this size if it exists")
    parser.add_argument("--skip-analysis", action="store_true")
    parser.add_argument("--baseline", metavar="REV",
                        help="also measure the analysis and the exports of git revision REV on the same data")
    parser.add_argument("--mixed-max-trials", type=int, metavar="N",
                        help="ANALYSIS_MIXED_MAX_TRIALS for the analyses (the mixed model dominates below it)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    os.environ.setdefault("DATABASE_URL", DEFAULT_URL)
    os.environ.setdefault("DJANGO_DEBUG", "true")  # the development settings (no key or hosts needed)
    os.environ.setdefault("DATA_DIR", str(Path(tempfile.gettempdir()) / "studyapp_bench_data"))
    os.environ.setdefault("CELERY_BROKER_URL", "")
    if args.mixed_max_trials is not None:
        os.environ["ANALYSIS_MIXED_MAX_TRIALS"] = str(args.mixed_max_trials)
    if args.child:
        setup_django()
        kind, study_id = args.child[0], int(args.child[1])
        result = CHILDREN[kind](study_id) if kind in CHILDREN else child_export(study_id, kind)
        print(json.dumps(result, default=str))
        return

    url = os.environ["DATABASE_URL"]
    if "bench" not in urlsplit(url).path:
        raise SystemExit(f"DATABASE_URL={url}: the benchmark empties its database; use one named *bench*.")
    ensure_database(url)
    setup_django()
    from django.core.management import call_command

    from studyapp.models import Response, Study

    call_command("migrate", verbosity=0)
    slug = f"bench-{args.participants}x{args.trials}"
    study = Study.objects.filter(slug=slug).first()
    expected = args.participants * args.trials
    if args.reuse and study and Response.objects.filter(trial__participant__study=study).count() == expected:
        print(f"reusing study {slug} (id {study.pk}, {expected:,} responses)")
    else:
        started = time.perf_counter()
        call_command("flush", interactive=False, verbosity=0)
        study = build_study(slug=slug, participants=args.participants, trials=args.trials, seed=args.seed)
        print(f"build total: {time.perf_counter() - started:.1f} s")

    baseline = baseline_tree(args.baseline) if args.baseline else None
    print(f"\n{args.participants:,} participants x {args.trials} trials = {expected:,} responses "
          f"({os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f}; PostgreSQL at "
          f"{urlsplit(url).hostname})" + (f"; baseline: revision {args.baseline}" if baseline else ""))
    report_load(study.pk)
    analysis = None if args.skip_analysis else report_analysis(study.pk, baseline)
    report_diy(study.pk, analysis)
    report_exports(study.pk, baseline)


if __name__ == "__main__":
    main()
