"""Content-Security-Policy: one strict policy (settings.CONTENT_SECURITY_POLICY), with inline styles
allowed only on the staff pages that need them.

The Django admin and the staff report pages (templates/reports/) use inline ``<style>`` blocks and
``style=`` attributes; the participant pages use none. Below the prefixes in
settings.CSP_INLINE_STYLE_URL_PREFIXES, style-src gains 'unsafe-inline'; nothing else changes
(script-src stays 'self' everywhere), and a view's own @csp_update/@csp_replace still applies.
"""
from __future__ import annotations

from csp.constants import UNSAFE_INLINE
from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings


class StudyCSPMiddleware(CSPMiddleware):
    def get_policy_parts(self, request, response, report_only: bool = False) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only=report_only)
        prefixes = tuple(getattr(settings, "CSP_INLINE_STYLE_URL_PREFIXES", ()))
        if prefixes and request.path_info.startswith(prefixes):
            update = dict(parts.update or {})
            update["style-src"] = [*(update.get("style-src") or ()), UNSAFE_INLINE]
            parts.update = update
        return parts
