"""Real Celery worker and beat processes, and a Redis server of a test's own (to stop and start:
benchmarks/common.PrivateRedis, the one the benchmarks' drills use).

The processes get the test database and a DATA_DIR of the test; the Celery app of the test
process is pointed at the same broker by ``use_broker``.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from benchmarks.common import PrivateRedis, ServiceUnavailable

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(problem: str | None) -> None:
    """A server a test starts of its own cannot be had: with CI=true the test fails (a green CI
    must never hide a skipped drill), elsewhere it is skipped with the reason."""
    if problem is None:
        return
    if IN_CI:
        pytest.fail(f"{problem}; CI=true, so this test fails instead of skipping.", pytrace=False)
    pytest.skip(problem)


class RedisServer(PrivateRedis):
    """benchmarks/common.PrivateRedis (a redis-server on a free port that keeps nothing on disk,
    like ours), failing or skipping the test as ``require`` says when redis-server is missing."""

    def __init__(self, workdir: Path) -> None:
        try:
            super().__init__(workdir)
        except ServiceUnavailable as exc:
            require(str(exc))


def process_env(tmp_path: Path, broker: str, **extra: str) -> dict:
    db = connection.settings_dict
    return {**os.environ, "CELERY_BROKER_URL": broker, "DATA_DIR": str(tmp_path),
            "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
            **extra}


class Processes:
    """Workers and a beat started for one test; all stopped (SIGKILL if need be) at the end."""

    def __init__(self, tmp_path: Path, broker: str, **env: str) -> None:
        self.tmp_path, self.env = tmp_path, process_env(tmp_path, broker, **env)
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def _start(self, args: list[str], name: str, ready: str) -> subprocess.Popen:
        log_path = self.tmp_path / f"{name}.log"
        log = open(log_path, "w+")
        process = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker", *args], cwd=ROOT, env=self.env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append((process, log_path))
        deadline = time.monotonic() + 60
        while ready not in log_path.read_text():
            assert process.poll() is None, f"{name} exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"{name} did not start:\n{log_path.read_text()}"
            time.sleep(0.2)
        return process

    def worker(self, name: str) -> subprocess.Popen:
        """One worker process doing the work itself (solo pool): killing it kills the whole worker."""
        return self._start(["worker", "-Q", "cpu,gpu", "--pool", "solo", "--without-gossip", "--without-mingle",
                            "-n", f"{name}-{os.getpid()}@%h", "-l", "info"], name, "ready.")

    def beat(self) -> subprocess.Popen:
        return self._start(["beat", "-l", "info", "--schedule", str(self.tmp_path / "beat-schedule")], "beat",
                           "beat: Starting")

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text()[-3000:]}" for _, path in self.started)

    def stop_all(self) -> None:
        for process, _ in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process, _ in self.started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@contextlib.contextmanager
def use_broker(url: str):
    """Point this process's Celery app at ``url`` (sending for real, not in-process)."""
    from worker import app

    previous = app.conf.broker_url, app.conf.task_always_eager
    app.conf.broker_url, app.conf.task_always_eager = url, False
    app._pool = None
    app.amqp._producer_pool = None
    try:
        yield app
    finally:
        if app._pool is not None:
            app._pool.force_close_all()
        app._pool = None
        app.amqp._producer_pool = None
        app.conf.broker_url, app.conf.task_always_eager = previous


def wait_for(condition, *, timeout: float, what: str, procs: Processes, poll: float = 0.05):
    """``condition()``'s first truthy value within ``timeout`` seconds; otherwise fail with the
    worker processes' logs, which say why."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"waited {timeout} s for {what}.\n{procs.logs()}")
