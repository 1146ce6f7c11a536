"""Sessions read from Redis and written through to the database (Django's ``cached_db``), made
safe for a Redis outage.

Why: a participant request read its session with one database query (about a tenth of the
request's time, see benchmarks/participants.py); Redis answers it faster and spares the database.
The database stays the record, so a Redis restart (it keeps nothing on disk) loses no session.

Django's ``cached_db`` already survives a failed cache read and write on ``save``, but not a
failed cache write after a database fallback in ``load``, nor a failed cache check in ``exists``
or cache delete (both in ``cycle_key`` at enrollment): with Redis down those would turn every participant request into a 500. Here a
cache failure is logged and the database answers. A cached copy whose delete failed lives until
the session's expiry at most; after ``cycle_key`` it holds only what the old session held before
enrollment (the participant is bound to the new key only).
"""
from __future__ import annotations

import logging

from django.contrib.sessions.backends.cached_db import SessionStore as CachedDBStore
from django.contrib.sessions.backends.db import SessionStore as DBStore

logger = logging.getLogger("django.contrib.sessions")


class SessionStore(CachedDBStore):
    def load(self):
        try:
            data = self._cache.get(self.cache_key)
        except Exception:
            logger.warning("Session cache unavailable; reading the session from the database", exc_info=True)
            return self._load_from_db(cache=False)
        if data is None:
            return self._load_from_db(cache=True)
        return data

    def _load_from_db(self, *, cache: bool) -> dict:
        s = self._get_session_from_db()
        if not s:
            return {}
        data = self.decode(s.session_data)
        if cache:
            try:
                self._cache.set(self.cache_key, data, self.get_expiry_age(expiry=s.expire_date))
            except Exception:
                logger.warning("Session cache unavailable; session not cached", exc_info=True)
        return data

    def exists(self, session_key):
        try:
            return super().exists(session_key)
        except Exception:  # the cache check comes first; the database alone decides
            return DBStore.exists(self, session_key)

    def delete(self, session_key=None):
        try:
            super().delete(session_key)
        except Exception:
            # The database row is gone (DBStore.delete ran first); only the cached copy may remain.
            logger.warning("Session cache unavailable; cached copy not deleted", exc_info=True)
