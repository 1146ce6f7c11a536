"""The Celery app. Configuration comes from Django settings (CELERY_* names).

With no broker configured (the embedded default) CELERY_TASK_ALWAYS_EAGER runs tasks in-process.
CUDA must not be initialized before the worker forks, so nothing here imports torch.
"""
from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studyapp.settings")

app = Celery("studyapp")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_routes = {
    # Preparation runs the model and the explainers: the GPU worker takes it when there is one.
    "worker.tasks.prepare_study": {"queue": "gpu"},
    # The statistics need no GPU.
    "worker.tasks.analyze_study": {"queue": "cpu"},
}
app.autodiscover_tasks(["worker"])
