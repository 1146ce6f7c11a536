"""The Celery app. Configuration comes from Django settings (CELERY_* names).

With no broker configured (the embedded default) CELERY_TASK_ALWAYS_EAGER runs tasks in-process.
CUDA must not be initialized before the worker forks, so nothing here imports torch.
"""
from __future__ import annotations

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studyapp.settings")

from django.conf import settings  # noqa: E402  (after DJANGO_SETTINGS_MODULE)

app = Celery("studyapp")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_routes = {
    # Preparation runs the model and the explainers: the GPU workers take it when there are some.
    "worker.tasks.run_preparation_unit": {"queue": "gpu"},
    "worker.tasks.prepare_study": {"queue": "gpu"},
    "worker.tasks.dispatch": {"queue": "cpu"},
    # The statistics need no GPU.
    "worker.tasks.analyze_study": {"queue": "cpu"},
}
# The dispatcher (``celery -A worker beat``): releases expired leases and sends units and analysis
# jobs that have no message. Any number of beat processes is harmless (each tick is idempotent).
app.conf.beat_schedule = {
    "dispatch": {"task": "worker.tasks.dispatch", "schedule": float(settings.PREPARATION_DISPATCH_SECONDS),
                 "options": {"expires": float(settings.PREPARATION_DISPATCH_SECONDS)}},
}
app.autodiscover_tasks(["worker"])


@signals.worker_init.connect
def _threads_per_process(sender=None, **kwargs) -> None:
    """Share the host's cores among the pool's processes (measured by benchmarks/prepare.py: with
    PyTorch's default of every core per process, two workers on 2 cores were 1.05x one; with one
    thread each, 1.66x). Set before the pool forks and before anything imports torch, which reads
    these variables when it starts. WORKER_TORCH_THREADS overrides; an explicit OMP_NUM_THREADS
    wins."""
    threads = settings.WORKER_TORCH_THREADS or max(1, (os.cpu_count() or 1) // max(1, int(sender.concurrency or 1)))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(variable, str(threads))
