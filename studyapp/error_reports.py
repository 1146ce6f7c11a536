"""What error reports (and DEBUG pages) show of the settings.

Django hides settings whose names contain API, TOKEN, KEY, SECRET, PASS or SIGNATURE, but not
DATABASE_URL, REDIS_URL or CELERY_BROKER_URL, which carry the services' passwords.
"""
from __future__ import annotations

import re

from django.views.debug import SafeExceptionReporterFilter


class SettingsMaskingFilter(SafeExceptionReporterFilter):
    hidden_settings = re.compile("API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL|DSN|BROKER|LOCATION",
                                 flags=re.IGNORECASE)
