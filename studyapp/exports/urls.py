from django.urls import path

from studyapp.exports import views
from studyapp.exports.files import FILES

# /staff/studies/<pk>/export/<slug-free file name>, e.g. .../export/responses.csv; the downloaded
# file is named <study slug>_responses.csv by Content-Disposition.
urlpatterns = [
    *(path(f"staff/studies/<int:pk>/export/{suffix}", views.export_download, {"kind": kind},
           name=f"export-{kind.replace('_', '-')}")
      for kind, suffix in FILES.items()),
    path("api/studies/", views.StudyListAPI.as_view(), name="export-api-studies"),
    path("api/studies/<int:pk>/exports/<str:kind>/", views.StudyExportAPI.as_view(), name="export-api-file"),
]
