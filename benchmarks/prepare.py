"""End-to-end preparation of the demo studies: in-process, and on 1 and 2 real Celery worker processes.

    .venv/bin/python benchmarks/prepare.py --quick      # the digits study, one round (~2.5 min)
    .venv/bin/python benchmarks/prepare.py              # both demo studies, two rounds (~7 min)
    .venv/bin/python benchmarks/prepare.py --chunk 16 --rounds 1 --reps 3 --keep

Database: its own, ``studyapp_bench_prepare`` on postgres://postgres@127.0.0.1:5432 (``--db``,
``--pg``), dropped and created afresh, migrated with ``manage.py migrate``, dropped at the end unless
``--keep``. Broker: a private redis-server on a free port that keeps nothing on disk (never the
shared one). Files: a temporary DATA_DIR.

Studies: the two demo studies of ``studyapp.services.demo`` (digits: CNN, IG, saliency, IG on a
randomized model, exemplars, counterfactual edits; breast cancer: MLP, IG, feature ablation, a
matched-random placebo, counterfactual choices), built with its own functions (built-in data, the
deterministically trained models, the study with arms and hypotheses) but left in draft: the demo's
Prepare is skipped. Training the models is not timed.

Each run presses Prepare (``study_prepare``) and waits for the study to be ready:

* ``in-process``: the embedded mode (no broker; the units run in this process, ``study_run_preparation``);
* ``N worker(s)``: ``celery -A worker worker -Q cpu,gpu --concurrency N --prefetch-multiplier 1``
  (docker-compose's worker: one Celery worker whose prefork pool has N processes, each of which
  runs units) and one ``celery -A worker beat`` (the dispatcher), all with production settings
  (leases, dispatch period). Each worker's pool processes are warmed up first (a message for a
  unit that does not exist makes each import the preparation code, torch and Captum, as a
  long-running worker already has); loading the study's model is part of the run.
* ``, 1 thread``: the same with OMP_NUM_THREADS=MKL_NUM_THREADS=1 in the workers' environment
  (PyTorch uses every core in each process by default, so N processes oversubscribe the CPUs).

Between runs the study's computed results are deleted (its preparation units, the explanations of
its arms and their pictures, its items and item-sample record, the counterfactual edits of its
dataset with their pictures, the model's outputs on stimuli and edits) and it is back in draft,
so every run does the whole work. In each round every configuration is started afresh and runs
each study once unmeasured (run "r.w": a fresh process pays first-call costs a long-running worker
has behind it: lazy imports such as SciPy for the sanity checks, oneDNN kernel setup per shape),
then ``--reps`` measured times ("r.1", "r.2" ...). Rounds (``--rounds``) repeat all of it, so slow
phases of a shared machine hit every configuration alike; the summary takes each configuration's
fastest measured run (other load only ever adds time).

Printed per run, from the unit records (``PreparationUnit``):
  wall      Prepare pressed -> the last unit finished (its ``finished_at``)
  compute   model compute: units of kind outputs, edits, maps, arm, sanity (their ``seconds``)
  render    units of kind render (``seconds``)
  other     the item sample (kinds sample and items) and any kind not named here (``seconds``)
  writes    database writes: ``result["write_seconds"]`` of every unit
  overhead  queue + claim overhead = wall x processes - summed unit time (seconds + write_seconds),
            split into: in-unit (claim -> completion minus the unit's own time: the claim's reads,
            the lock wait of the completion), ready (a process idle while some unit could run:
            commit, send, Redis, delivery, claim) and no-work (a process idle while no unit could
            run: waiting for dependencies, the critical path)
  bound     the dependency bound of that run: max(summed unit time / processes, critical path)
and the CPU seconds during the run by whom (the Celery processes, PostgreSQL, this process, all
others), the machine's busy share and the share of its CPU time other processes took: a run on a
shared machine with others at tens of percent measured them as much as preparation.

Goals (issue 11): queue + database overhead (overhead + writes) under 20% of the total (wall x
processes); two CPU workers at least 1.6x one on a study with enough units (digits). Figures are
printed, never asserted; a missed goal prints MISS and the exit status stays 0.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import PrivateRedis, cpu_snapshot, recreate_database, stop_process, verdict  # noqa: E402

DEFAULT_PG = "postgres://postgres@127.0.0.1:5432"
DEFAULT_DB = "studyapp_bench_prepare"
COMPUTE_KINDS = ("outputs", "edits", "maps", "arm", "sanity")
KIND_ORDER = ("outputs", "sample", "edits", "items", "maps", "render", "arm", "sanity")  # then any other kind
GOAL_OVERHEAD, GOAL_SPEEDUP = 0.20, 1.6
RUN_TIMEOUT = 600.0


# -- services: database, broker, worker processes -------------------------------------------------

class Celery:
    """A Celery worker or beat process as production starts it, logging to a file."""

    def __init__(self, args: list[str], log: Path, env: dict, ready: str) -> None:
        self.log = log
        handle = open(log, "w+")
        self.process = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker", *args], cwd=ROOT, env=env,
                                        stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while ready not in log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                stop_process(self.process)
                raise SystemExit(f"{' '.join(args[:1])} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        stop_process(self.process)


@dataclass(frozen=True)
class Config:
    name: str
    processes: int  # 0: in-process (embedded)
    threads: int | None = None  # OMP_NUM_THREADS / MKL_NUM_THREADS of the workers; None: torch's default


def start_worker(config: Config, env: dict, workdir: Path, serial: int) -> Celery:
    env = dict(env)
    if config.threads:
        env.update(OMP_NUM_THREADS=str(config.threads), MKL_NUM_THREADS=str(config.threads))
    worker = Celery(["worker", "-Q", "cpu,gpu", "--concurrency", str(config.processes), "--prefetch-multiplier", "1",
                     "-n", f"bench{serial}-{os.getpid()}@%h", "--loglevel", "INFO"],
                    workdir / f"worker-{serial}.log", env, "ready.")
    # Each pool process imports the preparation code (torch, Captum) on its first message: a
    # message for a unit that does not exist ("not claimed") does that outside the measured runs.
    # Fair scheduling hands the second message to the other, idle process.
    from worker.tasks import run_preparation_unit

    for _ in range(config.processes):
        run_preparation_unit.apply_async((0,), retry=False)
    deadline = time.monotonic() + 120
    while worker.text().count("'not claimed'") < config.processes:
        if worker.process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the worker did not warm up:\n{worker.text()[-3000:]}")
        time.sleep(0.2)
    return worker


# -- CPU accounting (Linux /proc) -----------------------------------------------------------------

def cpu_delta(before: dict, after: dict) -> dict:
    d = {k: after[k] - before[k] for k in before}
    busy = d["total"] - d["idle"]
    others = max(0.0, busy - d["tree"] - d["postgres"] - d["here"])
    return {"busy_pct": 100 * busy / d["total"] if d["total"] else 0.0, "celery": d["tree"],
            "postgres": d["postgres"], "here": d["here"], "others": others,
            "others_pct": 100 * others / d["total"] if d["total"] else 0.0}


# -- the studies ------------------------------------------------------------------------------------

def build_demo_drafts(slugs: list[str]) -> list:
    """The demo studies (data, trained model, study with arms and hypotheses) in draft: the demo's
    own functions, with its Prepare call made a no-op (so nothing is prepared or launched)."""
    from studyapp.services import demo
    from studyapp.services.datasets import dataset_import_builtin

    result = demo.DemoResult()
    studies = []
    original = demo.study_prepare
    demo.study_prepare = lambda *, study: study
    try:
        for spec in (s for s in demo.DEMOS if s.slug in slugs):
            dataset = dataset_import_builtin(which=spec.builtin)
            model = demo.demo_model(spec=spec, dataset=dataset, result=result)
            studies.append(demo.demo_study(spec=spec, model=model, dataset=dataset, result=result))
    finally:
        demo.study_prepare = original
    return studies


def study_reset(study) -> None:
    """Delete everything preparation computed for the study and put it back in draft."""
    from django.core.files.storage import default_storage
    from django.db import transaction

    from studyapp.models import Edit, Explanation, ModelOutput, PreparationUnit, Study, StudyItem

    with transaction.atomic():
        explanations = Explanation.objects.filter(arm__study=study)
        edits = Edit.objects.filter(stimulus__dataset=study.dataset)
        files = [n for n in [*explanations.values_list("image", flat=True), *edits.values_list("image", flat=True)]
                 if n]
        PreparationUnit.objects.filter(study=study).delete()
        explanations.delete()
        StudyItem.objects.filter(study=study).delete()
        ModelOutput.objects.filter(model=study.model, edit__stimulus__dataset=study.dataset).delete()
        edits.delete()
        ModelOutput.objects.filter(model=study.model, stimulus__dataset=study.dataset).delete()
        Study.objects.filter(pk=study.pk).update(state=Study.State.DRAFT, preparation={}, item_sample={})
    for name in files:
        default_storage.delete(name)
    study.refresh_from_db()


# -- one run --------------------------------------------------------------------------------------

@dataclass
class Run:
    study: str
    config: Config
    rep: str  # "round.repetition"; "round.w": the warm-up run of a freshly started configuration
    wall: float = 0.0
    units: list[dict] = field(default_factory=list)
    cpu: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)  # the study's preparation summary (what was made)


def prepare_and_wait(study, *, config: Config, roots: tuple[int, ...]) -> tuple[float, list[dict], dict, dict]:
    from django.utils import timezone

    from studyapp.models import PreparationUnit, Study, StudyItem
    from studyapp.services.studies import study_prepare
    from worker import app

    app.conf.task_always_eager = config.processes == 0  # the embedded mode: the units run in here
    before = cpu_snapshot(roots)
    started = timezone.now()
    study_prepare(study=study)
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        row = Study.objects.filter(pk=study.pk).values("state", "preparation").get()
        if row["state"] == Study.State.READY:
            break
        if row["preparation"].get("status") == "failed" or time.monotonic() > deadline:
            raise SystemExit(f"preparation of {study.slug} did not finish: {row}")
        time.sleep(0.05)
    cpu = cpu_delta(before, cpu_snapshot(roots))
    app.conf.task_always_eager = False
    units = list(PreparationUnit.objects.filter(study=study).values(
        "key", "kind", "depends_on", "created_at", "started_at", "finished_at", "seconds", "result", "worker",
        "attempts", "status"))
    for u in units:
        for k in ("created_at", "started_at", "finished_at"):
            u[k] = (u[k] - started).total_seconds()
        u["write"] = float(u["result"].get("write_seconds", 0.0))
        u["work"] = float(u["seconds"] or 0.0) + u["write"]
    made = {**row["preparation"], "items": StudyItem.objects.filter(study=study).count()}
    return max(u["finished_at"] for u in units), units, cpu, made


def critical_path(units: list[dict]) -> float:
    by_key = {u["key"]: u for u in units}
    memo: dict[str, float] = {}

    def longest(key: str) -> float:
        if key not in memo:
            u = by_key[key]
            memo[key] = u["work"] + max((longest(d) for d in u["depends_on"] if d in by_key), default=0.0)
        return memo[key]
    return max(longest(k) for k in by_key)


def analyse(wall: float, units: list[dict], processes: int) -> dict:
    """The breakdown of one run (see the module docstring)."""
    import numpy as np

    n = max(1, processes)
    kind = lambda kinds: sum(float(u["seconds"] or 0) for u in units if u["kind"] in kinds)  # noqa: E731
    writes = sum(u["write"] for u in units)
    work = sum(u["work"] for u in units)
    capacity = wall * n
    overhead = capacity - work
    in_unit = sum(max(0.0, (u["finished_at"] - u["started_at"]) - u["work"]) for u in units)
    # Over time: processes idle (not inside a unit) while some unit could run (its dependencies
    # done, not yet claimed): queue latency; idle while none could: waiting for dependencies.
    finished = {u["key"]: u["finished_at"] for u in units}
    step = 0.001
    t = np.arange(0.0, wall, step)
    running = np.zeros_like(t)
    ready = np.zeros_like(t)
    for u in units:
        running += (t >= u["started_at"]) & (t < u["finished_at"])
        ready_at = max([u["created_at"], 0.0, *(finished[d] for d in u["depends_on"] if d in finished)])
        ready += (t >= ready_at) & (t < u["started_at"])
    idle = np.clip(n - running, 0, None)
    queued = float(np.minimum(idle, ready).sum() * step)
    starved = float(idle.sum() * step) - queued
    other = sum(float(u["seconds"] or 0) for u in units if u["kind"] not in (*COMPUTE_KINDS, "render"))
    return {"units": len(units), "compute": kind(COMPUTE_KINDS), "render": kind(("render",)),
            "other": other, "writes": writes, "work": work, "capacity": capacity,
            "overhead": overhead, "in_unit": in_unit, "queued": queued, "starved": starved,
            "critical": critical_path(units), "bound": max(work / n, critical_path(units)),
            "retried": sum(1 for u in units if u["attempts"] > 1), "workers": len({u["worker"] for u in units})}


# -- printing -------------------------------------------------------------------------------------

def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def kinds_in(units: list[dict]) -> list[str]:
    present = {u["kind"] for u in units}
    return [k for k in KIND_ORDER if k in present] + sorted(present - set(KIND_ORDER))


def print_made(study: str, run: Run) -> None:
    """What one preparation makes: the units by kind and the rows the summary counts."""
    s = run.summary
    kinds = Counter(u["kind"] for u in run.units)
    edits, explanations = s.get("edits", {}), s.get("explanations_created", {})
    print(f"\n[{study}] {len(run.units)} units ({', '.join(f'{k} {kinds[k]}' for k in kinds_in(run.units))}); "
          f"model outputs {s.get('model_outputs_created', 0):,}; items {s.get('items', 0)}; "
          f"edits {edits.get('created', 0):,} with {edits.get('outputs_created', 0):,} outputs; explanations "
          f"{sum(explanations.values()):,} ({', '.join(f'{k} {v}' for k, v in explanations.items())})")


def print_runs(study: str, runs: list[Run]) -> None:
    print(f"\n[{study}] every run (seconds; overhead = wall x processes - unit time; % of wall x processes)")
    print(f"  {'configuration':<24}{'run':>5}{'wall':>7}{'units':>6}{'compute':>8}{'render':>7}{'other':>7}"
          f"{'writes':>7}{'overhd':>7}{'ovh%':>6}{'+wr%':>6}  {'in-unit/ready/no-work':<22}{'bound':>6}"
          f"  CPU-s celery/pg/here/others (machine busy, others' share)")
    for r in runs:
        f, c = r.figures, r.cpu
        split = f"{f['in_unit']:.1f}/{f['queued']:.1f}/{f['starved']:.1f}"
        print(f"  {r.config.name:<24}{r.rep:>5}{r.wall:>7.1f}{f['units']:>6}{f['compute']:>8.1f}{f['render']:>7.1f}"
              f"{f['other']:>7.1f}{f['writes']:>7.1f}{f['overhead']:>7.1f}{pct(f['overhead'], f['capacity']):>6}"
              f"{pct(f['overhead'] + f['writes'], f['capacity']):>6}  {split:<22}{f['bound']:>6.1f}"
              f"  {c['celery']:.1f}/{c['postgres']:.1f}/{c['here']:.1f}/{c['others']:.1f} ({c['busy_pct']:.0f}%, "
              f"{c['others_pct']:.0f}%)"
              + (f"  ({f['retried']} units retried)" if f["retried"] else ""))


def print_kinds(study: str, runs: list[Run]) -> None:
    """Where the time goes, by kind of unit, in the fastest run of each configuration."""
    print(f"\n[{study}] unit time by kind (seconds + write_seconds, summed; fastest run of each configuration)")
    kinds = kinds_in([u for r in runs for u in r.units])
    counts = Counter(u["kind"] for u in runs[0].units)
    print(f"  {'configuration':<24}" + "".join(f"{f'{k} ({counts[k]})':>14}" for k in kinds) + f"{'writes':>9}")
    for r in runs:
        per = defaultdict(float)
        for u in r.units:
            per[u["kind"]] += u["work"]
        print(f"  {r.config.name:<24}" + "".join(f"{per[k]:>14.2f}" for k in kinds)
              + f"{r.figures['writes']:>9.2f}")


def print_summary(study: str, best: dict[str, Run], configs: list[Config]) -> list[str]:
    print(f"\n[{study}] fastest run of each configuration")
    lines = []
    base = best.get("in-process")
    for config in configs:
        r = best.get(config.name)
        if r is None:
            continue
        f = r.figures
        share = (f["overhead"] + f["writes"]) / f["capacity"]
        vs = f"  {base.wall / r.wall:.2f}x in-process" if base and r is not base else ""
        print(f"  {config.name:<24}{r.wall:>7.1f} s  unit time {f['work']:.1f} s (compute {f['compute']:.1f}, "
              f"render {f['render']:.1f}, other {f['other']:.1f}, writes {f['writes']:.1f}); queue + claim "
              f"overhead {f['overhead']:.1f} s = {pct(f['overhead'], f['capacity'])}, with writes "
              f"{100 * share:.0f}% of {f['capacity']:.1f} s{vs}; other processes took "
              f"{r.cpu['others_pct']:.0f}% of the machine")
        if config.processes:
            proper = (f["in_unit"] + f["queued"] + f["writes"]) / f["capacity"]
            lines.append(f"  {study}, {config.name}: queue + database overhead {100 * share:.0f}% of the total; goal "
                         f"< {100 * GOAL_OVERHEAD:.0f}% -> {verdict(share < GOAL_OVERHEAD)} (of which idle waiting "
                         f"for dependencies {pct(f['starved'], f['capacity'])}; without it {100 * proper:.0f}% -> "
                         f"{verdict(proper < GOAL_OVERHEAD)})")
    for threads in sorted({c.threads for c in configs if c.processes}, key=lambda t: t or 0):
        one, two = (next((best[c.name] for c in configs if c.processes == n and c.threads == threads
                          and c.name in best), None) for n in (1, 2))
        if one is None or two is None:
            continue
        ideal = one.wall / max(one.figures["work"] / 2, one.figures["critical"])
        label = "torch default threads" if threads is None else f"{threads} torch thread(s) a process"
        lines.append(f"  {study}, {label}: 2 workers {one.wall / two.wall:.2f}x 1 worker ({one.wall:.1f} s -> "
                     f"{two.wall:.1f} s; the dependencies would allow at most {ideal:.2f}x with 1-worker unit "
                     f"times); goal >= {GOAL_SPEEDUP}x -> {verdict(one.wall / two.wall >= GOAL_SPEEDUP)}; summed unit "
                     f"time {one.figures['work']:.1f} s -> {two.figures['work']:.1f} s "
                     f"({two.figures['work'] / one.figures['work']:.2f}x: how much two processes at once slow "
                     f"each other's units)")
    return lines


# -- main -----------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the digits study only, one repetition")
    parser.add_argument("--studies", default=None, help="comma-separated demo slugs (default: demo-digits,"
                                                        "demo-breast-cancer; --quick: demo-digits)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds: every configuration started afresh "
                                                                  "(2; --quick 1)")
    parser.add_argument("--reps", type=int, default=1, help="measured runs of each study per round, after a "
                                                            "warm-up run (1)")
    parser.add_argument("--chunk", type=int, default=None, help="PREPARATION_CHUNK (stimuli per maps/render unit; "
                                                                "default: the setting, 64)")
    parser.add_argument("--no-single-thread", dest="single_thread", action="store_false",
                        help="skip the runs with OMP_NUM_THREADS=1 in the workers")
    parser.add_argument("--pg", default=DEFAULT_PG, help="PostgreSQL server (its postgres database is used to "
                                                         "create and drop the benchmark's)")
    parser.add_argument("--db", default=DEFAULT_DB)
    parser.add_argument("--keep", action="store_true", help="keep the database and DATA_DIR (and print them)")
    args = parser.parse_args()
    slugs = (args.studies or ("demo-digits" if args.quick else "demo-digits,demo-breast-cancer")).split(",")
    rounds, reps = args.rounds or (1 if args.quick else 2), args.reps
    if "bench" not in args.db:
        raise SystemExit(f"--db {args.db}: the benchmark drops its database; use a name containing 'bench'.")

    workdir = Path(tempfile.mkdtemp(prefix="studyapp_bench_prepare_"))
    redis_process = beat = worker = None
    try:
        redis_process = PrivateRedis(workdir)
        redis_process.start()
        broker = redis_process.url
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        env.update({"DATABASE_URL": f"{args.pg.rstrip('/')}/{args.db}", "DATA_DIR": str(workdir),
                    "CELERY_BROKER_URL": broker, "DJANGO_SETTINGS_MODULE": "studyapp.settings", "LOG_LEVEL": "warning",
                    "PYTHONUNBUFFERED": "1", "DJANGO_DEBUG": os.environ.get("DJANGO_DEBUG", "true")})
        if args.chunk:
            env["PREPARATION_CHUNK"] = str(args.chunk)
        started = time.perf_counter()
        recreate_database(args.pg, args.db)
        subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=env, check=True,
                       timeout=600)
        migrated = time.perf_counter() - started
        os.environ.clear()
        os.environ.update(env)
        import django

        django.setup()
        import torch
        from django.conf import settings

        from studyapp.services.explanations import explainer_device

        started = time.perf_counter()
        studies = build_demo_drafts(slugs)
        if [s.slug for s in studies] != slugs:
            raise SystemExit(f"unknown demo slugs in {slugs}; the demo has {[s.slug for s in studies]}")
        print(f"database {args.db}: created and migrated in {migrated:.1f} s; demo data, models and draft studies "
              f"built in {time.perf_counter() - started:.1f} s")
        print(f"machine: {os.cpu_count()} CPUs; torch {torch.__version__}, {torch.get_num_threads()} threads a process "
              f"by default; EXPLAINER_DEVICE {settings.EXPLAINER_DEVICE} ({explainer_device() or 'auto: '}"
              f"{'' if explainer_device() else ('cuda' if torch.cuda.is_available() else 'cpu')}); PREPARATION_CHUNK "
              f"{settings.PREPARATION_CHUNK}; lease {settings.PREPARATION_LEASE_SECONDS} s, dispatch every "
              f"{settings.PREPARATION_DISPATCH_SECONDS} s; broker: private redis-server at {broker}")

        configs = [Config("in-process", 0), Config("1 worker", 1), Config("2 workers", 2)]
        if args.single_thread:
            configs += [Config("1 worker, 1 thread", 1, 1), Config("2 workers, 1 thread", 2, 1)]
        print(f"configurations: {', '.join(c.name for c in configs)}; {rounds} round(s) of a warm-up run and "
              f"{reps} measured run(s) each; studies: "
              f"{', '.join(slugs)}")
        beat = Celery(["beat", "--loglevel", "INFO", "--schedule", str(workdir / "beat-schedule")],
                      workdir / "beat.log", env, "beat: Starting")
        runs: list[Run] = []
        serial = 0
        for round_ in range(1, rounds + 1):
            for config in configs:
                if config.processes:
                    serial += 1
                    worker = start_worker(config, env, workdir, serial)
                roots = (beat.process.pid, *((worker.process.pid,) if worker else ()))
                for rep in range(0, reps + 1):  # rep 0: the warm-up run, left out of the summary
                    for study in studies:
                        study_reset(study)
                        wall, units, cpu, summary = prepare_and_wait(study, config=config, roots=roots)
                        label = f"{round_}.{rep}" if rep else f"{round_}.w"
                        runs.append(Run(study.slug, config, label, wall, units, cpu,
                                        analyse(wall, units, config.processes), summary))
                        print(f"  run {label:<4} {study.slug:<20} {config.name:<22} {wall:6.1f} s  "
                              f"({len(units)} units)", flush=True)
                if worker is not None:
                    worker.stop()
                    worker = None

        goals = []
        for study in studies:
            mine = [r for r in runs if r.study == study.slug]
            print_made(study.slug, mine[-1])
            print_runs(study.slug, mine)
            best = {}
            for r in mine:
                if r.rep.endswith(".w"):
                    continue
                if r.config.name not in best or r.wall < best[r.config.name].wall:
                    best[r.config.name] = r
            print_kinds(study.slug, [best[c.name] for c in configs if c.name in best])
            goals += print_summary(study.slug, best, configs)
        print("\ngoals (issue 11):")
        for line in goals:
            print(line)
        errors = [line for line in (workdir / "beat.log").read_text().splitlines() + [
            line for p in workdir.glob("worker-*.log") for line in p.read_text().splitlines()]
                  if "Traceback" in line or "ERROR" in line]
        if errors:
            print(f"\nworker/beat logs: {len(errors)} error lines, e.g. {errors[:3]}")
    finally:
        for process in (worker, beat):
            if process is not None:
                process.stop()
        if redis_process is not None:
            redis_process.stop()
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        if args.keep:
            print(f"\nkept: DATABASE_URL={args.pg.rstrip('/')}/{args.db} DATA_DIR={workdir}")
        else:
            try:
                recreate_database(args.pg, args.db, create=False)
            except Exception as exc:  # never hide the run's own error behind a cleanup one
                print(f"dropping {args.db} failed: {exc}", file=sys.stderr)
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
