"""One admin page pattern: a form whose valid POST calls a service (uploads, deviations)."""
from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse


def form_view(model_admin: admin.ModelAdmin, request: HttpRequest, *, form_class, title: str, submit,
               done_url: str | None = None, submit_label: str = "Upload and validate",
               done_message: str | None = None) -> TemplateResponse:
    """Render a form; on valid POST call ``submit(cleaned_data)`` (a service) and go to the new object
    (or ``done_url``), saying ``done_message`` (default: "<object> was recorded.")."""
    form = form_class(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        try:
            obj = submit(form.cleaned_data)
        except ValidationError as exc:
            for message in exc.messages:
                form.add_error(None, message)
        else:
            model_admin.message_user(request, done_message or f"{obj} was recorded.", messages.SUCCESS)
            meta = obj._meta
            return HttpResponseRedirect(done_url or reverse(f"admin:{meta.app_label}_{meta.model_name}_change",
                                                            args=[obj.pk]))
    context = {**model_admin.admin_site.each_context(request), "title": title, "form": form,
               "opts": model_admin.model._meta, "submit_label": submit_label}
    return TemplateResponse(request, "admin/studyapp/upload_form.html", context)
