"""Helpers shared by the benchmark scripts: a PostgreSQL database of their own, a free port, CPU
accounting from Linux /proc, and how goals are printed."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
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


class PrivateRedis:
    """A benchmark's own redis-server on a free port, keeping nothing on disk; the port stays the
    same, so it can be stopped and started again at the same address (benchmarks/load.py's drill)."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise SystemExit("redis-server is not installed (the benchmark runs a private one)")
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
                    raise SystemExit("redis-server did not start")
                time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.process)
