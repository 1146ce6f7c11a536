"""Links to the report pages for the admin (e.g. a StudyAdmin list column)."""
from __future__ import annotations

from django.urls import reverse
from django.utils.html import format_html

from studyapp.models import Study


def report_link(study: Study) -> str:
    """An HTML anchor to the study's report page (escaped; safe to return from a list_display method)."""
    return format_html('<a href="{}">Report</a>', reverse("report-study", kwargs={"pk": study.pk}))


def planner_link() -> str:
    return format_html('<a href="{}">Study planner</a>', reverse("report-planner"))
