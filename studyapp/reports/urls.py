"""Staff report pages (included at the site root by studyapp.urls)."""
from django.urls import path

from studyapp.reports import views

urlpatterns = [
    path("staff/studies/<int:pk>/report/", views.study_report, name="report-study"),
    path("staff/studies/<int:pk>/report/analyze/", views.study_report_analyze, name="report-study-analyze"),
    path("staff/studies/<int:pk>/report/download/", views.study_report_download, name="report-study-download"),
    path("staff/planner/", views.planner, name="report-planner"),
]
