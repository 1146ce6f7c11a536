"""cleanup_media: stored files no row refers to are deleted once they are old enough."""
from __future__ import annotations

import os
import time
from io import StringIO

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command

from tests.factories import StimulusFactory, npy_bytes

pytestmark = pytest.mark.django_db


def _age(name: str, hours: float) -> None:
    past = time.time() - hours * 3600
    os.utime(default_storage.path(name), (past, past))


def _run(*args) -> str:
    out = StringIO()
    call_command("cleanup_media", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def files():
    stimulus = StimulusFactory(data=npy_bytes([0.0]))
    stimulus.image.save("x.png", ContentFile(b"in use"), save=True)
    old = default_storage.save("explanations/lost.png", ContentFile(b"from a racing preparation"))
    fresh = default_storage.save("edits/new.png", ContentFile(b"its row is not committed yet"))
    for name in (stimulus.image.name, old):
        _age(name, 24)
    return stimulus.image.name, old, fresh


def test_old_unreferenced_files_are_deleted_and_files_in_use_or_recent_are_kept(files):
    used, old, fresh = files
    out = _run()
    assert not default_storage.exists(old)
    assert default_storage.exists(used) and default_storage.exists(fresh)
    assert f"Deleted {old}" in out and "Deleted 1 unreferenced file(s); kept 1 in use and 1 unreferenced" in out


def test_a_dry_run_lists_what_it_would_delete_and_deletes_nothing(files):
    used, old, fresh = files
    out = _run("--dry-run", "--grace-hours", "0")
    assert f"Would delete {old}" in out and f"Would delete {fresh}" in out and used not in out
    assert all(default_storage.exists(name) for name in files)


def test_a_negative_grace_period_is_refused():
    with pytest.raises(CommandError, match="--grace-hours must be zero or more"):
        _run("--grace-hours", "-1")
