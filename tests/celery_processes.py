"""Real Celery worker and beat processes, and a Redis server of a test's own (to stop and start).

The processes get the test database and a DATA_DIR of the test; the Celery app of the test
process is pointed at the same broker by ``use_broker``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server process on a free port that keeps nothing on disk (like ours)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail("redis-server is not installed; CI=true, so this test fails instead of skipping.")
            pytest.skip("redis-server is not installed")
        self.binary, self.workdir, self.port = binary, workdir, _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping()
                return
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


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
