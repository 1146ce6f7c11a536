"""Models and data: what a study shows and predicts."""
from __future__ import annotations

from django.db import models
from django.db.models import Q

from studyapp.models.base import (Modality, OpaqueUploadPath, TimeStamped, choices_check,
                                  stimulus_xor_edit_constraints)


class DatasetSource(models.TextChoices):
    UPLOAD = "upload", "Uploaded"
    BUILTIN = "builtin", "Built-in demo data"
    EXTERNAL = "external", "Items of a study whose data were collected elsewhere"


class DatasetModality(models.TextChoices):
    """``Modality`` plus "external": the items of an imported study are known by name only (no
    inputs are stored, so nothing is rendered, predicted or explained)."""

    IMAGE = Modality.IMAGE.value, Modality.IMAGE.label
    TABULAR = Modality.TABULAR.value, Modality.TABULAR.label
    EXTERNAL = "external", "Collected elsewhere (items named only)"


class Dataset(TimeStamped):
    """A validated, imported dataset. Its items are Stimulus rows."""

    Source = DatasetSource

    name = models.CharField(max_length=120, unique=True)
    modality = models.CharField(max_length=16, choices=DatasetModality.choices)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.UPLOAD)
    description = models.TextField(blank=True)
    # Model input shape of one item: [C, H, W] for images, [F] for tabular rows.
    input_shape = models.JSONField()
    class_names = models.JSONField(help_text="Label names, in class-index order.")
    feature_names = models.JSONField(default=list, blank=True, help_text="Tabular only.")
    feature_descriptions = models.JSONField(default=dict, blank=True,
                                            help_text="Tabular only: {feature: {description, unit}}.")
    content_sha256 = models.CharField(max_length=64, help_text="SHA-256 of the imported file.")
    n_items = models.PositiveIntegerField(default=0)
    # Value range of inputs (images: [0, 1]); rendering and SmoothGrad's noise scale use it.
    value_range = models.JSONField(default=list, blank=True)
    # How the train/test split was made (seed, fraction, stratified, counts), for provenance.
    split_info = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            choices_check("modality", DatasetModality, "dataset_modality_valid"),
            choices_check("source", DatasetSource, "dataset_source_valid"),
        ]

    def __str__(self) -> str:
        return self.name


class StimulusSplit(models.TextChoices):
    TRAIN = "train", "Train"
    TEST = "test", "Test"


class Stimulus(models.Model):
    """One item of a dataset, with its ground truth (empty when unknown: the items of a study whose
    data were collected elsewhere, which are known by their name in the file only).

    ``data`` is the model input as a float32 ``.npy`` blob. Images also get a display PNG with an
    opaque file name. ``source_name`` (the uploaded file name or row number) is for experimenters
    only and never reaches participants: it may encode the label.
    """

    Split = StimulusSplit

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="stimuli")
    index = models.PositiveIntegerField()
    source_name = models.CharField(max_length=255, blank=True)
    label = models.PositiveIntegerField(null=True, blank=True,
                                        help_text="Ground-truth class index; empty when unknown (data collected "
                                                  "elsewhere).")
    split = models.CharField(max_length=8, choices=Split.choices, default=Split.TEST)
    data = models.BinaryField()
    image = models.FileField(upload_to=OpaqueUploadPath("stimuli"), blank=True)

    class Meta:
        verbose_name_plural = "stimuli"
        ordering = ["dataset", "index"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "index"], name="stimulus_unique_index"),
            choices_check("split", StimulusSplit, "stimulus_split_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.dataset.name} #{self.index}"


class MLModelFormat(models.TextChoices):
    SAFETENSORS = "safetensors", "safetensors state dict"
    TORCHSCRIPT = "torchscript", "TorchScript (only when MODEL_ALLOW_TORCHSCRIPT is on)"


class MLModelRole(models.TextChoices):
    TRAINED = "trained", "Trained model"
    LABEL_RANDOMIZED = "label_randomized", "Trained on permuted labels (sanity check)"


class MLModel(TimeStamped):
    """A model registered for studies: an allowlisted architecture plus safetensors weights."""

    Format = MLModelFormat

    Role = MLModelRole

    name = models.CharField(max_length=120, unique=True)
    architecture = models.CharField(max_length=64)
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="models",
                                help_text="The dataset the model was validated against.")
    input_shape = models.JSONField()
    class_names = models.JSONField()
    hyperparameters = models.JSONField(default=dict, blank=True)
    weights = models.FileField(upload_to=OpaqueUploadPath("models"))
    weights_sha256 = models.CharField(max_length=64)
    format = models.CharField(max_length=16, choices=Format.choices, default=Format.SAFETENSORS)
    role = models.CharField(max_length=24, choices=Role.choices, default=Role.TRAINED)
    derived_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="derived_models")
    training = models.JSONField(default=dict, blank=True, help_text="Training configuration, if trained here.")
    metrics = models.JSONField(default=dict, blank=True)

    class Meta:
        verbose_name = "ML model"
        constraints = [
            choices_check("format", MLModelFormat, "mlmodel_format_valid"),
            choices_check("role", MLModelRole, "mlmodel_role_valid"),
            models.CheckConstraint(condition=Q(weights_sha256__regex=r"^[0-9a-f]{64}$"),
                                   name="mlmodel_sha256_hex"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.architecture})"


class EditKind(models.TextChoices):
    OCCLUDE_CELL = "occlude_cell", "Occlude one grid cell"
    FEATURE_QUANTILE = "feature_quantile", "Move one feature to another quantile"
    # The edited item of a counterfactual trial in data collected elsewhere: named by its item only.
    EXTERNAL = "external", "Edited elsewhere (imported; no input stored)"


class Edit(models.Model):
    """A counterfactual change to a stimulus (an occluded grid cell, a moved feature value)."""

    Kind = EditKind

    stimulus = models.ForeignKey(Stimulus, on_delete=models.CASCADE, related_name="edits")
    # Edits are shared by the studies that ask for the same edits of a stimulus: keyed by the
    # settings that made them, so a study with another grid or other quantiles gets its own.
    settings_sha256 = models.CharField(
        max_length=64, help_text="SHA-256 of the canonical edit settings that made this edit.")
    position = models.PositiveSmallIntegerField(help_text="Order among this stimulus' candidate edits.")
    kind = models.CharField(max_length=24, choices=Kind.choices)
    params = models.JSONField(default=dict)
    data = models.BinaryField(help_text="Edited model input, float32 .npy.")
    image = models.FileField(upload_to=OpaqueUploadPath("edits"), blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["stimulus", "settings_sha256", "position"],
                                    name="edit_unique_position"),
            choices_check("kind", EditKind, "edit_kind_valid"),
        ]

    def __str__(self) -> str:
        return f"Edit {self.position} of stimulus {self.stimulus_id} ({self.get_kind_display().lower()})"


class ModelOutput(models.Model):
    """The model's prediction on a stimulus or on an edit (exactly one of the two)."""

    model = models.ForeignKey(MLModel, on_delete=models.CASCADE, related_name="outputs")
    stimulus = models.ForeignKey(Stimulus, null=True, blank=True, on_delete=models.CASCADE, related_name="outputs")
    edit = models.ForeignKey(Edit, null=True, blank=True, on_delete=models.CASCADE, related_name="outputs")
    predicted = models.PositiveIntegerField()
    probabilities = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = stimulus_xor_edit_constraints(owner="model", prefix="modeloutput")

    def __str__(self) -> str:
        on = f"edit {self.edit_id}" if self.edit_id else f"stimulus {self.stimulus_id}"
        return f"Output of model {self.model_id} on {on}: class {self.predicted}"
