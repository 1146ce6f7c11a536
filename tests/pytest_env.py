"""Loaded by pytest before Django's settings (``-p tests.pytest_env`` in pytest.ini): the test
suite runs on the development settings. The settings default to production (DEBUG off, a key and
hosts required) so that a deployment that forgets DJANGO_DEBUG fails closed; tests of the
production settings set their own environment in a subprocess."""
import os

os.environ.setdefault("DJANGO_DEBUG", "true")
