from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from studyapp import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz/", views.healthz, name="healthz"),
    path("s/<uuid:public_id>/", views.study_landing, name="study-landing"),
    path("s/<uuid:public_id>/session/", views.study_session, name="study-session"),
    path("admin/", admin.site.urls),
    path("", include("studyapp.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("", include("studyapp.exports.urls")),
    path("", include("studyapp.reports.urls")),
]
