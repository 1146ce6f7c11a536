"""Fault drills under load: simulated participants keep answering while the stack is broken in turn.

    .venv/bin/python benchmarks/load.py --quick     # 30 participants, 4 s faults, about 2 minutes
    .venv/bin/python benchmarks/load.py             # 200 participants, think 3 s, 10 s faults (~4 min)

Stack, all private to the run and removed at the end (the machine's shared PostgreSQL and Redis
are never touched, since other work uses them): a PostgreSQL 15 cluster made with ``initdb`` in a
temporary directory (trust auth, loopback, a free port; run as the ``postgres`` user when this
runs as root), a ``redis-server`` on a free port keeping nothing on disk, and gunicorn as in
``benchmarks/participants.py`` (5 sync workers, ``--preload``, production settings, Redis for the
cache and sessions). The live study, its design and the real client are the participant
benchmark's: ``run_participant`` over HTTP, 27 trials a participant, answering at random after an
exponential think time (``--think``, mean 3 s; 0.2 s with ``--quick``). Each of ``--participants``
threads runs one participant after another until the run ends.

The client retries like the participant page (static/participant/api.js): a request that fails
for the network (connection refused or reset, timeout) or with 408/425/429/500/502/503/504 is sent
again, the same request with the same idempotency key, after 0.5 s doubling to 15 s; it gives up
after ``--give-up`` seconds (the page never does; a participant who gives up is counted as failed).
Latencies of trial and answer are as the participant sees them: from the first send to the reply
that counted, retries included.

Windows, in turn, each ``--fault`` seconds of fault followed by ``--settle`` seconds of recovery
while the participants keep going: baseline (no fault); (1) one gunicorn worker SIGKILLed
(gunicorn starts another); (2) PostgreSQL restarted (``pg_ctl restart -m fast``) and kept down for
--fault s; (3) Redis stopped for --fault s, then started again on the same port (empty: sessions
come back from PostgreSQL); (4) one participant's network drops for --fault s: the reply to the
answer it is sending is lost after the server got it, and every request it sends until the network
is back fails with a connection error (it resends the answer with the same key, as the page does).

The stack (``DrillStack``), the crowd (``Crowd``), the drills (``drill_*``) and the integrity
check (``stored_answers``, ``answer_integrity``) are also tests/test_fault_drills.py's: the suite
runs the PostgreSQL-restart and Redis-down drills with 20 participants on 2 workers.

Printed per window: requests/s served, p50/p95/max of trial and answer, errors the clients saw by
kind (each failed attempt: an exception class or an HTTP status), retries and participants that
failed, and integrity for the answers sent in the window: lost (acknowledged 200/201 but not in
the database under that key and trial) and duplicated (a trial with two Response rows, or two
201s for one trial). Then the participant benchmark's whole-run integrity check. Exit status 1 on
any lost or duplicated answer.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import (PrivatePostgres, PrivateRedis, free_port, pg_connect,  # noqa: E402
                               recreate_database, stop_process)
from benchmarks.participants import (BenchTransport, Deadline, Ledger, SharedIds, StampedTimings,  # noqa: E402
                                     Window, child_env, integrity, pct, start_gunicorn,
                                     wait_healthy, warm_up)

from studyapp.simulated_participants import SimulationError, run_participant  # noqa: E402

DB = "studyapp_bench_load"
RETRYABLE = {408, 425, 429, 500, 502, 503, 504}  # as static/participant/api.js
NETWORK_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException, TimeoutError)


# -- the stack: private PostgreSQL and Redis, a live study, gunicorn -----------------------------

class DrillStack:
    """Everything a drill breaks, private to the run and removed by ``close``: a PostgreSQL
    cluster of its own (benchmarks/common.PrivatePostgres), a redis-server of its own (the cache
    and sessions, as in production), the participant benchmark's live study (27 trials a
    participant) in a fresh database, and gunicorn (``workers`` sync workers, ``--preload``,
    production settings, rate limits on but far above the load) on a free port.

    Used by ``main`` below and by tests/test_fault_drills.py: one way to build it, not two.
    """

    def __init__(self, *, workers: int, workdir: Path) -> None:
        self.workers, self.workdir = workers, workdir
        self.pg: PrivatePostgres | None = None
        self.redis: PrivateRedis | None = None
        self.server: subprocess.Popen | None = None
        self.log = workdir / "gunicorn.log"
        self.base_url = self.study = ""
        self.seconds = 0.0  # to build it
        self.stages: dict[str, float] = {}  # seconds per stage of the build

    def start(self, *, warm_up_seconds: float = 2.0) -> DrillStack:
        began = started = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal started
            self.stages[stage] = time.perf_counter() - started
            started = time.perf_counter()

        self.pg = PrivatePostgres()
        self.pg.init()
        self.redis = PrivateRedis(self.workdir)
        self.redis.start()
        lap("PostgreSQL and Redis")
        # What benchmarks/participants.py's helpers read from its own arguments.
        args = types.SimpleNamespace(pg=self.pg.url, redis=self.redis.url, db=DB, debug=False, threads=1,
                                     preload=True, workers=self.workers)
        env = child_env(args, str(self.workdir))
        # Django logs its errors (a 500's traceback) to stderr: into gunicorn's log with them, so
        # that server_errors() and a failed drill can show why.
        env["GUNICORN_CMD_ARGS"] = "--capture-output"
        recreate_database(self.pg.url, DB)
        # collectstatic touches no database: it runs beside the migrations.
        static = subprocess.Popen([sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
                                  cwd=ROOT, env=env)
        try:
            subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=env,
                           check=True, timeout=600)
        except BaseException:
            static.kill()
            static.wait()
            raise
        if static.wait(timeout=600) != 0:
            raise RuntimeError("collectstatic failed")
        lap("migrate and collectstatic")
        built = subprocess.run([sys.executable, str(ROOT / "benchmarks/participants.py"), "--child-build"], cwd=ROOT,
                               env=env, capture_output=True, text=True, timeout=600)
        if built.returncode != 0:
            raise RuntimeError(f"building the study failed:\n{built.stdout[-3000:]}{built.stderr[-3000:]}")
        self.study = json.loads(built.stdout.strip().splitlines()[-1])["public_id"]
        lap("live study")
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.server = start_gunicorn(args, env, port, self.log)
        wait_healthy(self.base_url, self.server, self.log)
        warm_up(self.base_url, self.study, clients=2 * self.workers, seconds=warm_up_seconds)
        lap("gunicorn")
        self.seconds = time.perf_counter() - began
        return self

    def close(self) -> None:
        if self.server is not None:
            stop_process(self.server)
        if self.redis is not None:
            self.redis.stop()
        if self.pg is not None:
            self.pg.remove()

    def __enter__(self) -> DrillStack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def health(self) -> int:
        """The status of GET /healthz/ (SELECT 1 on the database), 0 when no reply came."""
        try:
            with urllib.request.urlopen(self.base_url + "/healthz/", timeout=10) as reply:
                return reply.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except NETWORK_ERRORS:
            return 0

    def server_errors(self) -> list[str]:
        """Lines of gunicorn's log that report an error (a traceback, an ERROR)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if "Traceback" in line or "ERROR" in line]


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    raw = f.read()
            except OSError:
                continue
            if int(raw[raw.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return sorted(found)


# -- the client: retries like the page, and a network that can drop -----------------------------

class Events:
    """Every attempt and every request as the participant saw it, stamped (appends are atomic)."""

    def __init__(self) -> None:
        self.attempts: list[tuple[float, str, object]] = []  # (end, operation, status or exception name)
        self.requests: list[tuple[float, str, float, int]] = []  # (end, operation, seconds incl. retries, retries)
        self.answers: list[tuple[float, str, str, str, int]] = []  # (sent, pid, trial, key, acked status or 0)
        self.gave_up: list[tuple[float, str]] = []  # (when, pid)


class DrillTransport(BenchTransport):
    """The participant benchmark's transport, plus the page's retries and a network that drops."""

    def __init__(self, *args, events: Events, give_up: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.events, self.give_up = events, give_up
        self.offline_until = 0.0
        self.drop_for = 0.0  # > 0: the network drops for that long as the next answer is sent
        self.dropped = threading.Event()

    def drop_network(self, seconds: float) -> None:
        self.drop_for = seconds

    def _send(self, request: urllib.request.Request):
        if self.drop_for and request.get_method() == "POST" and request.full_url.endswith("/answer"):
            # The worst moment for the network to go: the server gets the answer and stores it,
            # the reply never comes back, and the client can only resend it.
            self.offline_until = time.monotonic() + self.drop_for
            self.drop_for = 0.0
            self.dropped.set()
            super()._send(request)
            raise urllib.error.URLError(ConnectionResetError("network dropped before the reply"))
        if time.monotonic() < self.offline_until:
            raise urllib.error.URLError(ConnectionRefusedError("network down"))
        return super()._send(request)

    def _call(self, method: str, path: str, payload: dict | None):
        op = self.operation(path)
        first = time.monotonic()
        delay, retries = 0.5, 0
        answer = op == "answer"
        while True:
            try:
                reply = super()._call(method, path, payload)
                outcome = reply.status
            except Deadline:
                raise
            except NETWORK_ERRORS as exc:
                reply, outcome = None, exc.__class__.__name__
            now = time.monotonic()
            self.events.attempts.append((now, op, outcome))
            if reply is not None and reply.status not in RETRYABLE:
                self.events.requests.append((now, op, now - first, retries))
                if answer:
                    ok = reply.status if reply.status in (200, 201) else 0
                    self.events.answers.append((first, self.pid, path.split("/")[-2],
                                                str(payload["idempotency_key"]), ok))
                return reply
            if now - first > self.give_up:
                self.events.gave_up.append((now, self.pid))
                if answer:
                    self.events.answers.append((first, self.pid, path.split("/")[-2],
                                                str(payload["idempotency_key"]), 0))
                raise SimulationError(f"{op}: gave up after {retries} retries in {now - first:.0f} s ({outcome})")
            retries += 1
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


class Crowd:
    """n participant threads, each running one participant after another until the window closes
    (``once``: each runs a single participant to its end, or until the window closes)."""

    def __init__(self, *, base_url: str, study: str, n: int, think: float, ramp: float, give_up: float,
                 window: Window, seed: int, once: bool = False, prefix: str = "drill") -> None:
        self.base_url, self.study, self.think, self.give_up = base_url, study, think, give_up
        self.window, self.events, self.ledger, self.once = window, Events(), Ledger(), once
        self.pids = SharedIds(prefix)
        self.current: dict[int, DrillTransport] = {}
        self.victim: DrillTransport | None = None  # whose network drops
        self.outcomes: Counter = Counter()  # (when, outcome) -> participants
        self.finished: dict[str, str] = {}  # participant id -> outcome, or "failed: why"
        self.errors: Counter = Counter()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.participant, args=(i, seed + i, ramp * i / n), daemon=True)
                        for i in range(n)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self, seconds: float) -> int:
        """Wait up to ``seconds`` in all; returns how many participant threads still run."""
        deadline = time.monotonic() + seconds
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return sum(t.is_alive() for t in self.threads)

    def acknowledged(self) -> int:
        """Answers acknowledged (200/201) so far."""
        return sum(1 for *_, status in list(self.events.answers) if status)

    def participant(self, i: int, seed: int, delay: float) -> None:
        time.sleep(delay)
        rng = np.random.default_rng(seed)
        while self.window.open():
            pid = next(self.pids)
            timings, statuses, late = StampedTimings(), Counter(), Counter()
            transport = DrillTransport(self.base_url, pid=pid, timings=timings, statuses=statuses, late=late,
                                       ledger=self.ledger, window=self.window, events=self.events,
                                       give_up=self.give_up)
            self.current[i] = transport
            try:
                outcome = run_participant(transport=transport, study_public_id=self.study, rng=rng,
                                          think_seconds=self.think, params={"PID": pid}).outcome
                error = None
            except Deadline:
                outcome, error = "stopped at the end", None
            except SimulationError as exc:
                outcome, error = "failed", str(exc)
            except Exception as exc:  # noqa: BLE001 - whatever the client hit, it is reported
                outcome, error = "failed", f"{exc.__class__.__name__}: {exc}"
            with self.lock:
                self.outcomes[(time.monotonic(), outcome)] += 1
                self.finished[pid] = f"{outcome}: {error}" if error else outcome
                if error:
                    self.errors[(time.monotonic(), error[:160])] += 1
            if self.once:
                return

    def someone_answering(self) -> DrillTransport | None:
        """A participant past enrollment with answers acknowledged, so the drop hits its trials."""
        acked = {pid for _, pid, _, _, status in self.events.answers if status}
        for transport in list(self.current.values()):
            if transport.pid in acked:
                return transport
        return None


# -- drills -------------------------------------------------------------------------------------

def drill_worker_kill(server: subprocess.Popen, workers: int, fault: float) -> str:
    victim = children(server.pid)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + fault
    while time.monotonic() < deadline:
        alive = [p for p in children(server.pid) if p != victim]
        if len(alive) >= workers:
            return f"worker {victim} SIGKILLed; gunicorn had {workers} workers again {fault - (deadline - time.monotonic()):.1f} s later"
        time.sleep(0.1)
    return f"worker {victim} SIGKILLed; gunicorn did not have {workers} workers again within {fault:g} s"


def drill_postgres(pg: PrivatePostgres, fault: float) -> str:
    """PostgreSQL restarted (``pg_ctl restart -m fast``: open transactions rolled back, clients
    cut off), kept down ``fault`` seconds in all."""
    started = time.monotonic()
    pg.restart(down=fault)
    return f"PostgreSQL stopped (-m fast) and started again: down {time.monotonic() - started:.1f} s"


def drill_redis(redis: PrivateRedis, fault: float) -> str:
    started = time.monotonic()
    redis.stop()
    time.sleep(fault)
    redis.start()
    return f"Redis stopped and started again on port {redis.port} (empty): down {time.monotonic() - started:.1f} s"


def drill_network(crowd: Crowd, fault: float) -> str:
    deadline = time.monotonic() + fault
    while (victim := crowd.someone_answering()) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if victim is None:
        return "no participant was answering: network drop skipped"
    victim.drop_network(fault)
    if not victim.dropped.wait(60):
        return f"participant {victim.pid} sent no answer within 60 s: network drop skipped"
    crowd.victim = victim
    time.sleep(fault)
    return (f"participant {victim.pid}: network down {fault:g} s from the moment it sent an answer (stored, "
            f"the reply lost)")


# -- report -------------------------------------------------------------------------------------

def _norm(uuid_text: str) -> str:
    return uuid_text.replace("-", "")


@dataclass(frozen=True)
class Stored:
    """What the database holds: (idempotency key, trial, participant's external id) of every
    Response (dashes removed), and per participant (external id) its trials and answered trials."""

    responses: list[tuple[str, str, str]]
    trials: dict[str, tuple[int, int]]


def stored_answers(pg: str) -> Stored:
    connection = pg_connect(pg, DB)
    with connection.cursor() as cursor:
        cursor.execute("SELECT r.idempotency_key::text, t.public_id::text, p.external_id FROM studyapp_response r "
                       "JOIN studyapp_trial t ON t.id = r.trial_id JOIN studyapp_participant p "
                       "ON p.id = t.participant_id")
        rows = cursor.fetchall()
        cursor.execute("SELECT p.external_id, count(t.id), count(r.id) FROM studyapp_participant p "
                       "JOIN studyapp_trial t ON t.participant_id = p.id "
                       "LEFT JOIN studyapp_response r ON r.trial_id = t.id GROUP BY p.external_id")
        trials = {pid: (n, answered) for pid, n, answered in cursor.fetchall()}
    connection.close()
    return Stored([(_norm(k), _norm(t), pid) for k, t, pid in rows], trials)


@dataclass(frozen=True)
class AnswerIntegrity:
    """The answers some participants sent against what the database holds for them.

    ``lost``: acknowledged (200/201) but not stored under that key and trial. ``duplicated``: a
    trial of theirs with two Response rows, an idempotency key stored twice, or two 201s for one
    trial. ``unacknowledged``: rows of theirs whose key no client was acknowledged (the reply was
    lost and never asked for again; 0 when every participant went on to the end)."""

    sent: int
    acknowledged: int
    resent: int  # acknowledged as 200: the server had it already (a retry after a lost reply)
    stored: int
    lost: int
    duplicated: int
    unacknowledged: int

    @property
    def ok(self) -> bool:
        return not self.lost and not self.duplicated


def answer_integrity(answers: list[tuple[float, str, str, str, int]], stored: Stored,
                     participants: set[str] | None = None) -> AnswerIntegrity:
    """``answers``: Events.answers (sent, participant, trial, key, acknowledged status or 0);
    ``participants``: whose stored rows to count (default: those who sent the answers)."""
    participants = participants if participants is not None else {pid for _, pid, *_ in answers}
    acked = [(_norm(trial), _norm(key), status) for _, _, trial, key, status in answers if status]
    acked_keys = {key: trial for trial, key, _ in acked}
    where = {key: trial for key, trial, _ in stored.responses}
    mine = [(key, trial) for key, trial, pid in stored.responses if pid in participants]
    per_trial = Counter(trial for _, trial, _ in stored.responses)
    trials = {trial for trial, _, _ in acked} | {_norm(a[2]) for a in answers}
    created = Counter(trial for trial, _, status in acked if status == 201)
    duplicated = (sum(per_trial[t] - 1 for t in trials if per_trial[t] > 1)
                  + sum(n - 1 for n in created.values() if n > 1)
                  + sum(n - 1 for n in Counter(key for key, _ in mine).values() if n > 1))
    return AnswerIntegrity(
        sent=len(answers), acknowledged=len(acked_keys), resent=sum(1 for *_, status in acked if status == 200),
        stored=len(mine), lost=sum(1 for key, trial in acked_keys.items() if where.get(key) != trial),
        duplicated=duplicated, unacknowledged=sum(1 for key, _ in mine if key not in acked_keys))


def report(name: str, note: str, start: float, end: float, crowd: Crowd, stored: Stored) -> tuple[int, int]:
    ev = crowd.events
    inside = lambda t: start <= t < end  # noqa: E731
    attempts = [(op, outcome) for t, op, outcome in ev.attempts if inside(t)]
    served = sum(1 for _, o in attempts if isinstance(o, int) and o not in RETRYABLE)
    errors = Counter(f"{op} {o}" for op, o in attempts if not (isinstance(o, int) and (o < 400 or o == 409)))
    latency = defaultdict(list)
    retried = 0
    for t, op, seconds, retries in ev.requests:
        if inside(t):
            latency[op].append(seconds)
            retried += retries > 0
    answers = [a for a in ev.answers if inside(a[0])]
    check = answer_integrity(answers, stored)
    lost, duplicated = check.lost, check.duplicated
    outcomes = Counter(o for (t, o), n in crowd.outcomes.items() if inside(t) for _ in range(n))
    seconds = end - start
    print(f"\n[{name}] {note}")
    print(f"  {seconds:.1f} s: {served:,} requests served = {served / seconds:,.1f} requests/s; "
          f"{check.acknowledged:,} answers acknowledged = {check.acknowledged / seconds:,.1f} answers/s")
    for op in ("trial", "answer"):
        v = np.asarray(latency.get(op, []))
        print(f"  {op:<7} {len(v):>6,} requests  p50 {pct(v, 50):8.1f}  p95 {pct(v, 95):8.1f}  max {pct(v, 100):8.1f} ms"
              "  (as the participant saw it, retries included)")
    print(f"  errors seen by clients (failed attempts): {dict(errors.most_common()) or 'none'}; requests that "
          f"needed a retry: {retried}; participants finished {dict(outcomes) or '-'}")
    for (t, message), n in crowd.errors.items():
        if inside(t):
            print(f"    failed participant: {message}")
    print(f"  integrity of the {len(answers):,} answers sent in the window: lost {lost}, duplicated {duplicated}"
          f" -> {'PASS' if not lost and not duplicated else 'FAIL'}")
    return lost, duplicated


# -- main ---------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=None, help="concurrent participants (200; --quick 30)")
    parser.add_argument("--think", type=float, default=None, help="mean think time before an answer, s (3; --quick 0.2)")
    parser.add_argument("--ramp", type=float, default=None, help="participants start over this many s (5; --quick 2)")
    parser.add_argument("--fault", type=float, default=None, help="each fault lasts this many s (10; --quick 4)")
    parser.add_argument("--settle", type=float, default=None, help="recovery watched after each fault, s (10; --quick 5)")
    parser.add_argument("--baseline", type=float, default=None, help="the window without a fault, s (15; --quick 5)")
    parser.add_argument("--give-up", type=float, default=60.0, help="a request retried this long gives up, s")
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="30 participants, think 0.2 s, 4 s faults")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    quick = args.quick
    args.participants = args.participants or (30 if quick else 200)
    args.think = args.think if args.think is not None else (0.2 if quick else 3.0)
    args.ramp = args.ramp if args.ramp is not None else (2.0 if quick else 5.0)
    args.fault = args.fault or (4.0 if quick else 10.0)
    args.settle = args.settle or (5.0 if quick else 10.0)
    args.baseline = args.baseline or (5.0 if quick else 15.0)

    workdir = Path(tempfile.mkdtemp(prefix="studyapp_bench_load_"))
    try:
        with DrillStack(workers=args.workers, workdir=workdir) as stack:
            ok = run_drills(args, stack.start())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not ok:
        sys.exit(1)


def run_drills(args: argparse.Namespace, stack: DrillStack) -> bool:
    """The windows in turn on a started stack, the reports, and the whole-run integrity check."""
    pg, redis, server = stack.pg, stack.redis, stack.server
    print(f"private PostgreSQL at {pg.url} and Redis at {redis.url}; live study {stack.study} ready in "
          f"{stack.seconds:.1f} s; gunicorn at {stack.base_url}: {args.workers} sync workers, "
          f"production settings, on {os.cpu_count()} CPUs shared with the database and this load generator")
    print(f"{args.participants} participants (one after another per thread), think {args.think:g} s; faults "
          f"{args.fault:g} s, each watched for {args.settle:g} s more; retries as the page, giving up after "
          f"{args.give_up:g} s")

    drills = [("1. gunicorn worker SIGKILLed", lambda: drill_worker_kill(server, args.workers, args.fault)),
              ("2. PostgreSQL restarted", lambda: drill_postgres(pg, args.fault)),
              ("3. Redis stopped", lambda: drill_redis(redis, args.fault)),
              ("4. a participant's network drops", lambda: drill_network(crowd, args.fault))]
    total = args.ramp + args.baseline + len(drills) * (args.fault + args.settle) + 600
    window = Window(time.monotonic() + total)
    crowd = Crowd(base_url=stack.base_url, study=stack.study, n=args.participants, think=args.think,
                  ramp=args.ramp, give_up=args.give_up, window=window, seed=args.seed)
    crowd.start()
    time.sleep(args.ramp)
    windows = [("baseline", "no fault", time.monotonic())]
    time.sleep(args.baseline)
    for name, drill in drills:
        begun = time.monotonic()
        note = drill()
        windows.append((name, note, begun))
        time.sleep(max(0.0, begun + args.fault + args.settle - time.monotonic()))
    ended = time.monotonic()
    window.deadline = ended  # participants stop before their next request
    still = crowd.join(args.give_up + 35)

    stored = stored_answers(pg.url)
    bounds = [w[2] for w in windows[1:]] + [ended]
    lost = duplicated = 0
    for (name, note, start), end in zip(windows, bounds):
        n_lost, n_dup = report(name, note, start, end, crowd, stored)
        lost, duplicated = lost + n_lost, duplicated + n_dup
    errors = stack.server_errors()
    if errors:
        print(f"\ngunicorn log: {len(errors)} error lines, e.g. {errors[:3]}")
    if crowd.victim is not None:
        mine = Counter(status for _, pid, _, _, status in crowd.events.answers if pid == crowd.victim.pid)
        print(f"\nparticipant {crowd.victim.pid} (network dropped): answers acknowledged {mine[201]} as 201 "
              f"created, {mine[200]} as 200 already stored (the resent one), {mine[0]} never")
    if still:
        print(f"\n{still} participant threads still running at the end (abandoned)")
    # What benchmarks/participants.py's integrity check reads from its own arguments.
    ok = integrity(types.SimpleNamespace(pg=pg.url, db=DB), stack.study, crowd.ledger) and not lost \
        and not duplicated
    print(f"\nall windows: lost {lost}, duplicated {duplicated} -> {'PASS' if ok else 'FAIL'}")
    return ok


if __name__ == "__main__":
    main()
