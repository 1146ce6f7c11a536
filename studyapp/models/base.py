from __future__ import annotations

import uuid
from pathlib import PurePosixPath

from django.db import models
from django.utils.deconstruct import deconstructible


@deconstructible
class OpaqueUploadPath:
    """upload_to giving files random names.

    File names are visible in URLs and browser tooling; an uploaded name such as ``cat_07.png`` or
    a label-derived name would leak the truth to participants, so we never keep it.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __call__(self, instance, filename: str) -> str:
        suffix = PurePosixPath(filename).suffix.lower()[:10]
        return f"{self.folder}/{uuid.uuid4().hex}{suffix}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OpaqueUploadPath) and other.folder == self.folder


def choices_check(field: str, choices: type[models.TextChoices], name: str) -> models.CheckConstraint:
    return models.CheckConstraint(condition=models.Q(**{f"{field}__in": choices.values}), name=name)


class Modality(models.TextChoices):
    IMAGE = "image", "Image"
    TABULAR = "tabular", "Tabular"


class TimeStamped(models.Model):
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


def stimulus_xor_edit_constraints(*, owner: str, prefix: str) -> list[models.BaseConstraint]:
    """Rows about "a stimulus or an edit of it": exactly one of the two, and one row per owner."""
    return [
        models.CheckConstraint(
            condition=(models.Q(stimulus__isnull=False, edit__isnull=True)
                       | models.Q(stimulus__isnull=True, edit__isnull=False)),
            name=f"{prefix}_stimulus_xor_edit"),
        models.UniqueConstraint(fields=[owner, "stimulus"], condition=models.Q(stimulus__isnull=False),
                                name=f"{prefix}_unique_{owner}_stimulus"),
        models.UniqueConstraint(fields=[owner, "edit"], condition=models.Q(edit__isnull=False),
                                name=f"{prefix}_unique_{owner}_edit"),
    ]
