"""What error reports (and DEBUG pages) show of the settings.

Django hides settings whose names contain API, TOKEN, KEY, SECRET, PASS or SIGNATURE, but not
DATABASE_URL, REDIS_URL or CELERY_BROKER_URL, which carry the services' passwords.
"""
from __future__ import annotations

import logging
import re

from django.views.debug import SafeExceptionReporterFilter


class SettingsMaskingFilter(SafeExceptionReporterFilter):
    hidden_settings = re.compile("API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL|DSN|BROKER|LOCATION",
                                 flags=re.IGNORECASE)


class NoTracebackForBadClientBodies(logging.Filter):
    """Keep the one-line warning Django logs for a request whose multipart body is malformed (a
    400), without its traceback: the fault is the client's, anyone can send one, and a dozen lines
    of Django's parser per request would bury real errors in the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        from django.http.multipartparser import MultiPartParserError

        if record.exc_info and isinstance(record.exc_info[1], MultiPartParserError):
            record.exc_info, record.exc_text = None, None
        return True
