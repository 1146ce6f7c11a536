"""Stored files that no row refers to: find them and delete them.

They arise in two ways. Preparation renders an explanation or edit PNG before its
``bulk_create(ignore_conflicts=True)``: when two preparations race, the row that loses keeps no
file reference, and its PNG stays behind. And Django never deletes files with their rows: a
deleted study, model or dataset leaves its files. Files newer than a grace period are never
touched, since a preparation in progress writes its files before it commits their rows.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.apps import apps
from django.core.files.storage import default_storage
from django.db import models
from django.utils import timezone

from studyapp.models.base import OpaqueUploadPath

DEFAULT_GRACE = dt.timedelta(hours=6)


@dataclass(frozen=True)
class OrphanReport:
    orphans: list[str]  # storage names, sorted
    kept_recent: int  # unreferenced, but newer than the grace period
    referenced: int


def _managed_fields() -> dict[str, list[tuple[type[models.Model], str]]]:
    """Folder -> the (model, field) pairs whose files live there (our opaque upload folders)."""
    folders: dict[str, list] = {}
    for model in apps.get_app_config("studyapp").get_models():
        for field in model._meta.get_fields():
            if isinstance(field, models.FileField) and isinstance(field.upload_to, OpaqueUploadPath):
                folders.setdefault(field.upload_to.folder, []).append((model, field.name))
    return folders


def media_orphans(*, grace: dt.timedelta = DEFAULT_GRACE, storage=default_storage) -> OrphanReport:
    cutoff = timezone.now() - grace
    orphans, recent, referenced = [], 0, 0
    for folder, fields in sorted(_managed_fields().items()):
        try:
            # Not ``storage.exists(folder)``: object storage has no folders, only key prefixes.
            filenames = storage.listdir(folder)[1]
        except FileNotFoundError:
            continue
        used = set()
        for model, name in fields:
            used.update(model.objects.exclude(**{name: ""}).values_list(name, flat=True).iterator())
        for filename in filenames:
            path = f"{folder}/{filename}"
            if path in used:
                referenced += 1
            elif storage.get_modified_time(path) > cutoff:
                recent += 1
            else:
                orphans.append(path)
    return OrphanReport(orphans=sorted(orphans), kept_recent=recent, referenced=referenced)


def media_delete_orphans(*, grace: dt.timedelta = DEFAULT_GRACE, storage=default_storage) -> OrphanReport:
    """Delete the orphans ``media_orphans`` finds; returns what was found (and deleted)."""
    report = media_orphans(grace=grace, storage=storage)
    for path in report.orphans:
        storage.delete(path)
    return report
