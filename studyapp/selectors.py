"""Read-side queries (HackSoft styleguide: selectors read, services write)."""
from __future__ import annotations

import uuid

from studyapp.models import Study


def study_get_by_public_id(*, public_id: uuid.UUID) -> Study | None:
    return Study.objects.filter(public_id=public_id).first()
