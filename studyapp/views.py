"""Participant-facing and operational views. Thin: parse, authorize, call a selector or service."""
from __future__ import annotations

from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_safe

from studyapp.models import Study
from studyapp.api.participation import browser_enroll, participant_session_for
from studyapp.api.throttles import EntryThrottle
from studyapp.selectors import studies_visible_to, study_get_by_public_id
from studyapp.services.participants import ParticipationError, consent_version


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html")


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness + database reachability, for docker compose and load balancers."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any DB failure means "not healthy"; report it, don't raise
        return JsonResponse({"status": "error", "database": str(exc.__class__.__name__)}, status=503)
    return JsonResponse({"status": "ok", "database": "ok"})


PAGES = {
    "closed": ("participant/closed.html", 410),
    "full": ("participant/full.html", 200),
    "paused": ("participant/paused.html", 503),
    "not_open": ("participant/not_open.html", 200),
    "already_taken_part": ("participant/already_taken_part.html", 200),
    "staff_preview": ("participant/staff_preview.html", 200),
    "busy": ("participant/busy.html", 429),
}


def _polite(request: HttpRequest, study: Study, reason: str) -> HttpResponse:
    template, status = PAGES.get(reason, PAGES["not_open"])
    return render(request, template, {"study": study}, status=status)


@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def study_landing(request: HttpRequest, public_id) -> HttpResponse:
    """The participant link. GET shows welcome and consent and creates nothing (link scanners and
    previews follow links); POST "I agree" enrolls, "I decline" ends. Staff may preview any state."""
    study = study_get_by_public_id(public_id=public_id)
    if study is None:
        raise Http404("No such study.")
    staff = request.user.is_authenticated and request.user.is_staff
    preview = study.state != Study.State.LIVE
    if request.method in ("GET", "HEAD"):
        # A study that is not live is previewed only by staff who may see it (its owner and
        # collaborators, superusers); to anyone else it does not exist.
        if preview and not (staff and studies_visible_to(user=request.user).filter(pk=study.pk).exists()):
            if study.state == Study.State.CLOSED:
                return _polite(request, study, "closed")
            raise Http404("No such study.")
        return _landing(request, study, preview=preview, staff=staff)
    if request.POST.get("choice") != "agree":
        return render(request, "participant/declined.html", {"study": study})
    if participant_session_for(request, study) is None:
        throttle = EntryThrottle()
        if not throttle.allow_request(request, None):
            response = _polite(request, study, "busy")
            response["Retry-After"] = str(int(throttle.wait() or 60) + 1)
            return response
        try:
            browser_enroll(request, study=study, params=request.GET.dict(),
                           consent_shown=request.POST.get("consent_version", "")[:12] or None)
        except ParticipationError as exc:  # staff, not live, closed, full, already taken part
            if exc.reason == "consent_changed":
                return _landing(request, study, preview=preview, staff=staff, notice=str(exc.messages[0]))
            return _polite(request, study, exc.reason)
    return redirect("study-session", public_id=study.public_id)


def _landing(request: HttpRequest, study: Study, *, preview: bool, staff: bool, notice: str = "") -> HttpResponse:
    enrolled = participant_session_for(request, study) is not None
    return render(request, "participant/landing.html",
                  {"study": study, "preview": preview, "staff": staff, "enrolled": enrolled, "notice": notice,
                   "consent_version": consent_version(study), "query": request.GET.urlencode()})


@never_cache
@require_safe
def study_session(request: HttpRequest, public_id) -> HttpResponse:
    """The participant's session page (the steps render from the participant API)."""
    study = study_get_by_public_id(public_id=public_id)
    participant = participant_session_for(request, study) if study is not None else None
    if participant is None:
        raise Http404("No session for this study in this browser.")
    return render(request, "participant/session.html", {"study": study, "participant": participant})
