from __future__ import annotations

import io

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import FileResponse, Http404, HttpRequest, HttpResponseNotAllowed, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from studyapp.admin.form_view import form_view
from studyapp.admin.forms import DatasetImportForm, MLModelUploadForm
from studyapp.models import Dataset, DatasetImport, MLModel, Stimulus, Study
from studyapp.selectors import studies_visible_to
from studyapp.services.datasets import stimulus_array
from studyapp.services.mlmodels import mlmodel_register


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records created by services (imports, participants, answers) are browsed, not edited here."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class LabDataAdmin(ReadOnlyAdmin):
    """The lab's datasets, models and stimuli: shared by every study, so model permissions decide,
    not study access. Only their deletion page would name other researchers' studies and rows
    (what the deletion would take or is protected by): it says how many instead."""

    def studies_using(self, objs):
        raise NotImplementedError

    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        hidden = (self.studies_using(objs).exclude(pk__in=studies_visible_to(user=request.user).values("pk"))
                  .distinct().count())
        if hidden:
            words = f"records of {hidden} stud{'y' if hidden == 1 else 'ies'} not shared with you"
            deleted, counts = [f"{self.model._meta.verbose_name_plural} and {words}"], {}
            protected = [words] if protected else protected
        return deleted, counts, perms_needed, protected


@admin.register(Dataset)
class DatasetAdmin(LabDataAdmin):
    list_display = ["name", "modality", "source", "n_items", "created_at"]
    list_filter = ["modality", "source"]
    search_fields = ["name", "description"]
    readonly_fields = ["name", "modality", "source", "description", "class_counts", "input_shape", "class_names",
                       "feature_names", "feature_descriptions", "content_sha256", "n_items", "value_range", "created_at"]

    def studies_using(self, objs):
        return Study.objects.filter(Q(dataset__in=objs) | Q(model__dataset__in=objs))

    @admin.display(description="items per class and split")
    def class_counts(self, obj) -> str:
        from studyapp.selectors.data_checks import dataset_class_counts

        rows = dataset_class_counts(dataset=obj)
        return format_html_join("", "<div>{}: {} training, {} test</div>",
                                ((r["label"], r["train"], r["test"]) for r in rows)) or "—"

    def has_add_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("studyapp.add_dataset")

    def add_view(self, request, form_url="", extra_context=None):
        """A small upload is imported in the request and opens the new dataset; a large one is checked for
        what costs little, queued for a worker, and opens its progress page (studyapp.services.dataset_imports)."""
        from studyapp.services.dataset_imports import dataset_import_start

        if not self.has_add_permission(request):  # form_view replaces Django's add view, and its check
            raise PermissionDenied

        def named(data: bytes | None, field: str) -> io.BytesIO | None:
            # The form hands over the bytes; the file's own name makes the messages say which file.
            if data is None:
                return None
            buffer = io.BytesIO(data)
            buffer.name = getattr(request.FILES.get(field), "name", field)
            return buffer

        def submit(data):
            return dataset_import_start(
                name=data["name"], kind=data["kind"], data_file=named(data["data_file"], "data_file"),
                descriptions=named(data["descriptions_file"], "descriptions_file"),
                label_column=data["label_column"] or "label", class_names=data.get("class_names"),
                description=data["description"], started_by=request.user)

        return form_view(self, request, form_class=DatasetImportForm, title="Import a dataset", submit=submit)


def import_progress(job: DatasetImport) -> dict:
    """What the progress page and its JSON say about an import."""
    percent = round(100 * job.progress_done / job.progress_total) if job.progress_total else None
    return {"id": job.pk, "name": job.name, "kind": job.kind, "status": job.status,
            "status_label": job.get_status_display(), "active": job.active, "phase": job.phase,
            "done": job.progress_done, "total": job.progress_total, "percent": percent,
            "counts": f"{job.progress_done:,} of {job.progress_total:,}" if job.progress_total else "",
            "attempts": job.attempts, "messages": list(job.messages),
            "dataset_url": reverse("admin:studyapp_dataset_change", args=[job.dataset_id]) if job.dataset_id else None,
            "page_url": reverse("admin:studyapp_datasetimport_change", args=[job.pk]),
            "created_at": job.created_at.isoformat() if job.created_at else None,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None}


@admin.register(DatasetImport)
class DatasetImportAdmin(ReadOnlyAdmin):
    """Uploads being imported by a worker, and how each ended. Like the datasets they make, they are the
    lab's: whoever may add datasets follows them; the researcher who started one may always follow it.
    Deleting a queued or running import cancels it (the worker finds no job and writes nothing)."""

    list_display = ["name", "kind", "status", "progress", "dataset", "started_by", "created_at", "finished_at"]
    list_filter = ["status", "kind"]
    search_fields = ["name", "upload_name"]
    list_select_related = ["dataset", "started_by"]

    @admin.display(description="progress")
    def progress(self, obj: DatasetImport) -> str:
        if not obj.active:
            return obj.phase
        return f"{obj.phase}: {obj.progress_done:,} of {obj.progress_total:,}" if obj.progress_total else obj.phase

    def has_view_permission(self, request, obj=None) -> bool:
        user = request.user
        return user.has_perm("studyapp.add_dataset") or (obj is not None and obj.started_by_id == user.pk)

    def get_urls(self):
        extra = [path("<int:pk>/status/", self.admin_site.admin_view(self.status_view),
                      name="studyapp_datasetimport_status")]
        return extra + super().get_urls()

    def _job(self, request: HttpRequest, pk) -> DatasetImport:
        job = DatasetImport.objects.select_related("dataset").filter(pk=pk).first()
        if job is None:
            raise Http404("No such import.")
        if not self.has_view_permission(request, job):
            raise PermissionDenied
        return job

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """The progress page: it refreshes its progress box (static/staff/preparation.js, fed by
        ``status_view``'s fragment) until the import ends, then links the dataset or lists the problems."""
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET"])
        try:
            pk = int(unquote(object_id))
        except ValueError:
            raise Http404("No such import.") from None
        job = self._job(request, pk)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "job": job,
                   "title": f"Import of the dataset '{job.name}'", "progress": import_progress(job),
                   "can_add_dataset": request.user.has_perm("studyapp.add_dataset")}
        response = TemplateResponse(request, "admin/studyapp/dataset_import.html", context)
        response["Cache-Control"] = "no-store"
        return response

    def status_view(self, request: HttpRequest, pk: int):
        """The import's status as JSON (for scripts); with ``?format=html``, the progress box that the
        progress page swaps in every 3 seconds."""
        job = self._job(request, pk)
        progress = import_progress(job)
        if request.GET.get("format") == "html":
            response = TemplateResponse(request, "admin/studyapp/_dataset_import_progress.html",
                                        {"job": job, "progress": progress,
                                         "can_add_dataset": request.user.has_perm("studyapp.add_dataset")})
        else:
            response = JsonResponse(progress)
        response["Cache-Control"] = "no-store"
        return response


@admin.register(Stimulus)
class StimulusAdmin(LabDataAdmin):
    list_display = ["__str__", "thumbnail", "label_name", "split", "source_name"]
    list_filter = ["dataset", "split", "label"]
    search_fields = ["source_name", "dataset__name"]
    list_select_related = ["dataset"]
    list_per_page = 50
    readonly_fields = ["dataset", "index", "source_name", "label", "split", "thumbnail", "values"]
    exclude = ["data", "image"]

    def studies_using(self, objs):
        return Study.objects.filter(Q(items__stimulus__in=objs) | Q(participants__trials__stimulus__in=objs)
                                    | Q(arms__explanations__stimulus__in=objs))

    @admin.display(description="image")
    def thumbnail(self, obj: Stimulus):
        if not obj.image:
            return "—"
        url = reverse("admin:studyapp_stimulus_image", args=[obj.pk])
        return format_html('<img src="{}" alt="" width="48" height="48" style="image-rendering:pixelated">', url)

    @admin.display(description="label")
    def label_name(self, obj: Stimulus) -> str:
        names = obj.dataset.class_names
        if obj.label is None:  # an item of data collected elsewhere: its truth is unknown
            return "—"
        return names[obj.label] if obj.label < len(names) else str(obj.label)

    @admin.display(description="feature values")
    def values(self, obj: Stimulus) -> str:
        array = stimulus_array(obj)
        if obj.dataset.modality != "tabular":
            return f"array of shape {list(array.shape)}"
        return ", ".join(f"{name} = {value:.4g}" for name, value in zip(obj.dataset.feature_names, array))

    def get_urls(self):
        extra = [path("<int:pk>/image/", self.admin_site.admin_view(self.image_view), name="studyapp_stimulus_image")]
        return extra + super().get_urls()

    def image_view(self, request: HttpRequest, pk: int) -> FileResponse:
        """Staff who may view stimuli: stimulus images are not public media (see MEDIA_ROOT in
        settings). Datasets and their stimuli are the lab's, shared by its studies, so no study
        access is asked."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        stimulus = Stimulus.objects.filter(pk=pk).only("image").first()
        if stimulus is None or not stimulus.image:
            raise Http404("No image.")
        return FileResponse(stimulus.image.open("rb"), content_type="image/png")


@admin.register(MLModel)
class MLModelAdmin(LabDataAdmin):
    # Warnings are on the model's page (two queries each; the list stays constant in queries).
    list_display = ["name", "architecture", "dataset", "role", "format", "short_sha", "test_accuracy", "created_at"]
    list_filter = ["architecture", "role", "format"]
    search_fields = ["name", "weights_sha256"]
    list_select_related = ["dataset"]
    readonly_fields = ["name", "warnings", "architecture", "dataset", "input_shape", "class_names", "hyperparameters",
                       "weights_sha256", "format", "role", "derived_from", "training", "metrics", "created_at"]

    @admin.display(description="warnings")
    def warnings(self, obj) -> str:
        from studyapp.selectors.data_checks import model_warnings

        found = model_warnings(model=obj)
        return format_html_join("", "<div>{}</div>", ((w,) for w in found)) if found else "none"
    exclude = ["weights"]

    def studies_using(self, objs):
        return Study.objects.filter(model__in=objs)

    @admin.display(description="SHA-256")
    def short_sha(self, obj: MLModel) -> str:
        return obj.weights_sha256[:12]

    @admin.display(description="test accuracy")
    def test_accuracy(self, obj: MLModel) -> str:
        value = (obj.metrics or {}).get("test_accuracy")
        return "—" if value is None else f"{value:.3f}"

    def has_add_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("studyapp.add_mlmodel")

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):  # form_view replaces Django's add view, and its check
            raise PermissionDenied

        def submit(data):
            return mlmodel_register(name=data["name"], architecture=data["architecture"], weights=data["weights_file"],
                                    dataset=data["dataset"], input_shape=data["input_shape"],
                                    class_names=data["class_names"], hyperparameters=data["hyperparameters"] or {})

        return form_view(self, request, form_class=MLModelUploadForm, title="Upload a model", submit=submit)
