"""Helpers shared by the benchmark scripts and the tests that start servers of their own: a
PostgreSQL database of their own, a throwaway PostgreSQL cluster and redis-server (to stop and
restart in fault drills without touching the machine's shared ones), a free port, CPU accounting
from Linux /proc, and how goals are printed.

Imports nothing of Django or of the benchmarks, so that tests/ can import it (pytest.ini puts the
repository root on the path)."""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

TICK = os.sysconf("SC_CLK_TCK")


def pg_connect(pg: str, db: str = "postgres"):
    import psycopg2

    connection = psycopg2.connect(urlunsplit(urlsplit(pg)._replace(path=f"/{db}")))
    connection.autocommit = True
    return connection


def recreate_database(pg: str, db: str, *, create: bool = True) -> None:
    """Drop ``db`` (its connections too) and, unless told not to, create it empty."""
    connection = pg_connect(pg)
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        if create:
            cursor.execute(f'CREATE DATABASE "{db}"')
    connection.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_stat(pid: int) -> tuple[str, int, float, float] | None:
    """(comm, ppid, own CPU seconds, CPU seconds of its reaped children) of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()
    return comm, int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, (int(fields[13]) + int(fields[14])) / TICK


def cpu_snapshot(roots: tuple[int, ...]) -> dict:
    """CPU seconds so far of the machine (total, idle, steal), of the process trees under ``roots``
    (``tree``: the roots' live children plus what the roots reaped, e.g. exited workers), of
    PostgreSQL (the postmaster with its reaped backends, and the live backends) and of this
    process (``here``), with the wall clock."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]  # user .. steal (guest time is in user)
    procs = {int(e): s for e in os.listdir("/proc") if e.isdigit() and (s := _proc_stat(int(e))) is not None}
    tree = postgres = 0.0
    for pid, (comm, ppid, own, reaped) in procs.items():
        if pid in roots:
            tree += own + reaped
        elif ppid in roots:
            tree += own
        elif comm.startswith("postgres"):
            postgres += own + (0 if procs.get(ppid, ("",))[0].startswith("postgres") else reaped)
    return {"total": sum(ticks) / TICK, "idle": (ticks[3] + ticks[4]) / TICK, "steal": ticks[7] / TICK,
            "tree": tree, "postgres": postgres, "here": time.process_time(), "wall": time.monotonic()}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def stop_process(process: subprocess.Popen | None) -> None:
    """SIGTERM to the process group we started (start_new_session), SIGKILL if it lingers."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


class ServiceUnavailable(SystemExit):
    """A server a run starts of its own could not be had: its program is missing or it would not
    start. A SystemExit, so a benchmark script that does not catch it exits with the message and
    no traceback; tests catch it and fail (CI) or skip with it."""


class PrivateRedis:
    """A redis-server of a run's own on a free port, keeping nothing on disk; the port stays the
    same, so it can be stopped and started again at the same address (the fault drills of
    benchmarks/load.py and tests/test_fault_drills.py, the broker drills of the worker tests)."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise ServiceUnavailable("redis-server is not installed (the run starts a private one it can stop)")
        self.workdir, self.port, self.process = workdir, free_port(), None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", str(self.workdir)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping()
                return
            except redis.exceptions.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise ServiceUnavailable(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl are: ``pg_config --bindir`` (Debian keeps them off the PATH, in
    /usr/lib/postgresql/<version>/bin), else the PATH; None when either is missing."""
    candidates = []
    if (pg_config := shutil.which("pg_config")) is not None:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if found.returncode == 0:
            candidates.append(Path(found.stdout.strip()))
    if (initdb := shutil.which("initdb")) is not None:
        candidates.append(Path(initdb).parent)
    return next((d for d in candidates if (d / "initdb").exists() and (d / "pg_ctl").exists()), None)


def private_postgres_problem() -> str | None:
    """Why a PrivatePostgres cannot be made here, in words, or None."""
    if postgres_bindir() is None:
        return "PostgreSQL's initdb and pg_ctl are not installed (the run starts a private cluster it can restart)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "runuser is not installed (as root, the private PostgreSQL must run as the postgres user)"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "there is no postgres user (as root, the private PostgreSQL must run as it)"
    return None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (trust auth, loopback, a free port) in a temporary directory,
    so that a run can stop and restart it without touching the machine's shared server. As root,
    initdb and the server run as the postgres user (initdb refuses root), and the directory is
    made in the system's temporary directory, which that user can reach."""

    def __init__(self) -> None:
        if (problem := private_postgres_problem()) is not None:
            raise ServiceUnavailable(problem)
        self.bindir = postgres_bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="studyapp_private_pg_"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.user:
            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self.url = f"postgres://postgres@127.0.0.1:{self.port}"
        self.started = False

    def _run(self, *command: str, timeout: float = 120) -> None:
        done = subprocess.run([*self.user, *command], timeout=timeout, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=self.dir, check=False)
        if done.returncode != 0:
            log = self.dir / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise ServiceUnavailable(f"the private PostgreSQL: {Path(command[0]).name} {command[-1]} failed "
                                     f"({done.returncode}):\n{done.stdout[-2000:]}\n{tail}")

    def init(self) -> None:
        # --no-sync: a throwaway cluster need not survive the machine crashing; saves seconds.
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        self.start()

    def ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=100"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-t", "60",
                  "-o", options, action, *extra)

    def start(self) -> None:
        self.ctl("start")
        self.started = True

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: open transactions are rolled back and their clients disconnected."""
        self.ctl("stop", "-m", "fast")
        self.started = False

    def restart(self, *, down: float = 0.0) -> None:
        """``pg_ctl restart -m fast``; with ``down`` > 0, stopped (-m fast) and started again
        ``down`` seconds later, so that clients surely meet the outage."""
        if down <= 0:
            self.ctl("restart", "-m", "fast")
            return
        self.stop()
        time.sleep(down)
        self.start()

    def remove(self) -> None:
        """Stop the server and delete the cluster. ``-m immediate``: no shutdown checkpoint (its
        fsyncs took seconds), as nothing of the cluster is kept."""
        if self.started:
            try:
                self.ctl("stop", "-m", "immediate")
                self.started = False
            except Exception as exc:  # still remove the directory
                print(f"stopping the private PostgreSQL failed: {exc}", file=sys.stderr)
        shutil.rmtree(self.dir, ignore_errors=True)
