from __future__ import annotations

import json

from django import forms
from django.conf import settings
from django_jsonform.widgets import JSONFormWidget

from studyapp.json_input import BoundedJSONForm
from studyapp.models import Dataset


def _read_upload(upload, *, label: str) -> bytes:
    limit = settings.MAX_UPLOAD_MB * 1024 * 1024
    if upload.size > limit:
        raise forms.ValidationError(f"The {label} is {upload.size / (1024 * 1024):.1f} MB; the limit is "
                                    f"{settings.MAX_UPLOAD_MB} MB (setting MAX_UPLOAD_MB).")
    return upload.read()


class JSONListField(forms.CharField):
    """A list typed as JSON (["a", "b"]) or as comma-separated values (a, b)."""

    def __init__(self, *, item_type=str, **kwargs) -> None:
        self.item_type = item_type
        super().__init__(**kwargs)

    def to_python(self, value):
        value = super().to_python(value).strip()
        if not value:
            return None
        try:
            items = json.loads(value) if value.startswith("[") else [v.strip() for v in value.split(",")]
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"This is not a valid JSON list: {exc.msg}.") from None
        if not isinstance(items, list):
            raise forms.ValidationError("Enter a list, for example [1, 8, 8] or 1, 8, 8.")
        try:
            return [self.item_type(v) for v in items]
        except (TypeError, ValueError):
            kind = "whole numbers" if self.item_type is int else "text"
            raise forms.ValidationError(f"Every entry must be {kind}.") from None


def _architecture_choices() -> list[tuple[str, str]]:
    # Imported when the form is shown: explainers.architectures loads PyTorch, which the web
    # process should not pay for at start-up.
    from explainers.architectures import ARCHITECTURES

    return [(a.name, f"{a.name}: {a.description}") for a in ARCHITECTURES.values()]


class MLModelUploadForm(BoundedJSONForm, forms.Form):
    name = forms.CharField(max_length=120)
    architecture = forms.ChoiceField(choices=_architecture_choices)
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.order_by("name"),
                                     help_text="The weights are checked against this dataset's shapes and classes.")
    weights_file = forms.FileField(help_text="A safetensors file of the model's state_dict(). Pickle files "
                                             "(.pt, .pth, .pkl) are refused: they can run code when loaded.")
    input_shape = JSONListField(item_type=int, required=False,
                                help_text="Leave empty to use the dataset's shape, e.g. 1, 8, 8 or 6.")
    class_names = JSONListField(required=False, help_text="Leave empty to use the dataset's class names, in order.")
    hyperparameters = forms.JSONField(required=False, initial=dict,
                                      help_text='Architecture options, e.g. {"hidden": 64}.')

    def clean_weights_file(self) -> bytes:
        return _read_upload(self.cleaned_data["weights_file"], label="weights file")


class DatasetImportForm(forms.Form):
    KINDS = [("images", "Images: a zip of image files with labels.csv (filename,label[,split])"),
             ("tabular", "Tabular: a CSV with one row per item and a label column")]
    name = forms.CharField(max_length=120)
    kind = forms.ChoiceField(choices=KINDS, widget=forms.RadioSelect)
    data_file = forms.FileField()
    label_column = forms.CharField(initial="label", required=False, help_text="Tabular only.")
    class_names = forms.CharField(required=False, help_text="Tabular only, optional: every class, comma-separated, "
                                                            "in order (confirms a class with very few items).")
    descriptions_file = forms.FileField(required=False, help_text="Tabular only: CSV with columns "
                                                                  "feature,description,unit.")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)

    def clean_class_names(self) -> list[str] | None:
        names = [n.strip() for n in self.cleaned_data.get("class_names", "").split(",") if n.strip()]
        return names or None

    def clean_data_file(self) -> bytes:
        return _read_upload(self.cleaned_data["data_file"], label="data file")

    def clean_descriptions_file(self) -> bytes | None:
        upload = self.cleaned_data.get("descriptions_file")
        return _read_upload(upload, label="descriptions file") if upload else None


class DeviationForm(BoundedJSONForm, forms.Form):
    """A dated, explained change to the plan of a launched study (the frozen plan never changes)."""

    target = forms.ChoiceField(label="Concerns", help_text="The whole study, or one pre-registered hypothesis.")
    field = forms.CharField(max_length=64, help_text="e.g. planned_n_per_arm, alpha, exclusion_rules, target_per_arm.")
    value = forms.JSONField(help_text='The new value as JSON, e.g. 60, 0.01, "holm" or {"max_failed_attention_checks": 2}.')
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}),
                             help_text="Why the plan changes; shown with the date in the report and the exports.")

    def __init__(self, *args, hypothesis_labels: list[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["target"].choices = [("", "The study")] + [(label, f"Hypothesis {label}")
                                                               for label in hypothesis_labels]
        self.fields["target"].required = False


NEW_STUDY_DESIGN = {"blocks": [{"phase": "learning", "n_items": 10, "show_model_output": True, "show_aid": True},
                               {"phase": "test", "n_items": 20}]}


class DesignWidget(JSONFormWidget):
    """The design's form (django-jsonform), with its labels tied to their inputs for screen readers
    (the library draws them side by side, untied): static/staff/jsonform_labels.js."""

    @property
    def media(self):
        return super().media + forms.Media(js=["staff/jsonform_labels.js"])


class StudyForm(BoundedJSONForm, forms.ModelForm):
    """The study change form: the design comes from a form generated from its JSON Schema, whose
    empty settings arrive as null; they are dropped so that they keep their defaults. The form
    opens on the design in effect (defaults filled in), so what a researcher sees is what runs and
    a save does not turn an unset default (the standard questionnaire) into an empty list."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from studyapp.design import DesignError, design_parse

        if "config" not in self.fields or self.is_bound:
            return
        # A new study starts on a design that runs (learning with the aid, then a forward test, the
        # defaults for everything else); an existing one on the design in effect.
        stored = self.instance.config if self.instance.pk else NEW_STUDY_DESIGN
        try:
            design = design_parse(stored)
        except DesignError:
            return  # shown as stored; the problems are listed after saving
        self.initial["config"] = design.model_dump(mode="json", exclude_none=True)

    def clean_config(self):
        from studyapp.design import without_empty_settings

        return without_empty_settings(self.cleaned_data.get("config") or {})


class LaunchForm(forms.Form):
    confirm = forms.BooleanField(label="I have read this plan. Launching freezes it and opens the study to "
                                       "participants.")
    acknowledge_sanity_failures = forms.BooleanField(
        required=False, label="I launch knowing that the sanity check found maps that do not depend on the model; "
                              "record this acknowledgement with the plan.")

    acknowledge_spotted_placebos = forms.BooleanField(
        required=False, label="I launch knowing that the placebo realism check tells these placebos from the real "
                              "maps by how they look; record this acknowledgement with the plan.")

    def __init__(self, *args, failures: list[str] = (), spotted: list[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.failures, self.spotted = list(failures), list(spotted)

    def clean(self):
        data = super().clean()
        errors = []
        if self.failures and not data.get("acknowledge_sanity_failures"):
            errors.append(f"Acknowledge the failed sanity check of {', '.join(self.failures)} to launch.")
        if self.spotted and not data.get("acknowledge_spotted_placebos"):
            errors.append(f"Acknowledge that the placebos {', '.join(self.spotted)} can be spotted to launch.")
        if errors:
            raise forms.ValidationError(errors)
        return data


class SharingForm(forms.Form):
    """Who has access to a study: its collaborators and, for a superuser, its owner."""

    owner = forms.ModelChoiceField(queryset=None, required=False,
                                   help_text="Only superusers change the owner (for example to give a study "
                                             "created before owners existed to its researcher).")
    collaborators = forms.ModelMultipleChoiceField(
        queryset=None, required=False, widget=forms.CheckboxSelectMultiple,
        help_text="They see the study, its participants and its data, within what their own permissions allow.")

    def __init__(self, *args, can_change_owner: bool, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        from django.contrib.auth import get_user_model

        # Only staff can open the admin: offering anyone else would share nothing.
        staff = get_user_model().objects.filter(is_staff=True, is_active=True).order_by("username")
        self.fields["collaborators"].queryset = staff
        if can_change_owner:
            self.fields["owner"].queryset = staff
        else:
            del self.fields["owner"]
