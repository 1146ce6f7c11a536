"""tests/unit holds the Django-free libraries' tests (explainers/, studyapp/analysis/).

They replace the project-wide autouse fixtures (Django settings, Celery app) with no-ops, so they
also run under ``pytest -p no:django``, as the libraries are meant to be used.
"""
import pytest

from explainers import demo_data
from explainers.training import train_classifier


@pytest.fixture(autouse=True)
def _isolated_media():
    yield


@pytest.fixture(autouse=True, scope="session")
def _celery_in_process():
    yield


@pytest.fixture(scope="session")
def digits_cnn():
    """image_cnn trained 5 epochs on the first 600 digits (seed 0), and the digits data: trained once
    for every test module that needs a real (not random) image model."""
    data = demo_data.load_digits()
    model = train_classifier(architecture="image_cnn", X=data["X"][:600], y=data["y"][:600],
                             num_classes=10, seed=0, epochs=5).model
    return model, data
