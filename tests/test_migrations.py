"""Committed migrations match the models."""
import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_makemigrations_check_finds_no_pending_changes():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)  # exits non-zero if a migration is missing
