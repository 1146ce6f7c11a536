"""Helpers shared by the benchmark scripts: a PostgreSQL database of their own, a free port, CPU
accounting from Linux /proc, and how goals are printed."""
from __future__ import annotations

import os
import socket
import time
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
