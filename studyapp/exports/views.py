"""Staff-only downloads: plain Django views (for links in the admin) and a DRF API (for scripts).

Thin: authorize, look the study up, call ``export_response``. Anonymous and non-staff users get a
redirect to the admin login (Django views) or 403 (API; DRF's IsAdminUser + session auth). Staff
need the "download exports" permission (403 without it), and see only the studies they own or
that are shared with them (404 for the others; ``studyapp.selectors.study_for_user``).
"""
from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponseBase
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.permissions import BasePermission, IsAdminUser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from studyapp.exports.files import FILES, KINDS, export_response
from studyapp.models import Study
from studyapp.selectors import studies_visible_to, study_for_user

EXPORT_PERMISSION = "studyapp.export_data"


@never_cache
@require_GET
@staff_member_required
def export_download(request: HttpRequest, pk: int, kind: str) -> HttpResponseBase:
    study = study_for_user(user=request.user, pk=pk, perm=EXPORT_PERMISSION)
    return export_response(study=study, kind=kind)


# -- API ----------------------------------------------------------------------------------------

class CanExport(BasePermission):
    """Staff with the "download exports" permission (which studies: ``study_for_user``)."""

    message = "You need the permission to download exports; ask an administrator."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.has_perm(EXPORT_PERMISSION))


class CSVPassthroughRenderer(BaseRenderer):
    """Lets clients send ``Accept: text/csv``; the views return finished (streaming) responses."""

    media_type = "text/csv"
    format = "csv"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data


class HTMLPassthroughRenderer(CSVPassthroughRenderer):
    media_type = "text/html"
    format = "html"


@extend_schema_field({"type": "object", "additionalProperties": {"type": "string", "format": "uri"},
                      "description": "Export kind -> download URL."})
class ExportLinksField(serializers.Field):
    def to_representation(self, study: Study) -> dict[str, str]:
        request = self.context.get("request")
        links = {kind: reverse("export-api-file", kwargs={"pk": study.pk, "kind": kind}) for kind in KINDS}
        return {k: request.build_absolute_uri(v) for k, v in links.items()} if request else links


class StudyExportSerializer(serializers.ModelSerializer):
    n_participants = serializers.IntegerField(read_only=True)
    exports = ExportLinksField(source="*", read_only=True)

    class Meta:
        model = Study
        fields = ["id", "slug", "title", "state", "launched_at", "closed_at", "frozen_sha256", "n_participants",
                  "exports"]
        read_only_fields = fields


class StudyListAPI(APIView):
    permission_classes = [IsAdminUser, CanExport]

    @extend_schema(
        summary="Your studies and their export links (staff who may download exports)",
        description="The studies you own or that are shared with you (every study for a superuser).",
        responses={200: StudyExportSerializer(many=True),
                   403: OpenApiResponse(description="Not staff, or no permission to download exports.")},
        tags=["exports"],
    )
    def get(self, request: Request):
        studies = studies_visible_to(user=request.user).annotate(n_participants=Count("participants")).order_by("id")
        return Response(StudyExportSerializer(studies, many=True, context={"request": request}).data)


_FILE_SCHEMA = {"type": "string", "format": "binary"}
_FILE_DESCRIPTION = ("The file, as an attachment named <study slug>_<file>: CSV for responses, participants, "
                     "hypotheses and codebook; JSON for manifest and codebook_json; HTML for codebook_html.")


class StudyExportAPI(APIView):
    permission_classes = [IsAdminUser, CanExport]
    renderer_classes = [JSONRenderer, CSVPassthroughRenderer, HTMLPassthroughRenderer]

    @extend_schema(
        summary="Download one export of a study (staff only)",
        description=("Kinds: " + ", ".join(f"`{k}` ({v})" for k, v in FILES.items()) + ". CSV files stream in "
                     "constant memory; see the codebook for every column and manifest.json for provenance."),
        parameters=[OpenApiParameter("kind", OpenApiTypes.STR, OpenApiParameter.PATH, enum=list(KINDS),
                                     description="Which export.")],
        responses={
            (200, "text/csv"): OpenApiResponse(_FILE_SCHEMA, description=_FILE_DESCRIPTION),
            (200, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT, description=_FILE_DESCRIPTION),
            (200, "text/html"): OpenApiResponse(OpenApiTypes.STR, description=_FILE_DESCRIPTION),
            (403, "application/json"): OpenApiResponse(description="Not staff, or no permission to download exports."),
            (404, "application/json"): OpenApiResponse(description="No such study (or not yours), or no such kind."),
        },
        tags=["exports"],
    )
    def get(self, request: Request, pk: int, kind: str):
        if kind not in FILES:
            raise Http404(f"Unknown export {kind!r}; one of {', '.join(KINDS)}.")
        study = study_for_user(user=request.user, pk=pk, perm=EXPORT_PERMISSION)
        return export_response(study=study, kind=kind)
