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
import pwd
import shutil
import signal
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
from benchmarks.common import PrivateRedis, free_port, pg_connect, recreate_database, stop_process  # noqa: E402
from benchmarks.participants import (BenchTransport, Deadline, Ledger, SharedIds, StampedTimings,  # noqa: E402
                                     Window, child_env, integrity, pct, start_gunicorn,
                                     wait_healthy, warm_up)

from studyapp.simulated_participants import SimulationError, run_participant  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DB = "studyapp_bench_load"
RETRYABLE = {408, 425, 429, 500, 502, 503, 504}  # as static/participant/api.js
NETWORK_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException, TimeoutError)


# -- private PostgreSQL and Redis ---------------------------------------------------------------

class PrivatePostgres:
    """A throwaway cluster; as root, initdb and the server run as the postgres user (initdb refuses root)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="studyapp_load_pg_"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.user:
            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self.url = f"postgres://postgres@127.0.0.1:{self.port}"
        self.started = False

    def _run(self, *command: str, timeout: float = 120) -> None:
        subprocess.run([*self.user, *command], check=True, timeout=timeout, stdout=subprocess.DEVNULL,
                       stderr=subprocess.STDOUT, cwd=self.dir)

    def init(self) -> None:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()

    def ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=100"
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-t", "60",
                  "-o", options, action, *extra)

    def start(self) -> None:
        self.ctl("start")
        self.started = True

    def stop(self) -> None:
        self.ctl("stop", "-m", "fast")
        self.started = False

    def remove(self) -> None:
        if self.started:
            try:
                self.stop()
            except Exception as exc:  # still remove the directory
                print(f"stopping the private PostgreSQL failed: {exc}", file=sys.stderr)
        shutil.rmtree(self.dir, ignore_errors=True)


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
    """n participant threads, each one participant after another until the window closes."""

    def __init__(self, *, base_url: str, study: str, n: int, think: float, ramp: float, give_up: float,
                 window: Window, seed: int) -> None:
        self.base_url, self.study, self.think, self.give_up = base_url, study, think, give_up
        self.window, self.events, self.ledger = window, Events(), Ledger()
        self.pids = SharedIds("drill")
        self.current: dict[int, DrillTransport] = {}
        self.victim: DrillTransport | None = None  # whose network drops
        self.outcomes: Counter = Counter()
        self.errors: Counter = Counter()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.participant, args=(i, seed + i, ramp * i / n), daemon=True)
                        for i in range(n)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

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
                if error:
                    self.errors[(time.monotonic(), error[:160])] += 1

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
    started = time.monotonic()
    pg.stop()
    time.sleep(max(0.0, fault - (time.monotonic() - started)))
    pg.start()
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

def stored_answers(pg: str) -> tuple[dict[str, str], Counter]:
    """Idempotency key -> trial of every stored Response, and Response rows per trial."""
    connection = pg_connect(pg, DB)
    with connection.cursor() as cursor:
        cursor.execute("SELECT r.idempotency_key::text, t.public_id::text FROM studyapp_response r "
                       "JOIN studyapp_trial t ON t.id = r.trial_id")
        rows = cursor.fetchall()
    connection.close()
    norm = lambda u: u.replace("-", "")  # noqa: E731
    return {norm(k): norm(t) for k, t in rows}, Counter(norm(t) for _, t in rows)


def report(name: str, note: str, start: float, end: float, crowd: Crowd, stored: dict[str, str],
           per_trial: Counter) -> tuple[int, int]:
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
    norm = lambda u: u.replace("-", "")  # noqa: E731
    answers = [a for a in ev.answers if inside(a[0])]
    acked = [(norm(trial), norm(key), status) for _, _, trial, key, status in answers if status]
    lost = sum(1 for trial, key, _ in acked if stored.get(key) != trial)
    created = Counter(trial for trial, _, status in acked if status == 201)
    trials = {trial for trial, _, _ in acked} | {norm(a[2]) for a in answers}
    duplicated = sum(per_trial[t] - 1 for t in trials if per_trial[t] > 1) + sum(n - 1 for n in created.values() if n > 1)
    outcomes = Counter(o for (t, o), n in crowd.outcomes.items() if inside(t) for _ in range(n))
    seconds = end - start
    print(f"\n[{name}] {note}")
    print(f"  {seconds:.1f} s: {served:,} requests served = {served / seconds:,.1f} requests/s; "
          f"{len(acked):,} answers acknowledged = {len(acked) / seconds:,.1f} answers/s")
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
    # What benchmarks/participants.py's helpers read from its own arguments.
    args.threads, args.preload, args.debug, args.db = 1, True, False, DB

    workdir = Path(tempfile.mkdtemp(prefix="studyapp_bench_load_"))
    pg = redis = server = None
    ok = True
    try:
        pg = PrivatePostgres()
        pg.init()
        redis = PrivateRedis(workdir)
        redis.start()
        args.pg, args.redis = pg.url, redis.url
        env = child_env(args, str(workdir))
        env.update({"PARTICIPANT_ENTRY_RATE": "1000000/min", "PARTICIPANT_ANSWER_RATE": "1000000/min"})
        started = time.perf_counter()
        recreate_database(pg.url, DB)
        subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"], cwd=ROOT,
                       env=env, check=True)
        subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=env, check=True,
                       timeout=600)
        built = subprocess.run([sys.executable, str(ROOT / "benchmarks/participants.py"), "--child-build"], cwd=ROOT,
                               env=env, capture_output=True, text=True, timeout=600)
        if built.returncode != 0:
            raise SystemExit(f"building the study failed:\n{built.stdout[-3000:]}{built.stderr[-3000:]}")
        study = json.loads(built.stdout.strip().splitlines()[-1])
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        log = workdir / "gunicorn.log"
        server = start_gunicorn(args, env, port, log)
        wait_healthy(base_url, server, log)
        warm_up(base_url, study["public_id"], clients=2 * args.workers, seconds=2.0)
        print(f"private PostgreSQL at {pg.url} and Redis at {redis.url}; live study {study['public_id']} ready in "
              f"{time.perf_counter() - started:.1f} s; gunicorn at {base_url}: {args.workers} sync workers, "
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
        crowd = Crowd(base_url=base_url, study=study["public_id"], n=args.participants, think=args.think,
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
        for t in crowd.threads:
            t.join(args.give_up + 35)
        still = sum(t.is_alive() for t in crowd.threads)

        stored, per_trial = stored_answers(pg.url)
        bounds = [w[2] for w in windows[1:]] + [ended]
        lost = duplicated = 0
        for (name, note, start), end in zip(windows, bounds):
            n_lost, n_dup = report(name, note, start, end, crowd, stored, per_trial)
            lost, duplicated = lost + n_lost, duplicated + n_dup
        errors = [line for line in log.read_text().splitlines() if "Traceback" in line or "ERROR" in line]
        if errors:
            print(f"\ngunicorn log: {len(errors)} error lines, e.g. {errors[:3]}")
        if crowd.victim is not None:
            mine = Counter(status for _, pid, _, _, status in crowd.events.answers if pid == crowd.victim.pid)
            print(f"\nparticipant {crowd.victim.pid} (network dropped): answers acknowledged {mine[201]} as 201 "
                  f"created, {mine[200]} as 200 already stored (the resent one), {mine[0]} never")
        if still:
            print(f"\n{still} participant threads still running at the end (abandoned)")
        ok = integrity(args, study["public_id"], crowd.ledger) and not lost and not duplicated
        print(f"\nall windows: lost {lost}, duplicated {duplicated} -> {'PASS' if ok else 'FAIL'}")
    finally:
        if server is not None:
            stop_process(server)
        if redis is not None:
            redis.stop()
        if pg is not None:
            pg.remove()
        shutil.rmtree(workdir, ignore_errors=True)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
