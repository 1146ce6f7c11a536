"""Media in S3-compatible object storage (MEDIA_S3_BUCKET): uploads, model weights and stimulus
images go to the bucket and come back through the same views and services.

The bucket is moto's S3 server, a real HTTP endpoint speaking the S3 protocol (the same requests
boto3 sends to AWS or MinIO), started on loopback for the module.
"""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import boto3
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import override_settings
from django.urls import reverse
from moto.server import ThreadedMotoServer

from benchmarks.common import free_port
from studyapp.services.media import media_delete_orphans, media_orphans
from studyapp.services.mlmodels import _load_cached, mlmodel_load
from studyapp.services.errors import ServiceError
from tests.factories import MLModelFactory, StimulusFactory, npy_bytes
from tests.test_settings import PRODUCTION_ENV, ROOT

BUCKET = "study-media"
pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def s3_endpoint():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    """The S3 storage as settings build it from MEDIA_S3_*; a fresh, empty bucket per test."""
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    storages = {"default": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {
        "bucket_name": BUCKET, "endpoint_url": s3_endpoint, "location": "media", "default_acl": None,
        "file_overwrite": False}},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
    _load_cached.cache_clear()
    with override_settings(STORAGES=storages):
        yield client
    _load_cached.cache_clear()
    for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)


def keys(client) -> set[str]:
    return {item["Key"] for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def test_settings_put_the_media_in_the_bucket_when_one_is_named(tmp_path):
    code = ("import django, os; os.environ['DJANGO_SETTINGS_MODULE']='studyapp.settings'; django.setup();"
            "from django.conf import settings; s = settings.STORAGES['default'];"
            "print(s['BACKEND'], s['OPTIONS']['bucket_name'], s['OPTIONS']['endpoint_url'], s['OPTIONS']['location'])")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "MEDIA_"))}
    env.update(PRODUCTION_ENV, DATA_DIR=str(tmp_path), MEDIA_S3_BUCKET="lab-media",
               MEDIA_S3_ENDPOINT_URL="https://minio.lab.example:9000")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["storages.backends.s3.S3Storage", "lab-media", "https://minio.lab.example:9000",
                                  "media"]


def test_model_weights_are_stored_in_the_bucket_and_loaded_from_it(bucket):
    mlmodel = MLModelFactory()
    assert f"media/{mlmodel.weights.name}" in keys(bucket)
    assert not os.path.exists(os.path.join(str(ROOT), "var", "media", mlmodel.weights.name))
    model = mlmodel_load(mlmodel=mlmodel)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_weights_changed_in_the_bucket_after_registration_are_refused(bucket):
    mlmodel = MLModelFactory()
    bucket.put_object(Bucket=BUCKET, Key=f"media/{mlmodel.weights.name}", Body=b"tampered")
    with pytest.raises(ServiceError, match="no longer matches its recorded SHA-256"):
        mlmodel_load(mlmodel=mlmodel)


def test_a_stimulus_image_in_the_bucket_is_served_to_staff_and_not_by_a_bucket_url(bucket, staff_client):
    stimulus = StimulusFactory(data=npy_bytes([0.0]))
    stimulus.image.save("label-cat.png", ContentFile(b"\x89PNG image bytes"), save=True)
    assert "cat" not in stimulus.image.name  # opaque names, in the bucket as on disk
    response = staff_client.get(reverse("admin:studyapp_stimulus_image", args=[stimulus.pk]))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"\x89PNG image bytes"


def test_cleanup_finds_and_deletes_orphans_in_the_bucket_and_keeps_files_in_use(bucket):
    stimulus = StimulusFactory(data=npy_bytes([0.0]))
    stimulus.image.save("x.png", ContentFile(b"in use"), save=True)
    lost = default_storage.save("explanations/lost.png", ContentFile(b"from a racing preparation"))
    report = media_orphans(grace=dt.timedelta(0))
    assert report.orphans == [lost] and report.referenced == 1
    media_delete_orphans(grace=dt.timedelta(0))
    assert keys(bucket) == {f"media/{stimulus.image.name}"}
