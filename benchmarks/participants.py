"""Load on the participant API: simulated participants over HTTP against gunicorn and PostgreSQL.

    .venv/bin/python benchmarks/participants.py --quick         # smoke run, about 1.5 minutes
    .venv/bin/python benchmarks/participants.py                 # 200 participants, think 3 s (~6 min)
    .venv/bin/python benchmarks/participants.py --workers 3 --threads 4 --keep

Database: its own, ``studyapp_bench_participants`` on postgres://postgres@127.0.0.1:5432 (``--db``,
``--pg``), dropped and created afresh, migrated with ``manage.py migrate``, and dropped at the end
unless ``--keep``. In it, a child process builds a live tabular study from the test factories
(control + integrated_gradients arms, 60 test and 20 training items; 5 learning trials with the
model's output and the aid, 20 test trials, 2 attention checks: 27 trials a participant; a
generic crowd id ``PID``, so every simulated participant is found again in the database by its
id; ``target_per_arm`` 10,000, so the study never fills), prepared in-process (Celery eager) and
launched.

Server: gunicorn (``studyapp.wsgi``) on 127.0.0.1 and a free port, ``--preload``, with Redis as in
production (``--redis``, database 12: the cache, and sessions read from Redis and written through
to PostgreSQL; ``--redis ''`` keeps sessions in PostgreSQL only, the embedded setup), production
settings (DEBUG off, collected static files; ``DJANGO_SECURE_COOKIES=false`` and no HTTPS redirect,
since the client speaks plain HTTP on loopback; ``--debug`` serves with DEBUG on), ``--workers`` processes
with ``--threads`` threads each (sync workers when 1, gthread otherwise), warmed up with unmeasured
requests. Default: 5 sync workers, gunicorn's 2 x CPUs + 1 for the 2-CPU machine it was written
on: the participant API is CPU-bound there (each request holds a worker for a dozen ORM queries),
and 3 sync or 4 x 2 gthread workers did no better within the run-to-run noise. The load generator
runs on the same machine and takes its share of the CPUs: the CPU seconds of gunicorn, of
PostgreSQL, of the generator and of everything else are printed per phase.

Phases, all in one run, each bounded in time:

1. bare view: ``--participants`` closed-loop clients (no think time) GET ``/healthz/`` (a JSON view
   doing SELECT 1) for ``--bare-seconds``; one connection per request, like the participants'
   client (urllib, no keep-alive).
2. participants: ``--participants`` simulated participants, one thread each, started evenly over
   ``--ramp`` seconds, each the real client (``studyapp.simulated_participants.run_participant``
   over ``HttpTransport``) from the study link to the completion code, answering at random,
   thinking ``--think`` seconds (exponential mean, default 3 s: people take seconds to look at an
   example and its aid; the simulated response times have a median of 2.5 s) before each answer. Stopped at
   ``--max-seconds`` if not done (a participant then stops before its next request).
3. trial endpoints at saturation: ``--participants`` participants enroll (not measured), then walk
   through their trials with no think time (GET trial, POST answer, and a GET state if the client
   sends one between trials; a participant who finishes enrolls again), measured for
   ``--bare-seconds`` after a few seconds of settling: the same closed loop as phase 1, so the two
   throughputs compare directly.

Printed: per operation the count, p50/p95/p99 latency (ms) and non-2xx replies; throughput in
requests/s and answers/s; participants finished; the ratio of phase 3 to phase 1; and integrity:
every answer a client got 200/201 for is a Response row (lost), no trial has two (duplicated),
count(Response) equals the answers acknowledged, and each participant's Response count equals what
its client got acknowledged. Goals (issue): p95 < 100 ms at 200 concurrent participants (judged
once all of them are enrolled: the burst of 200 enrollments in --ramp s, serialized by the study's
row lock, is printed beside it) on the
trial and answer endpoints; trial endpoints >= 0.5x the bare view; 0 lost or duplicated answers.
A missed time goal is printed as MISS (exit status 0); an integrity failure exits 1.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import (cpu_snapshot, free_port, pg_connect, recreate_database, stop_process,  # noqa: E402
                               verdict)

from studyapp.simulated_participants import (HttpTransport, SimulationError, Timings,  # noqa: E402
                                             run_participant)

DEFAULT_PG = "postgres://postgres@127.0.0.1:5432"
DEFAULT_DB = "studyapp_bench_participants"
DEFAULT_REDIS = "redis://127.0.0.1:6379/12"
N_TEST, N_TRAIN = 60, 20
DESIGN = {"blocks": [{"phase": "learning", "n_items": 5, "show_model_output": True, "show_aid": True},
                     {"phase": "test", "n_items": 20}],
          "attention_checks": {"count": 2}, "min_instruction_seconds": 0, "abandonment_minutes": 60,
          "crowd": {"source": "generic", "id_parameter": "PID"}}
TARGET_PER_ARM = 10_000
GOAL_P95_MS, GOAL_CONCURRENCY, GOAL_RATIO = 100.0, 200, 0.5
TRIAL_OPS = ("trial", "answer", "state")  # what a participant's client sends from one trial to the next
OP_ORDER = ("landing", "consent", "instructions", "trial", "answer", "state", "media", "questionnaire",
            "demographics", "debrief", "completion", "healthz")
HTTP_TIMEOUT = 30.0


# -- database -----------------------------------------------------------------------------------

def child_env(args, data_dir: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    env.update({"DATABASE_URL": f"{args.pg.rstrip('/')}/{args.db}", "DATA_DIR": data_dir, "DJANGO_DEBUG": "true",
                "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost", "CELERY_BROKER_URL": "", "LOG_LEVEL": "warning",
                "DJANGO_SETTINGS_MODULE": "studyapp.settings", "PYTHONUNBUFFERED": "1"})
    # The rate limits stay on (their cost is part of every request) but far above this load's pace:
    # hundreds of participants from one address, answering without think time in phase 3.
    env.update({"PARTICIPANT_ENTRY_RATE": "1000000/min", "PARTICIPANT_ANSWER_RATE": "1000000/min"})
    if args.redis:
        env["REDIS_URL"] = args.redis  # also the broker; the child prepares the study in-process (eager) anyway
    if not args.debug:
        # Production settings (DEBUG off) over plain HTTP on loopback: cookies without the Secure
        # flag (an HTTP client would never send them back), no HTTPS redirect, collected static files.
        env.update({"DJANGO_DEBUG": "false", "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
                    "DJANGO_SECURE_COOKIES": "false", "DJANGO_SECURE_SSL_REDIRECT": "false",
                    "DJANGO_SECURE_HSTS_SECONDS": "0", "STATIC_ROOT": os.path.join(data_dir, "static")})
    return env


# -- child: build the live study (Django) --------------------------------------------------------

def child_build() -> dict:
    import django

    django.setup()
    from worker import app

    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    from studyapp.models import Study, Trial
    from studyapp.services.studies import study_launch, study_prepare
    from tests.factories import StimulusFactory, study_with_arms

    started = time.perf_counter()
    study = study_with_arms()
    StimulusFactory.create_batch(N_TEST - 6, dataset=study.dataset, split="test")
    StimulusFactory.create_batch(N_TRAIN - 4, dataset=study.dataset, split="train")
    Study.objects.filter(pk=study.pk).update(config=DESIGN, target_per_arm=TARGET_PER_ARM)
    study.refresh_from_db()
    study_prepare(study=study)  # autocommit: the on-commit task runs (eagerly) as its atomic block ends
    study.refresh_from_db()
    if study.state != Study.State.READY:
        raise SystemExit(f"preparation left the study {study.state}: {json.dumps(study.preparation, default=str)[:2000]}")
    study = study_launch(study=study)
    return {"public_id": str(study.public_id), "id": study.pk, "seconds": time.perf_counter() - started,
            "trials": Trial.objects.count()}


# -- server -------------------------------------------------------------------------------------

def start_gunicorn(args, env: dict, port: int, log: Path) -> subprocess.Popen:
    command = [str(ROOT / ".venv/bin/gunicorn"), "studyapp.wsgi:application", "--bind", f"127.0.0.1:{port}",
               "--workers", str(args.workers), "--threads", str(args.threads),
               "--worker-class", "gthread" if args.threads > 1 else "sync",
               "--timeout", "60", "--graceful-timeout", "5", "--backlog", "2048", "--log-level", "warning",
               "--error-logfile", str(log), *(["--preload"] if args.preload else [])]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_healthy(base_url: str, server: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"gunicorn exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(base_url + "/healthz/", timeout=5) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"/healthz/ did not answer 200 within {seconds:.0f} s:\n{log.read_text()[-3000:]}")


def warm_up(base_url: str, study: str, *, clients: int, seconds: float) -> int:
    """Unmeasured requests until every worker has loaded the URLconf, DRF and the templates."""
    paths = ("/healthz/", f"/s/{study}/", f"/api/participate/{study}/state")  # the last: 401, no session
    deadline = time.monotonic() + seconds
    done = Counter()

    def worker(i: int) -> None:
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base_url + paths[done[i] % len(paths)], timeout=HTTP_TIMEOUT) as r:
                    r.read()
            except urllib.error.HTTPError:
                pass
            done[i] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + HTTP_TIMEOUT)
    return sum(done.values())


# -- CPU accounting (Linux /proc) ----------------------------------------------------------------

def cpu_line(before: dict, after: dict, phase: Phase) -> str:
    """CPU seconds by whom over the phase, and per request served (all that finished in it)."""
    d = {k: after[k] - before[k] for k in before}
    n = sum(phase.status_counts().values())
    per = f"; per request: gunicorn {1000 * d['tree'] / n:.1f} ms, PostgreSQL {1000 * d['postgres'] / n:.1f} ms" \
        if n else ""
    busy = d["total"] - d["idle"] - d["steal"]
    others = max(0.0, busy - d["tree"] - d["postgres"] - d["here"])
    stolen = f", {100 * d['steal'] / d['total']:.0f}% stolen" if d["steal"] > 0.01 * d["total"] else ""
    return (f"  CPU over {d['wall']:.1f} s wall ({os.cpu_count()} CPUs): machine {100 * busy / d['total']:.0f}% busy"
            f"{stolen}; CPU-seconds: gunicorn {d['tree']:.1f}, PostgreSQL {d['postgres']:.1f}, load generator "
            f"{d['here']:.1f}, other processes {others:.1f}{per}")


# -- the client: the real one, timed and with a ledger of answers --------------------------------

class Deadline(Exception):
    """The phase is over: the participant stops before its next request."""


class Ledger:
    """Answers as the clients saw them (appends from many threads; list.append is atomic)."""

    def __init__(self) -> None:
        self.acked: list[tuple[str, str, str, int]] = []  # (participant id, trial, idempotency key, status)
        self.unanswered: list[tuple[str, str, str]] = []  # sent, no reply (timeout, connection error)
        self.refused: list[tuple[str, str, int]] = []  # sent, a non-2xx reply


class Window:
    """When a phase ends (``deadline``, monotonic seconds; movable) and, for the closed loop, the
    start signal the enrolled participants wait for before their first trial."""

    def __init__(self, deadline: float, *, gated: bool = False) -> None:
        self.deadline = deadline
        self.go = threading.Event()
        if not gated:
            self.go.set()
        self.waiting = 0
        self.lock = threading.Lock()

    def wait_for_start(self) -> None:
        with self.lock:
            self.waiting += 1
        self.go.wait(max(0.0, self.deadline - time.monotonic()))

    def open(self) -> bool:
        return time.monotonic() < self.deadline


class BenchTransport(HttpTransport):
    """HttpTransport that times the requests run_participant does not time itself, counts the
    replies by operation and status, records every answer in the ledger, and stops at the end of
    the window (before a request, never during one)."""

    TIMED_BY_CLIENT = ("landing", "consent", "trial", "answer", "media")

    def __init__(self, base_url: str, *, pid: str, timings: Timings, statuses: Counter, late: Counter,
                 ledger: Ledger, window: Window) -> None:
        super().__init__(base_url, timeout=HTTP_TIMEOUT)
        self.pid, self.timings, self.statuses, self.late = pid, timings, statuses, late
        self.ledger, self.window = ledger, window
        self.waited = False

    @staticmethod
    def operation(path: str) -> str:
        if path.startswith("/s/"):
            return "landing"
        if "/media/" in path:
            return "media"
        last = path.rstrip("/").rsplit("/", 1)[-1]
        return last if last in OP_ORDER else "other"

    def _call(self, method: str, path: str, payload: dict | None):
        op = self.operation(path)
        if op == "trial" and not self.waited:
            self.waited = True
            if not self.window.go.is_set():
                self.window.wait_for_start()  # closed loop: enrolled; wait until all are
        if not self.window.open():
            raise Deadline
        started = time.perf_counter()
        try:
            reply = super().get(path) if method == "GET" else super().post(path, payload)
        except Exception as exc:
            self.statuses[(op, exc.__class__.__name__)] += 1
            if op == "answer":
                self.ledger.unanswered.append((self.pid, path.split("/")[-2], str(payload["idempotency_key"])))
            raise
        if op not in self.TIMED_BY_CLIENT:
            self.timings.add(op, time.perf_counter() - started)
        self.statuses[(op, reply.status)] += 1
        if not self.window.open():  # finished after the end of the window
            self.late[(op, reply.status)] += 1
        if op == "answer":
            trial = path.split("/")[-2]
            if reply.status in (200, 201):
                self.ledger.acked.append((self.pid, trial, str(payload["idempotency_key"]), reply.status))
            else:
                self.ledger.refused.append((self.pid, trial, reply.status))
        return reply

    def get(self, path: str):
        return self._call("GET", path, None)

    def post(self, path: str, payload: dict | None):
        return self._call("POST", path, payload)


class StampedTimings(Timings):
    """Timings that also keep when each request ended (monotonic seconds), so the steady state
    (every participant enrolled) can be told from the enrollment burst at the start."""

    def __init__(self) -> None:
        super().__init__()
        self.ended: dict[str, list[float]] = defaultdict(list)

    def add(self, name: str, seconds: float) -> None:
        super().add(name, seconds)
        self.ended[name].append(time.monotonic())


class Phase:
    """What one phase measured: latencies by operation, replies by status, outcomes, wall time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.timings: list[Timings] = []
        self.statuses: list[Counter] = []
        self.late: list[Counter] = []  # replies that came after the end of the window
        self.outcomes: Counter = Counter()
        self.errors: Counter = Counter()
        self.sessions: list[float] = []  # seconds from the study link to the completion code
        self.lock = threading.Lock()
        self.started = self.ended = 0.0
        self.window: float | None = None  # the measured window of a closed-loop phase

    def outcome(self, outcome: str, error: str | None = None) -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            if error:
                self.errors[error[:160]] += 1

    def samples(self, *, after: float | None = None) -> dict[str, np.ndarray]:
        """Latencies by operation; ``after``: only requests that ended after that monotonic time."""
        merged: dict[str, list[float]] = defaultdict(list)
        for t in self.timings:
            for op, values in list(t.samples.items()):
                if after is None:
                    merged[op].extend(values)
                else:
                    merged[op].extend(v for v, end in zip(values, t.ended[op]) if end > after)
        return {op: np.asarray(v) for op, v in merged.items() if v}

    def all_enrolled_at(self) -> float | None:
        """When the last participant's enrollment ("I agree") was answered."""
        ends = [end for t in self.timings for end in t.ended.get("consent", [])]
        return max(ends) if ends else None

    def status_counts(self) -> Counter:
        total: Counter = Counter()
        for c in self.statuses:
            total.update(c)
        return total

    def counted(self) -> Counter:
        """Replies by (operation, status) for the throughput: of a closed loop, those that came
        within the window; of the participants phase, all."""
        counts = self.status_counts()
        if self.window is not None:
            for c in list(self.late):
                counts.subtract(c)
        return +counts

    @property
    def seconds(self) -> float:
        return self.window if self.window is not None else self.ended - self.started


def participant_thread(phase: Phase, *, base_url: str, study: str, pids: SharedIds, seed: int, think: float,
                       ledger: Ledger, window: Window, delay: float = 0.0, loop: bool = False) -> None:
    """One simulated participant after another (``loop``) or just one, until the window closes."""
    if delay:
        time.sleep(delay)
    rng = np.random.default_rng(seed)
    while window.open():
        pid = next(pids)
        timings, statuses, late = StampedTimings(), Counter(), Counter()
        phase.timings.append(timings)
        phase.statuses.append(statuses)
        phase.late.append(late)
        transport = BenchTransport(base_url, pid=pid, timings=timings, statuses=statuses, late=late, ledger=ledger,
                                   window=window)
        started = time.monotonic()
        try:
            outcome = run_participant(transport=transport, study_public_id=study, rng=rng, think_seconds=think,
                                      timings=timings, params={"PID": pid})
            phase.outcome(outcome.outcome)
            phase.sessions.append(time.monotonic() - started)
        except Deadline:
            phase.outcome("stopped at the deadline")
        except SimulationError as exc:
            phase.outcome("failed", str(exc))
        except Exception as exc:  # a timeout or a dropped connection: this participant gives up
            phase.outcome("failed", f"{exc.__class__.__name__}: {exc}")
        if not loop:
            return


class SharedIds:
    """A thread-safe source of fresh participant ids (the crowd id PID)."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.n, self.lock = prefix, 0, threading.Lock()

    def __iter__(self):
        return self

    def __next__(self) -> str:
        with self.lock:
            self.n += 1
            return f"{self.prefix}-{self.n:06d}"


def join_all(threads: list[threading.Thread], window: Window) -> int:
    """Join until the window's end plus one HTTP timeout; returns how many are still running."""
    for t in threads:
        t.join(max(0.0, window.deadline - time.monotonic()) + HTTP_TIMEOUT + 5)
    return sum(t.is_alive() for t in threads)


def run_participants(*, base_url: str, study: str, n: int, think: float, ramp: float, max_seconds: float,
                     ledger: Ledger, seed: int) -> Phase:
    """Phase 2: n participants, one thread each, started evenly over ``ramp`` seconds."""
    phase = Phase("participants")
    pids = SharedIds("load")
    phase.started = time.monotonic()
    window = Window(phase.started + max_seconds)
    threads = [threading.Thread(target=participant_thread, daemon=True, args=(phase,),
                                kwargs=dict(base_url=base_url, study=study, pids=pids, seed=seed + i, think=think,
                                            ledger=ledger, window=window, delay=ramp * i / n))
               for i in range(n)]
    for t in threads:
        t.start()
    alive = join_all(threads, window)
    phase.ended = time.monotonic()
    if alive:
        phase.outcomes["still running (abandoned)"] += alive
    return phase


def run_trial_loop(*, base_url: str, study: str, n: int, seconds: float, ledger: Ledger, seed: int,
                   on_start=lambda: None, enroll_timeout: float = 120.0) -> Phase:
    """Phase 3: n participants enroll (not measured), then walk their trials at once, no think time;
    measured for ``seconds`` after a settling time (the first wave of n requests at once)."""
    phase = Phase("trial endpoints, closed loop")
    pids = SharedIds("loop")
    window = Window(time.monotonic() + enroll_timeout, gated=True)
    threads = [threading.Thread(target=participant_thread, daemon=True, args=(phase,),
                                kwargs=dict(base_url=base_url, study=study, pids=pids, seed=seed + i, think=0.0,
                                            ledger=ledger, window=window, loop=True))
               for i in range(n)]
    for t in threads:
        t.start()
    while window.waiting < n and window.open() and any(t.is_alive() for t in threads):
        time.sleep(0.05)
    enrolled = window.waiting
    settle = min(5.0, seconds / 2)
    window.deadline = time.monotonic() + settle + seconds + 1
    window.go.set()
    time.sleep(settle)
    for timings in list(phase.timings):  # the measured window starts now
        for values in list(timings.samples.values()):
            values.clear()
    for counter in list(phase.statuses) + list(phase.late):
        counter.clear()
    on_start()
    phase.started = time.monotonic()
    window.deadline = phase.started + seconds
    alive = join_all(threads, window)
    phase.ended = time.monotonic()
    phase.window = seconds
    if enrolled < n:
        phase.outcomes[f"not enrolled in {enroll_timeout:.0f} s"] += n - enrolled
    if alive:
        phase.outcomes["still running (abandoned)"] += alive
    return phase


def run_bare(*, base_url: str, n: int, seconds: float) -> Phase:
    """Phase 1: n closed-loop clients on GET /healthz/, one connection per request."""
    phase = Phase("bare view, closed loop")
    opener = urllib.request.build_opener()
    phase.started = time.monotonic()
    deadline = phase.started + seconds

    def worker() -> None:
        timings, statuses, late = StampedTimings(), Counter(), Counter()
        phase.timings.append(timings)
        phase.statuses.append(statuses)
        phase.late.append(late)
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                with opener.open(base_url + "/healthz/", timeout=HTTP_TIMEOUT) as reply:
                    reply.read()
                    status = reply.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except Exception as exc:
                statuses[("healthz", exc.__class__.__name__)] += 1
                continue
            timings.add("healthz", time.perf_counter() - started)
            statuses[("healthz", status)] += 1
            if time.monotonic() > deadline:
                late[("healthz", status)] += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + HTTP_TIMEOUT + 5)
    phase.ended = time.monotonic()
    phase.window = seconds
    return phase


# -- report -------------------------------------------------------------------------------------

def pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if len(values) else float("nan")


def print_phase(phase: Phase, cpu: str) -> dict[str, np.ndarray]:
    samples = phase.samples()
    statuses = phase.status_counts()
    counted = phase.counted()
    requests = sum(counted.values())
    answers = sum(v for (op, code), v in counted.items() if op == "answer" and code in (200, 201))
    within = "" if phase.window is None else f" ({sum(statuses.values()) - requests:,} more finished after it)"
    print(f"\n[{phase.name}] {phase.seconds:.1f} s: {requests:,} requests = {requests / phase.seconds:,.1f} requests/s"
          + (f", {answers:,} answers = {answers / phase.seconds:,.1f} answers/s" if answers else "") + within)
    print(f"  {'operation':<14}{'count':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}  non-2xx")
    for op in sorted(samples, key=lambda o: OP_ORDER.index(o) if o in OP_ORDER else 99):
        v = samples[op]
        bad = {str(code): n for (o, code), n in statuses.items() if o == op and not (isinstance(code, int)
                                                                                       and 200 <= code < 300)}
        print(f"  {op:<14}{len(v):>8,}{pct(v, 50):>9.1f}{pct(v, 95):>9.1f}{pct(v, 99):>9.1f}{pct(v, 100):>9.1f}"
              f"  {bad or '-'}")
    if statuses.get(("trial", 409)):
        print("  (trial 409: every trial answered, the client's cue to fetch the next step)")
    unseen = {f"{o} {c}": n for (o, c), n in statuses.items() if o not in samples}
    if unseen:
        print(f"  requests without a latency sample (errors): {unseen}")
    if phase.outcomes:
        sessions = np.asarray(phase.sessions)
        print(f"  participants: {dict(phase.outcomes)}" + (
            f"; a finished session took {np.median(sessions):.1f} s (median), {sessions.max():.1f} s (longest)"
            if len(sessions) else ""))
    for message, n in phase.errors.most_common(5):
        print(f"  error x{n}: {message}")
    print(cpu)
    return samples


def integrity(args, study_public_id: str, ledger: Ledger) -> bool:
    connection = pg_connect(args.pg, args.db)
    with connection.cursor() as cursor:
        cursor.execute("""
            SELECT p.external_id, t.public_id::text, r.idempotency_key::text
            FROM studyapp_response r JOIN studyapp_trial t ON t.id = r.trial_id
            JOIN studyapp_participant p ON p.id = t.participant_id JOIN studyapp_study s ON s.id = p.study_id
            WHERE s.public_id = %s""", [study_public_id])
        rows = cursor.fetchall()
        cursor.execute("SELECT count(*) FROM studyapp_response")
        all_responses = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM (SELECT trial_id FROM studyapp_response GROUP BY trial_id "
                       "HAVING count(*) > 1) d")
        shared_trials = cursor.fetchone()[0]
        cursor.execute("SELECT count(*), count(DISTINCT external_id) FROM studyapp_participant")
        n_participants, n_external = cursor.fetchone()
    connection.close()
    norm = lambda u: u.replace("-", "")  # noqa: E731
    stored = {norm(key): (pid, norm(trial)) for pid, trial, key in rows}
    acked = ledger.acked
    acked_keys = {norm(k): (pid, norm(t)) for pid, t, k, _ in acked}
    lost = [k for k, where in acked_keys.items() if stored.get(k) != where]
    created_per_trial = Counter(norm(t) for _, t, _, status in acked if status == 201)
    duplicated = shared_trials + sum(n - 1 for n in created_per_trial.values() if n > 1) \
        + (len(acked) - len(acked_keys))
    unacked = [k for k in stored if k not in acked_keys]
    unanswered_keys = {norm(k) for _, _, k in ledger.unanswered}
    unexplained = [k for k in unacked if k not in unanswered_keys]
    per_db = Counter(pid for pid, _, _ in rows)
    per_client = Counter(pid for pid, _, _, _ in acked)
    mismatched = {pid: (per_client.get(pid, 0), per_db.get(pid, 0)) for pid in set(per_db) | set(per_client)
                  if per_client.get(pid, 0) != per_db.get(pid, 0)}
    explained = Counter(stored[k][0] for k in unacked if k in unanswered_keys)
    unexplained_mismatch = {pid: c for pid, c in mismatched.items() if c[1] - c[0] != explained.get(pid, 0)}
    resends = sum(1 for *_, status in acked if status == 200)

    print(f"\nintegrity ({len(per_client):,} participants answered over HTTP):")
    print(f"  answers acknowledged (200/201): {len(acked):,} ({resends} as 200 'already stored'); sent without "
          f"a reply: {len(ledger.unanswered)}; refused (non-2xx): {len(ledger.refused)} "
          f"{dict(Counter(s for *_, s in ledger.refused)) or ''}")
    print(f"  Response rows: {len(rows):,} for the study ({all_responses:,} in the database); "
          f"count(Response) == answers acknowledged: {len(rows) == len(acked)}"
          + (f" (+{len(unacked)} stored whose reply the client never got)" if unacked else ""))
    print(f"  participants in the database: {n_participants:,} ({n_external:,} distinct ids); per participant, "
          f"Response rows == answers its client got acknowledged: {len(per_client) - len(mismatched):,} of "
          f"{len(per_client):,}" + (f"; mismatched {dict(list(mismatched.items())[:5])}" if mismatched else ""))
    if unexplained:
        print(f"  stored answers no client sent: {len(unexplained)}")
    ok = not lost and not duplicated and not unexplained and not unexplained_mismatch
    print(f"  lost answers: {len(lost)}, duplicated answers: {duplicated}   "
          f"goal: 0 lost or duplicated answers -> {'PASS' if ok else 'FAIL'}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=None, help="concurrent participants (default 200)")
    parser.add_argument("--think", type=float, default=None, help="mean think time before an answer, s (3.0)")
    parser.add_argument("--ramp", type=float, default=None, help="participants start over this many s (5)")
    parser.add_argument("--bare-seconds", type=float, default=None, help="each closed-loop phase, s (10)")
    parser.add_argument("--max-seconds", type=float, default=300, help="the participants phase stops here")
    parser.add_argument("--workers", type=int, default=5, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker (> 1: gthread workers)")
    parser.add_argument("--no-preload", dest="preload", action="store_false",
                        help="workers import the app themselves (default: gunicorn --preload)")
    parser.add_argument("--warm-up", type=float, default=3.0, help="unmeasured requests before phase 1, s")
    parser.add_argument("--quick", action="store_true", help="30 participants, think 0.2 s, 3 s closed loops")
    parser.add_argument("--skip-saturation", action="store_true", help="no phase 3")
    parser.add_argument("--pg", default=DEFAULT_PG, help="PostgreSQL server (its postgres database is used "
                                                         "to create and drop the benchmark's)")
    parser.add_argument("--db", default=DEFAULT_DB)
    parser.add_argument("--redis", default=DEFAULT_REDIS, help="Redis for the cache and sessions, as in production "
                        "(sessions read from Redis, written through to PostgreSQL); '' for none: sessions in "
                        "PostgreSQL only")
    parser.add_argument("--keep", action="store_true", help="keep the database (and print how to reach it)")
    parser.add_argument("--debug", action="store_true", help="serve with DJANGO_DEBUG=true (default: production "
                                                             "settings, DEBUG off, over plain HTTP on loopback)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child-build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child_build:
        print(json.dumps(child_build()))
        return
    quick = args.quick
    args.participants = args.participants or (30 if quick else 200)
    args.think = args.think if args.think is not None else (0.2 if quick else 3.0)
    args.ramp = args.ramp if args.ramp is not None else (2.0 if quick else 5.0)
    args.bare_seconds = args.bare_seconds or (3.0 if quick else 10.0)
    if "bench" not in args.db:
        raise SystemExit(f"--db {args.db}: the benchmark drops its database; use a name containing 'bench'.")

    data_dir = tempfile.mkdtemp(prefix="studyapp_bench_participants_")
    env = child_env(args, data_dir)
    server = None
    ok = True
    try:
        started = time.perf_counter()
        recreate_database(args.pg, args.db)
        if not args.debug:
            subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"], cwd=ROOT,
                           env=env, check=True)
        subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=env, check=True,
                       timeout=600)
        migrated = time.perf_counter() - started
        built = subprocess.run([sys.executable, __file__, "--child-build"], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=600)
        if built.returncode != 0:
            raise SystemExit(f"building the study failed:\n{built.stdout[-3000:]}{built.stderr[-3000:]}")
        study = json.loads(built.stdout.strip().splitlines()[-1])
        print(f"database {args.db}: created and migrated in {migrated:.1f} s; live study {study['public_id']} "
              f"built, prepared and launched in {study['seconds']:.1f} s")

        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        log = Path(data_dir) / "gunicorn.log"
        server = start_gunicorn(args, env, port, log)
        wait_healthy(base_url, server, log)
        warmed = warm_up(base_url, study["public_id"], clients=2 * args.workers * args.threads,
                         seconds=args.warm_up)
        kind = f"{args.workers} sync workers" if args.threads == 1 else \
            f"{args.workers} gthread workers x {args.threads} threads"
        print(f"gunicorn at {base_url}: {kind} (on {os.cpu_count()} CPUs, shared with PostgreSQL and this load "
              f"generator), {'--preload, ' if args.preload else ''}DEBUG {'on' if args.debug else 'off'}; warmed up with {warmed} requests in "
              f"{args.warm_up:g} s; the client opens one connection per request (urllib, no keep-alive)")
        per = sum(b["n_items"] for b in DESIGN["blocks"]) + DESIGN["attention_checks"]["count"]
        print(f"{args.participants} participants x {per} trials, think {args.think:g} s (exponential mean) "
              f"before each answer, started over {args.ramp:g} s; closed loops {args.bare_seconds:g} s each")

        ledger = Ledger()
        before = cpu_snapshot((server.pid,))
        bare = run_bare(base_url=base_url, n=args.participants, seconds=args.bare_seconds)
        bare_samples = print_phase(bare, cpu_line(before, cpu_snapshot((server.pid,)), bare))

        before = cpu_snapshot((server.pid,))
        load = run_participants(base_url=base_url, study=study["public_id"], n=args.participants, think=args.think,
                                ramp=args.ramp, max_seconds=args.max_seconds, ledger=ledger, seed=args.seed)
        load_samples = print_phase(load, cpu_line(before, cpu_snapshot((server.pid,)), load))

        loop = loop_samples = None
        if not args.skip_saturation:
            marks = []  # the CPU snapshot at the start of the measured window
            loop = run_trial_loop(base_url=base_url, study=study["public_id"], n=args.participants,
                                  seconds=args.bare_seconds, ledger=ledger, seed=args.seed + 100_000,
                                  on_start=lambda: marks.append(cpu_snapshot((server.pid,))))
            loop_samples = print_phase(loop, cpu_line(marks[0], cpu_snapshot((server.pid,)), loop))

        errors = [line for line in log.read_text().splitlines() if "Traceback" in line or "ERROR" in line]
        if errors:
            print(f"\ngunicorn log: {len(errors)} error lines, e.g. {errors[:3]}")

        # -- goals
        print("\ngoals:")
        finished = sum(n for o, n in load.outcomes.items() if o in ("completed", "failed_checks", "screened_out"))
        print(f"  participants finished: {finished} of {args.participants} "
              f"(outcomes {dict(load.outcomes)})")
        # The goal is judged once every participant is in the study (the steady state); the
        # enrollment burst at the start (all of them within --ramp s, each enrollment serialized
        # by the study's row lock for balanced assignment) is printed beside it.
        enrolled = load.all_enrolled_at()
        steady = load.samples(after=enrolled) if enrolled is not None else load_samples
        for op in ("trial", "answer"):
            v, whole = steady.get(op, np.asarray([])), load_samples.get(op, np.asarray([]))
            p95 = pct(v, 95)
            note = "" if args.participants >= GOAL_CONCURRENCY else \
                f" [measured at {args.participants}, not {GOAL_CONCURRENCY}]"
            print(f"  {op}: p95 {p95:.1f} ms (p50 {pct(v, 50):.1f}, p99 {pct(v, 99):.1f}; {len(v):,} requests) at "
                  f"{args.participants} concurrent participants, all enrolled; goal p95 < {GOAL_P95_MS:.0f} ms at "
                  f"{GOAL_CONCURRENCY} concurrent participants -> {verdict(p95 < GOAL_P95_MS)}{note}")
            print(f"    with the enrollment burst at the start: p95 {pct(whole, 95):.1f} ms over all "
                  f"{len(whole):,} requests")
        bare_rate = sum(bare.counted().values()) / bare.seconds
        bare_v = bare_samples.get("healthz", np.asarray([]))
        print(f"  bare view /healthz/: {bare_rate:,.1f} requests/s, p50 {pct(bare_v, 50):.1f} / p95 "
              f"{pct(bare_v, 95):.1f} / p99 {pct(bare_v, 99):.1f} ms at {args.participants} closed-loop clients")
        if loop is not None:
            counts = loop.counted()
            rate = sum(n for (op, _), n in counts.items() if op in TRIAL_OPS) / loop.seconds
            trial_steps = sum(n for (op, c), n in counts.items() if op == "answer" and c in (200, 201)) / loop.seconds
            all_loop = np.concatenate([loop_samples.get(op, np.asarray([])) for op in TRIAL_OPS])
            ratio = rate / bare_rate if bare_rate else float("nan")
            print(f"  trial endpoints (trial + answer + state) at saturation: {rate:,.1f} requests/s "
                  f"({trial_steps:,.1f} answered trials/s), p50 {pct(all_loop, 50):.1f} / p95 {pct(all_loop, 95):.1f}"
                  f" / p99 {pct(all_loop, 99):.1f} ms at {args.participants} closed-loop participants")
            for op in (op for op in TRIAL_OPS if op in loop_samples):
                v = loop_samples[op]
                print(f"    {op:<7} p50 {pct(v, 50):7.1f} ms = {pct(bare_v, 50) / pct(v, 50) if len(v) else float('nan'):.2f}x"
                      f" the bare view's speed (p50 ratio)")
            print(f"  throughput ratio trial endpoints / bare view: {ratio:.2f}x; goal trial endpoints >= "
                  f"{GOAL_RATIO}x bare view -> {verdict(ratio >= GOAL_RATIO)}")
        ok = integrity(args, study["public_id"], ledger)
    finally:
        if server is not None:
            stop_process(server)  # our own process group (start_new_session)
        if args.keep:
            print(f"\nkept: DATABASE_URL={args.pg.rstrip('/')}/{args.db} DATA_DIR={data_dir}")
        else:
            try:
                recreate_database(args.pg, args.db, create=False)
            except Exception as exc:  # never hide the run's own error behind a cleanup one
                print(f"dropping {args.db} failed: {exc}", file=sys.stderr)
            shutil.rmtree(data_dir, ignore_errors=True)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
