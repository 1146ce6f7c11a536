"""tests/unit holds the Django-free libraries' tests (explainers/, studyapp/analysis/).

They replace the project-wide autouse fixtures (Django settings, Celery app) with no-ops, so they
also run under ``pytest -p no:django``, as the libraries are meant to be used.
"""
import pytest


@pytest.fixture(autouse=True)
def _isolated_media():
    yield


@pytest.fixture(autouse=True, scope="session")
def _celery_in_process():
    yield
