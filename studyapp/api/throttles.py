"""Rate limits on the participant API, counted in the shared cache (Redis in production, so every
gunicorn worker and host counts together; the embedded default counts per process).

DRF's ``SimpleRateThrottle`` does the counting; these classes only say what is counted:

* ``EntryThrottle``: enrollments ("I agree") per client address, on the API and on the HTML
  landing page, so a script cannot fill a study's arms or the database. Enrollments that carry a
  simulation token (manage.py simulate_participants, the benchmarks) are not counted: the token is
  checked before anyone is enrolled, and a forged one enrolls nobody.
* ``AnswerThrottle``: answers per participant, far above human pace (a person takes seconds per
  trial), so a runaway or hostile client cannot flood the responses table.

A throttled request gets 429 with ``Retry-After``; the participant page retries 429 like a
network error, keeping the answer until it is stored (static/participant/api.js).
"""
from __future__ import annotations

import logging

from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle


logger = logging.getLogger(__name__)


class _SettingsRate(SimpleRateThrottle):
    def allow_request(self, request, view):
        try:
            return super().allow_request(request, view)
        except Exception:  # the cache (Redis) is down: let the request through
            # An answer must never fail because its counter cannot be read (benchmarks/load.py's
            # Redis drill: every answer was a 500 while Redis was stopped). The limit is a guard
            # against floods, not part of the record; it counts again when Redis is back.
            logger.warning("Rate limit %s not counted: the cache is unavailable", self.scope, exc_info=True)
            return True

    def get_rate(self):
        # Read when used (DRF reads its class attribute once, at import): a rate of None turns the
        # limit off, as the test suite does except in the tests of the limits themselves.
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)


class EntryThrottle(_SettingsRate):
    scope = "participant_entry"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class AnswerThrottle(_SettingsRate):
    scope = "participant_answer"

    def get_cache_key(self, request, view):
        participant = getattr(request, "auth", None)
        ident = getattr(participant, "pk", None)
        if ident is None:
            return None  # no participant: the permission check refuses the request anyway
        return self.cache_format % {"scope": self.scope, "ident": ident}
