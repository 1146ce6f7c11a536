"""Preparation as stored units of work (studyapp.services.work_units runs them).

A study's preparation is a set of units with unique keys and dependencies: the model's outputs per
chunk, the item sample, counterfactual edits per chunk, each arm's maps per chunk, their rendering,
sanity checks. The database, not the broker, is the source of truth: a unit is claimed with a
conditional update and a lease, its results and its completion are written in one transaction, and
a dispatcher re-enqueues units whose message or worker was lost.
"""
from __future__ import annotations

from django.db import models
from django.db.models import Q

from studyapp.models.base import choices_check
from studyapp.models.study import Arm, Study


class UnitStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class PreparationUnit(models.Model):
    Status = UnitStatus

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="preparation_units")
    key = models.CharField(max_length=120, help_text="Unique within the study, e.g. 'maps/12/3'.")
    kind = models.CharField(max_length=16)
    step = models.CharField(max_length=120, help_text="What the researcher reads in the progress table.")
    arm = models.ForeignKey(Arm, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    params = models.JSONField(default=dict, blank=True)
    depends_on = models.JSONField(default=list, blank=True, help_text="Keys of the units that must be done first.")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    not_before = models.DateTimeField(null=True, blank=True, help_text="Backoff after a failed attempt.")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True, help_text="When a message was last sent for it.")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    seconds = models.FloatField(null=True, blank=True, help_text="Duration of the attempt that finished it.")
    error = models.TextField(blank=True)
    result = models.JSONField(default=dict, blank=True)
    # Storage names an attempt is about to write: a later attempt deletes those no row refers to,
    # so a worker killed between writing files and committing rows leaves no orphan.
    files_pending = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "id"]
        constraints = [
            models.UniqueConstraint(fields=["study", "key"], name="preparationunit_key_unique"),
            choices_check("status", UnitStatus, "preparationunit_status_valid"),
            models.CheckConstraint(condition=~Q(status="running") | Q(lease_expires_at__isnull=False),
                                   name="preparationunit_running_has_lease"),
            models.CheckConstraint(condition=~Q(status="failed") | ~Q(error=""), name="preparationunit_failed_has_error"),
        ]
        indexes = [models.Index(fields=["status", "lease_expires_at"], name="preparationunit_status_lease")]

    def __str__(self) -> str:
        return f"{self.step} ({self.key}, {self.status})"
