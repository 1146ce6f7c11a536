"""Scale of the analysis and of the streaming CSV export on a simulated study in PostgreSQL.

    .venv/bin/python benchmarks/analysis.py                      # build 10,000 x 100 (1,000,000 responses), measure
    .venv/bin/python benchmarks/analysis.py --reuse              # reuse the study an earlier run built
    .venv/bin/python benchmarks/analysis.py --participants 400   # quick run (40,000 responses)

Database: ``DATABASE_URL`` (default ``postgres://postgres@127.0.0.1:5432/studyapp_bench``), created
when missing and migrated. It is disposable: building a study empties it first (``manage.py
flush``), and the script refuses to do that to a database whose name lacks "bench".

What it does and prints:

1. Generates the trials with ``studyapp.analysis.simulate_study`` (4 arms, pre-test and post-test,
   ``--trials`` / 2 items per phase from a sample of 200 stimuli of a 2,000-item dataset) and loads participants, trials and
   responses with ``COPY ... FROM STDIN`` (psycopg2 ``copy_expert``); generation and load times
   are printed separately. The study is launched (frozen plan, one hypothesis per arm vs control)
   and has exclusion rules, so the export computes real exclusion flags.
2. In a fresh child process: the time and peak RSS of ``studyapp.services.analysis.study_analyze``
   (or, if that service is missing, of ``trials_long_frame`` + ``primary_analysis``, and it says so).
3. In a fresh child process: the streaming responses export exactly as the download view builds it
   (``studyapp.exports.files.export_response(kind="responses")``), consumed chunk by chunk into
   /dev/null: rows, seconds, rows/s, time to the first row, RSS along the way and the peak RSS
   (``resource.getrusage``; a fresh process so the loader's memory does not count).

Goals (issue): analysis under 30 s; export at over 100,000 rows/s in constant memory (peak RSS
under 300 MB).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
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
                                   config={"exclusion_rules": EXCLUSION_RULES})
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
            "instructions_ms": rng.integers(5_000, 120_000, n_participants)}))
        _copy(cursor, m.Trial, pd.DataFrame({
            "id": t_first + np.arange(n), "participant_id": p0 + participant_index, "public_id": _hex_ids(n),
            "position": position, "phase": sim["phase"].astype(str).to_numpy(), "task": "forward",
            "stimulus_id": np.array([s.pk for s in stimuli])[item], "edit_id": None,
            "show_explanation": (sim["arm"].to_numpy() != "control") & (sim["phase"].to_numpy() == "post_test"),
            "show_model_output": False, "expected_answer": expected, "n_options": 2}))
        _copy(cursor, m.Response, pd.DataFrame({
            "id": r0 + np.arange(n), "trial_id": t_first + np.arange(n), "idempotency_key": _hex_ids(n),
            "payload_sha256": "0" * 64, "answer": np.where(correct, expected, 1 - expected), "correct": correct,
            "confidence": rng.integers(1, 8, n), "client_rt_ms": client_rt, "server_rt_ms": client_rt + 40,
            "client_sent_at": pd.DatetimeIndex(sent_at, tz="UTC"),
            "received_at": pd.DatetimeIndex(sent_at + np.timedelta64(250, "ms"), tz="UTC")}))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    print(f"COPY load of {n_participants:,} participants, {n:,} trials and {n:,} responses: "
          f"{time.perf_counter() - started:.1f} s")
    return study


# -- children: one fresh process per measurement -------------------------------------------------

def child_analysis(study_id: int) -> dict:
    from studyapp.models import Study

    study = Study.objects.get(pk=study_id)
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
        extra = {"analysed_participants": run.results.get("analysed_participants"), "verdicts": verdicts}
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
    from studyapp.selectors import trials_long_frame

    started = time.perf_counter()
    rows = len(trials_long_frame(study=study))
    load = time.perf_counter() - started
    return {"what": what, "seconds": seconds, "rss_baseline_mb": baseline, "peak_rss_mb": peak,
            "import_peak_mb": import_peak, "peak_reset": reset,
            "trials_long_frame_seconds": load, "trials_long_frame_rows": rows, **extra}


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
    return {"kind": kind, "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "mb": size / 2**20,
            "first_row_s": first_row, "rss_baseline_mb": baseline,
            "rss_during_mb": [min(samples, default=baseline), max(samples, default=baseline)],
            "peak_rss_mb": peak_rss_mb(), "import_peak_mb": import_peak, "peak_reset": reset}


def run_child(*args: str) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                            env=os.environ.copy(), cwd=ROOT)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"child {args} failed")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=100, help="trials per participant (even)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="reuse the study of this size if it exists")
    parser.add_argument("--skip-analysis", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    os.environ.setdefault("DATABASE_URL", DEFAULT_URL)
    os.environ.setdefault("DATA_DIR", str(Path(tempfile.gettempdir()) / "studyapp_bench_data"))
    os.environ.setdefault("CELERY_BROKER_URL", "")
    if args.child:
        setup_django()
        kind, study_id = args.child[0], int(args.child[1])
        result = child_analysis(study_id) if kind == "analysis" else child_export(study_id, kind)
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

    print(f"\n{args.participants:,} participants x {args.trials} trials = {expected:,} responses "
          f"({os.cpu_count()} CPUs visible; PostgreSQL at {urlsplit(url).hostname})")
    if not args.skip_analysis:
        a = run_child("analysis", str(study.pk))
        print(f"analysis [{a['what']}]: {a['seconds']:.1f} s; goal < 30 s")
        print(f"  RSS {a['rss_baseline_mb']:.0f} MB after django.setup(), peak during the analysis "
              f"{a['peak_rss_mb']:.0f} MB" + ("" if a["peak_reset"] else " (peak includes imports)"))
        print(f"  of which loading: trials_long_frame alone {a['trials_long_frame_seconds']:.1f} s "
              f"for {a['trials_long_frame_rows']:,} rows")
        print(f"  {json.dumps({k: v for k, v in a.items() if k in ('analysed_participants', 'verdicts', 'rejected')})}")
    for kind in ("responses", "participants"):
        e = run_child(kind, str(study.pk))
        print(f"export {kind}.csv: {e['rows']:,} rows, {e['mb']:.0f} MB in {e['seconds']:.1f} s = "
              f"{e['rows_per_s']:,.0f} rows/s; first row after {e['first_row_s'] or 0:.2f} s")
        print(f"  RSS {e['rss_baseline_mb']:.0f} MB after django.setup() (import peak {e['import_peak_mb']:.0f} MB), "
              f"{e['rss_during_mb'][0]:.0f}-{e['rss_during_mb'][1]:.0f} MB while streaming, peak during the export "
              f"{e['peak_rss_mb']:.0f} MB" + ("" if e["peak_reset"] else " (peak includes imports)")
              + ("; goals > 100,000 rows/s, peak < 300 MB" if kind == "responses" else ""))


if __name__ == "__main__":
    main()
