"""Celery app and thin tasks that call studyapp services (``celery -A worker worker``)."""
from worker.celery import app

__all__ = ["app"]
