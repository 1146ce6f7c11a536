"""Dataset imports run by a worker: the durable record of one upload on its way to becoming a Dataset.

A large upload is checked for the cheap things in the request, saved under an opaque name and imported
by a worker (studyapp.services.dataset_imports), which reports its progress here. The database row,
not the broker, is the truth: it is claimed with a conditional update and a lease, and the Dataset
and the job's "succeeded" are written in one transaction.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from studyapp.models.base import OpaqueUploadPath, choices_check
from studyapp.models.data import Dataset


class DatasetImportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class DatasetImportKind(models.TextChoices):
    IMAGES = "images", "Images (zip with labels.csv)"
    TABULAR = "tabular", "Tabular (CSV)"


ACTIVE_STATUSES = (DatasetImportStatus.QUEUED, DatasetImportStatus.RUNNING)


class DatasetImport(models.Model):
    """One upload being imported by a worker, with its progress and, at the end, its dataset or its errors."""

    Status = DatasetImportStatus
    Kind = DatasetImportKind

    name = models.CharField(max_length=120, help_text="The name the dataset will have.")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    description = models.TextField(blank=True)
    options = models.JSONField(default=dict, blank=True,
                               help_text="Tabular: label_column, class_names and the descriptions file's name, "
                                         "as given on the form.")
    # Kept only while the import may still run: cleared (and the file deleted) when it succeeds or fails.
    upload = models.FileField(upload_to=OpaqueUploadPath("imports"), blank=True)
    descriptions_upload = models.FileField(upload_to=OpaqueUploadPath("imports"), blank=True)
    upload_name = models.CharField(max_length=255, blank=True, help_text="The uploaded file's own name, for messages.")
    upload_bytes = models.PositiveBigIntegerField(default=0)
    content_sha256 = models.CharField(max_length=64, help_text="SHA-256 of the uploaded file.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    phase = models.CharField(max_length=40, default="waiting for a worker",
                             help_text="What the import is doing, in words.")
    progress_done = models.PositiveBigIntegerField(default=0)
    progress_total = models.PositiveBigIntegerField(default=0)
    messages = models.JSONField(default=list, blank=True, help_text="Why it failed (a few messages, each capped).")
    # One job makes at most one dataset, and a dataset comes from at most one job (see the service's contract).
    dataset = models.OneToOneField(Dataset, null=True, blank=True, on_delete=models.CASCADE, related_name="import_job")
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    worker = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True, help_text="When a message was last sent for it.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    progress_at = models.DateTimeField(null=True, blank=True, help_text="When the worker last reported.")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            choices_check("status", DatasetImportStatus, "datasetimport_status_valid"),
            choices_check("kind", DatasetImportKind, "datasetimport_kind_valid"),
            # Two imports of one name would race to the same dataset: the second is refused at upload.
            models.UniqueConstraint(fields=["name"], condition=Q(status__in=["queued", "running"]),
                                    name="datasetimport_active_name_unique"),
            models.CheckConstraint(condition=~Q(status="running") | Q(lease_expires_at__isnull=False),
                                   name="datasetimport_running_has_lease"),
            models.CheckConstraint(condition=~Q(status="succeeded") | Q(dataset__isnull=False, finished_at__isnull=False),
                                   name="datasetimport_succeeded_has_dataset"),
            models.CheckConstraint(condition=~Q(status="failed") | (~Q(messages=[]) & Q(finished_at__isnull=False)),
                                   name="datasetimport_failed_has_messages"),
            models.CheckConstraint(condition=Q(dataset__isnull=True) | Q(status="succeeded"),
                                   name="datasetimport_dataset_only_when_succeeded"),
            models.CheckConstraint(condition=Q(progress_done__lte=F("progress_total")),
                                   name="datasetimport_progress_within_total"),
            models.CheckConstraint(condition=Q(content_sha256__regex=r"^[0-9a-f]{64}$"),
                                   name="datasetimport_sha256_hex"),
        ]
        indexes = [models.Index(fields=["status", "lease_expires_at"], name="datasetimport_status_lease")]

    def __str__(self) -> str:
        return f"The import of '{self.name}'"

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES
