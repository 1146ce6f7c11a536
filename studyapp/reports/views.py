"""Staff-only report pages: the study report, its download, "Run analysis", and the planner.

Thin: authorize (``staff_member_required``: anonymous and non-staff users go to the admin login;
then ``study_for_user``: the report and its download need "view results", "Run analysis" needs
"run analysis", the planner "view study", and the study must be the user's own or shared with
them), parse, call the context builder or the service. "Run analysis" is a POST (CSRF-protected by the
middleware) that queues an analysis job for the worker, followed by a redirect, so a reload
never runs the analysis twice.
"""
from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.core.exceptions import PermissionDenied
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST, require_safe

from studyapp.models import Study
from studyapp.reports.context import report_context, run_title
from studyapp.reports.forms import RunAnalysisForm, SampleSizeForm, SimulationForm
from studyapp.selectors import study_for_user
from studyapp.selectors.preparation import preparation_context
from studyapp.selectors.reports import study_analysis_jobs, study_report_data
from studyapp.reports.planner import sample_size_result, simulation_result, study_defaults
from studyapp.services.analysis_jobs import analysis_job_request


def _admin_context(request: HttpRequest, title: str) -> dict:
    return {**admin.site.each_context(request), "title": title, "opts": Study._meta}


@never_cache
@require_safe
@staff_member_required
def study_report(request: HttpRequest, pk: int) -> HttpResponse:
    study = study_for_user(user=request.user, pk=pk, perm="studyapp.view_results")
    context = {**_admin_context(request, f"Report: {study.title}"), **report_context(study_report_data(study=study)),
               "run_form": RunAnalysisForm(initial={"seed": study.seed}), "jobs": study_analysis_jobs(study=study),
               "launched": study.frozen_config is not None,
               "has_deviations": study.deviations.exists(), "control_links": _control_links(study),
               "prep": preparation_context(study=study, can_change=request.user.has_perm("studyapp.change_study")),
               "can_run_analysis": request.user.has_perm("studyapp.run_analysis"),
               "can_export": request.user.has_perm("studyapp.export_data")}
    return render(request, "reports/study_report.html", context)


def _control_links(study: Study) -> dict:
    """The report as the study's control centre: its plan, gallery, monitor and every export."""
    from studyapp.exports.files import FILES

    return {"plan": reverse("admin:studyapp_study_launch_review", args=[study.pk]),
            "gallery": reverse("admin:studyapp_study_gallery", args=[study.pk]) if study.item_sample else None,
            "monitor": reverse("admin:studyapp_study_monitor", args=[study.pk])
            if study.state in (Study.State.LIVE, Study.State.CLOSED) else None,
            "exports": [(name, reverse(f"export-{kind.replace('_', '-')}", args=[study.pk]))
                        for kind, name in FILES.items()]}


@never_cache
@require_POST
@staff_member_required
def study_report_analyze(request: HttpRequest, pk: int) -> HttpResponse:
    study = study_for_user(user=request.user, pk=pk, perm="studyapp.run_analysis")
    url = reverse("report-study", kwargs={"pk": study.pk})
    form = RunAnalysisForm(request.POST)
    if not form.is_valid():
        messages.error(request, "The analysis was not run: " + " ".join(
            str(e) for errors in form.errors.values() for e in errors))
        return HttpResponseRedirect(url)
    try:
        job = analysis_job_request(study=study, seed=form.cleaned_data["seed"], spec=form.spec(),
                                   requested_by=request.user.get_username())
    except ValidationError as exc:  # ServiceError: a message for the researcher
        messages.error(request, "The analysis was not run: " + " ".join(exc.messages))
        return HttpResponseRedirect(url)
    job.refresh_from_db()  # without a broker it has already run, in this request
    if job.status == job.Status.DONE:
        run = job.run
        title = run_title(kind=run.kind, number=run.number, looks=run.looks())
        messages.success(request, f"{title} stored (run #{run.pk}, seed {run.seed}).")
        return HttpResponseRedirect(f"{url}#run-{run.pk}")
    if job.status == job.Status.FAILED:
        messages.error(request, f"The analysis was not run: {job.error}")
        return HttpResponseRedirect(url)
    messages.info(request, f"Analysis request #{job.pk} is queued for the worker; this page shows the run when "
                           "it is stored (reload it).")
    return HttpResponseRedirect(f"{url}#analysis-jobs")


@never_cache
@require_safe
@staff_member_required
def study_report_download(request: HttpRequest, pk: int) -> HttpResponse:
    """The same report as ONE self-contained HTML file: inline CSS and SVG, no links, no scripts."""
    study = study_for_user(user=request.user, pk=pk, perm="studyapp.view_results")
    html = render_to_string("reports/study_report_standalone.html", report_context(study_report_data(study=study)))
    response = HttpResponse(html, content_type="text/html; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{study.slug}_report.html"'
    return response


def _compute(form, compute, failure: str):
    """Run ``compute`` on a valid form; a ValueError from the statistics becomes a form error."""
    if not form.is_valid():
        return None
    try:
        return compute(form.cleaned_data)
    except ValueError as exc:
        form.add_error(None, f"{failure}: {exc}.")
        return None


@never_cache
@require_safe
@staff_member_required
def planner(request: HttpRequest) -> HttpResponse:
    """Sample size (closed form) and calibration by simulation; GET, so results can be bookmarked.
    With ``?study=<pk>`` both start from that study's own design (``study_defaults``)."""
    if not request.user.has_perm("studyapp.view_study"):
        raise PermissionDenied
    calc = request.GET.get("calc")
    study = (study_for_user(user=request.user, pk=int(request.GET["study"]))
             if request.GET.get("study", "").isdigit() else None)
    defaults = study_defaults(study=study) if study else None
    size_form = SampleSizeForm(request.GET if calc == "size" else None, initial=defaults.size if defaults else None)
    sim_form = SimulationForm(request.GET if calc == "simulate" else None, prefix="sim",
                              initial=defaults.simulation if defaults else None)
    size = _compute(size_form, sample_size_result, "No sample size could be computed") if calc == "size" else None
    simulation = (_compute(sim_form, simulation_result, "The simulation could not be run")
                  if calc == "simulate" else None)
    context = {**_admin_context(request, "Study planner"), "size_form": size_form, "sim_form": sim_form,
               "study": study, "defaults": defaults, "size": size, "simulation": simulation}
    return render(request, "reports/planner.html", context)
