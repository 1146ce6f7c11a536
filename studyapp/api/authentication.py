"""Who is asking: the participant whose session this browser holds for the study in the URL.

Participant identity lives in Django's session (an HttpOnly, SameSite cookie, rotated at
enrollment); the URL carries only the study's public id and opaque trial ids. Unsafe methods are
CSRF-checked like DRF's SessionAuthentication does for logged-in users.
"""
from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, CSRFCheck
from rest_framework.permissions import BasePermission

from studyapp.models import Participant
from studyapp.selectors.participation import participant_for_request

SESSION_KEY = "participation"


def session_participant_id(request, study_public_id) -> str | None:
    return (request.session.get(SESSION_KEY) or {}).get(str(study_public_id))


def session_remember(request, study_public_id, participant: Participant) -> None:
    """Bind the participant to this browser's session, rotating its key (no session fixation)."""
    mapping = dict(request.session.get(SESSION_KEY) or {})
    request.session.cycle_key()
    mapping[str(study_public_id)] = str(participant.public_id)
    request.session[SESSION_KEY] = mapping


def enforce_csrf(request) -> None:
    check = CSRFCheck(lambda req: None)
    check.process_request(request)
    reason = check.process_view(request, None, (), {})
    if reason:
        raise exceptions.PermissionDenied(f"CSRF failed: {reason}")


class ParticipantAuthentication(BaseAuthentication):
    def authenticate(self, request):
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            enforce_csrf(request._request)
        match = request._request.resolver_match
        study_public_id = match.kwargs.get("study") if match else None
        participant_id = session_participant_id(request._request, study_public_id) if study_public_id else None
        if participant_id is None:
            return None
        try:
            participant = participant_for_request(public_id=participant_id, study_public_id=study_public_id)
        except ValidationError:  # not a UUID: a tampered or foreign session value
            return None
        return None if participant is None else (AnonymousUser(), participant)

    def authenticate_header(self, request) -> str:
        return "Session"  # so a missing session is a 401, not a 403


class IsParticipant(BasePermission):
    message = "No session for this study in this browser: open the study link and agree to take part."

    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, Participant)


class ParticipantAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents the participant session in the OpenAPI schema."""

    target_class = "studyapp.api.authentication.ParticipantAuthentication"
    name = "participantSession"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "cookie", "name": "sessionid",
                "description": "Set when the participant agrees to take part (POST consent)."}
