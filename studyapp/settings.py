"""One settings module, driven by environment variables (see studyapp/env.py and .env.example).

DEBUG defaults to off, so a deployment that forgets DJANGO_DEBUG fails closed: the web server and
the workers refuse to start without a secret key and allowed hosts, and never show a debug page.
``manage.py`` (the developer's tool: make demo, runserver) and the test suite set DJANGO_DEBUG=true
unless it is set, so a fresh clone just works on the embedded default: SQLite under DATA_DIR,
Celery tasks executed in-process. DATABASE_URL=postgres://... and CELERY_BROKER_URL/REDIS_URL switch
on the full stack.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from studyapp.env import (env_bool, env_choice, env_database, env_int, env_list, env_str)

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("DATA_DIR", str(BASE_DIR / "var"))).resolve()

DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if SECRET_KEY is None:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is False "
                                   "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))'). "
                                   "For local development set DJANGO_DEBUG=true (manage.py and make demo do).")
    SECRET_KEY = "insecure-embedded-development-key-only-for-DEBUG"  # never used with DEBUG off
elif not DEBUG and len(SECRET_KEY) < 50:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY is too short for production: use at least 50 random characters.")

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must list the site's host names when DJANGO_DEBUG is False.")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "csp",
    # Login lockout after repeated failures (django-axes; settings AXES_* below).
    "axes",
    # The study design as a form in the admin, generated from its JSON Schema (studyapp/design.py).
    "django_jsonform",
    "studyapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django_permissions_policy.PermissionsPolicyMiddleware",
    "studyapp.middleware.StudyCSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes requires: turns a locked-out login into its 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "studyapp.urls"
# Error reports (and DEBUG pages) also hide URL-valued settings: they carry passwords.
DEFAULT_EXCEPTION_REPORTER_FILTER = "studyapp.error_reports.SettingsMaskingFilter"
WSGI_APPLICATION = "studyapp.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env_database("DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # WAL lets the participant pages read while a background task writes; the busy timeout makes
    # concurrent writers wait instead of failing with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"})
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    # Short timeouts: a Redis that hangs must not hang the requests that read sessions from it.
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                          "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1}}}
    # Sessions read from Redis, written through to the database (studyapp/sessions.py says why).
    SESSION_ENGINE = "studyapp.sessions"
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Celery: no broker configured -> tasks run in-process (embedded default); otherwise Redis.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or REDIS_URL
CELERY_TASK_ALWAYS_EAGER = CELERY_BROKER_URL is None
if CELERY_TASK_ALWAYS_EAGER:
    CELERY_BROKER_URL = "memory://localhost/"  # never contacted in eager mode; avoids kombu's default-host guess
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_BACKEND = None
# Late ack + reject on worker loss: a crashed explanation chunk is redelivered; every task is
# idempotent (unique rows per unit of work). Long GPU chunks must stay below the visibility timeout.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 4 * 3600, minimum=60)}
CELERY_TASK_DEFAULT_QUEUE = "cpu"
# The live monitor's "excluded so far" count evaluates every exclusion rule over every answer (1.2 s
# at a million answers): it is counted at most once per this many seconds per study, however many
# monitors poll it every 5 s (0: every time).
MONITOR_EXCLUSIONS_SECONDS = env_int("MONITOR_EXCLUSIONS_SECONDS", 60, minimum=0, maximum=3600)
# Preparation units (studyapp.services.work_units): a running unit's lease, renewed by its worker
# while it works, so a worker that vanished delays its unit by about one lease; the dispatcher's
# period (Celery beat); a pending unit whose message was sent this long ago is sent again (the
# broker may have lost it); attempts before a unit that keeps failing or killing its worker fails.
PREPARATION_LEASE_SECONDS = env_int("PREPARATION_LEASE_SECONDS", 60, minimum=2)
PREPARATION_DISPATCH_SECONDS = env_int("PREPARATION_DISPATCH_SECONDS", 15, minimum=1)
PREPARATION_RESEND_SECONDS = env_int("PREPARATION_RESEND_SECONDS", 120, minimum=1)
PREPARATION_MAX_ATTEMPTS = env_int("PREPARATION_MAX_ATTEMPTS", 3, minimum=1, maximum=20)
# Stimuli per unit of maps, rendering and model outputs (a GPU worker halves a chunk on out-of-memory).
PREPARATION_CHUNK = env_int("PREPARATION_CHUNK", 64, minimum=1, maximum=100_000)
# PyTorch/BLAS threads per worker process (0: the host's cores divided by the pool's processes).
# Several worker processes on one host (e.g. --pool solo each) should set it: cores / processes.
WORKER_TORCH_THREADS = env_int("WORKER_TORCH_THREADS", 0, minimum=0, maximum=1024)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
                    if not DEBUG else "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Uploaded models, datasets and rendered explanations. Never served as public static files:
# participant-facing images go through views that check the trial state (no leakage).
MEDIA_ROOT = DATA_DIR / "media"
MEDIA_URL = "/media/"
# Object storage for the media (django-storages, any S3-compatible service: AWS S3, MinIO, Ceph,
# R2...), so that web replicas and workers on several hosts share uploads and rendered images
# without a network volume. Credentials come from boto3's usual sources (AWS_ACCESS_KEY_ID /
# AWS_SECRET_ACCESS_KEY, an instance role). Objects stay private: every file reaches a browser
# through a view that checks permissions and the trial state, never through a bucket URL.
MEDIA_S3_BUCKET = env_str("MEDIA_S3_BUCKET", "")
if MEDIA_S3_BUCKET:
    STORAGES["default"] = {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {
        "bucket_name": MEDIA_S3_BUCKET,
        "endpoint_url": env_str("MEDIA_S3_ENDPOINT_URL", "") or None,
        "region_name": env_str("MEDIA_S3_REGION", "") or None,
        "location": env_str("MEDIA_S3_PREFIX", "media"),
        # No ACL on objects: the bucket's own (private, public access blocked) applies; buckets with
        # ACLs disabled, AWS's default, refuse a canned ACL.
        "default_acl": None,
        # Never overwrite: names are opaque and unique, and a collision must not replace a file.
        "file_overwrite": False,
    }}

MAX_UPLOAD_MB = env_int("MAX_UPLOAD_MB", 200, minimum=1, maximum=10_000)
# Features (columns) a tabular dataset may have: checked from the CSV header before any row is read.
MAX_DATASET_FEATURES = env_int("MAX_DATASET_FEATURES", 10_000, minimum=1, maximum=1_000_000)
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
MODEL_ALLOW_TORCHSCRIPT = env_bool("MODEL_ALLOW_TORCHSCRIPT", False)
# Largest number of trials the secondary mixed-effects model is fitted on during an analysis run.
ANALYSIS_MIXED_MAX_TRIALS = env_int("ANALYSIS_MIXED_MAX_TRIALS", 100_000, minimum=0)
EXPLAINER_DEVICE = env_choice("EXPLAINER_DEVICE", "auto", ("auto", "cpu", "cuda"))

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    # json.loads with too-deep nesting raises RecursionError, which DRF's parser lets through as a 500.
    "DEFAULT_PARSER_CLASSES": ["studyapp.json_input.BoundedJSONParser"],
    # Participant API rate limits (studyapp/api/throttles.py), counted in the shared cache:
    # enrollments per client address, answers per participant (far above human pace).
    "DEFAULT_THROTTLE_RATES": {
        "participant_entry": env_str("PARTICIPANT_ENTRY_RATE", "60/min"),
        "participant_answer": env_str("PARTICIPANT_ANSWER_RATE", "120/min"),
    },
}

# Logins: django-axes locks a client address out after LOGIN_FAILURE_LIMIT failed logins for
# LOGIN_LOCKOUT_MINUTES (refused before any password hashing, so a flood costs little). By address,
# not by user name: nobody can lock a researcher out of their own account from elsewhere. Behind a
# reverse proxy set LOGIN_PROXY_COUNT to the number of proxies, so the client's address is used.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 10, minimum=1)
AXES_COOLOFF_TIME = datetime.timedelta(minutes=env_int("LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = ["ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
AXES_IPWARE_PROXY_COUNT = env_int("LOGIN_PROXY_COUNT", 0, minimum=0) or None
AXES_IPWARE_META_PRECEDENCE_ORDER = ["HTTP_X_FORWARDED_FOR", "REMOTE_ADDR"] if AXES_IPWARE_PROXY_COUNT else ["REMOTE_ADDR"]

# Browser features no page here uses are switched off (django-permissions-policy).
PERMISSIONS_POLICY = {feature: [] for feature in (
    "accelerometer", "camera", "display-capture", "geolocation", "gyroscope", "magnetometer", "microphone",
    "midi", "payment", "publickey-credentials-get", "screen-wake-lock", "serial", "usb", "xr-spatial-tracking")}
SPECTACULAR_SETTINGS = {"TITLE": "Explanation study platform API", "VERSION": "0.1.0",
                        "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAdminUser"]}

# Production hardening; `manage.py check --deploy` passes with no warnings when DEBUG is off.
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
# Health probes from docker compose / load balancers speak plain HTTP inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz/$"]
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", not DEBUG)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("DJANGO_BEHIND_PROXY", False) else None
# Secure cookies whenever DEBUG is off; DJANGO_SECURE_COOKIES=false only for plain-HTTP loopback
# measurements (benchmarks/participants.py), never in production (`check --deploy` warns).
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Content-Security-Policy (django-csp 4): scripts, styles, images, fonts and fetches only from this
# origin; no inline script or style, no plugins, no <base>, no framing, forms post only here.
# The participant pages are built for exactly this policy (static JS and CSS files, no style=).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    },
}
# The Django admin and the staff report pages use inline <style> blocks and style= attributes:
# below these prefixes style-src also allows 'unsafe-inline' (studyapp.middleware). Scripts stay
# 'self' everywhere.
CSP_INLINE_STYLE_URL_PREFIXES = ("/admin/", "/staff/")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"bad_client_bodies": {"()": "studyapp.error_reports.NoTracebackForBadClientBodies"}},
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    # The filter sits on the logger, so the record is changed before any handler sees it.
    "loggers": {"django.request": {"filters": ["bad_client_bodies"]}},
    "root": {"handlers": ["console"], "level": env_choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper()},
}

os.environ.setdefault("MPLCONFIGDIR", str(DATA_DIR / "mplconfig"))
