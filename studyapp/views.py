"""Participant-facing and operational views. Thin: parse, authorize, call a selector or service."""
from __future__ import annotations

from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from studyapp.models import Study
from studyapp.selectors import study_get_by_public_id


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html")


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness + database reachability, for docker compose and load balancers."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any DB failure means "not healthy"; report it, don't raise
        return JsonResponse({"status": "error", "database": str(exc.__class__.__name__)}, status=503)
    return JsonResponse({"status": "ok", "database": "ok"})


@never_cache
@require_GET
def study_landing(request: HttpRequest, public_id) -> HttpResponse:
    """The participant link. Only a live study accepts participants; staff may preview others."""
    study = study_get_by_public_id(public_id=public_id)
    if study is None:
        raise Http404("No such study.")
    preview = study.state != Study.State.LIVE
    if preview and not (request.user.is_authenticated and request.user.is_staff):
        if study.state == Study.State.CLOSED:
            return render(request, "participant/closed.html", {"study": study}, status=410)
        raise Http404("No such study.")
    return render(request, "participant/landing.html", {"study": study, "preview": preview})
