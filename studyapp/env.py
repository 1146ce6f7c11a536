"""Strict readers for settings from environment variables (12-factor).

django-environ parses URLs (DATABASE_URL) for us, but its scalar casts are lenient: ``bool("maybe")``
is silently False and ``float("12abc")`` is 12. A misread ``DJANGO_DEBUG`` or upload limit is a
production incident, so every scalar here is validated and a malformed value stops start-up with a
message naming the variable, the value and what would be accepted.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import environ
from django.core.exceptions import ImproperlyConfigured

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
SUPPORTED_DB_ENGINES = {
    "django.db.backends.sqlite3": "sqlite",
    "django.db.backends.postgresql": "postgres",
}


def _raw(name: str, environ_: Mapping[str, str] | None) -> str | None:
    value = (os.environ if environ_ is None else environ_).get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(name: str, default: str | None = None, *, environ_: Mapping[str, str] | None = None) -> str | None:
    value = _raw(name, environ_)
    return default if value is None else value


def env_bool(name: str, default: bool, *, environ_: Mapping[str, str] | None = None) -> bool:
    value = _raw(name, environ_)
    if value is None:
        return default
    word = value.lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ImproperlyConfigured(
        f"{name}={value!r} is not a boolean. Use one of: "
        f"{', '.join(sorted(TRUE_WORDS))} or {', '.join(sorted(FALSE_WORDS))}."
    )


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None,
            environ_: Mapping[str, str] | None = None) -> int:
    value = _raw(name, environ_)
    if value is None:
        return default
    try:
        number = int(value, 10)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a whole number (for example 200).") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is too small: it must be at least {minimum}.")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name}={number} is too large: it must be at most {maximum}.")
    return number


def env_list(name: str, default: list[str], *, environ_: Mapping[str, str] | None = None) -> list[str]:
    value = _raw(name, environ_)
    if value is None:
        return list(default)
    items = [item.strip() for item in value.split(",")]
    if any(item == "" for item in items):
        raise ImproperlyConfigured(f"{name}={value!r} has an empty entry; separate items with single commas.")
    return items


def env_choice(name: str, default: str, choices: tuple[str, ...], *,
               environ_: Mapping[str, str] | None = None) -> str:
    value = _raw(name, environ_)
    if value is None:
        return default
    if value.lower() not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} is not allowed; choose one of: {', '.join(choices)}.")
    return value.lower()


def env_database(name: str, default: str, *, environ_: Mapping[str, str] | None = None) -> dict:
    """DATABASE_URL -> Django DATABASES entry; only SQLite and PostgreSQL are supported."""
    url = _raw(name, environ_) or default
    if "://" not in url:
        raise ImproperlyConfigured(
            f"{name}={url!r} is not a database URL. Examples: sqlite:////abs/path/db.sqlite3, "
            "postgres://user:password@127.0.0.1:5432/dbname."
        )
    try:
        config = environ.Env.db_url_config(url)
    except Exception as exc:  # django-environ raises several types for malformed URLs
        raise ImproperlyConfigured(f"{name}={url!r} could not be parsed: {exc}") from None
    engine = config.get("ENGINE", "")
    if engine not in SUPPORTED_DB_ENGINES:
        raise ImproperlyConfigured(
            f"{name} uses an unsupported database ({url.split('://', 1)[0]!r}). "
            "Use sqlite:// (embedded default) or postgres:// (production)."
        )
    if SUPPORTED_DB_ENGINES[engine] == "postgres" and not config.get("NAME"):
        raise ImproperlyConfigured(f"{name}={url!r} names no database; add it after the port, e.g. .../studies.")
    return config
