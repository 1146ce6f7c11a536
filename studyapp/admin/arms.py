"""The study page's arms and hypotheses, edited together and saved at once.

A hypothesis names its arm and comparator by *name*, not by a saved row: the names come from the
arm rows on the page (static/staff/study_form.js keeps the choices in step as arms are added,
renamed or removed), are checked against the arm rows submitted in the same POST, and become Arm
rows when the hypothesis is saved, after the arm inline (the admin saves inlines in order). Without
JavaScript the choices are the saved arms. Each arm's settings boxes show the valid settings of the
method and manipulation chosen in that row (studyapp.arm_settings).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet
from django.template.loader import render_to_string
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from django.utils.text import capfirst

from studyapp.arm_settings import (MANIPULATION_SETTINGS, SettingsHelp, manipulation_settings_problems,
                                   method_settings_problems, settings_choice, settings_help)
from studyapp.json_input import BoundedJSONForm
from studyapp.models import Arm, Hypothesis
from studyapp.services.studies import EDITABLE_STATES

ARMS_PREFIX = "arms"  # the arm inline's formset prefix (Arm.study's related name)


class FrozenAfterDraftMixin:
    """Inlines are editable only while the study is a draft: launch freezes the plan."""

    def _editable(self, obj) -> bool:
        return obj is None or obj.state in EDITABLE_STATES

    def has_add_permission(self, request, obj=None) -> bool:
        return self._editable(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request, obj=None) -> bool:
        return self._editable(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return self._editable(obj) and super().has_delete_permission(request, obj)


# --- arms: settings boxes with the valid settings of the row's choice ----------------------------

@cache
def settings_panels() -> dict[tuple[str, str], SettingsHelp]:
    panels = settings_help(method_titles=dict(Arm.Method.choices), manipulation_titles=dict(Arm.Manipulation.choices))
    return {(p.which, p.choice): p for p in panels}


def render_panel(panel: SettingsHelp | None) -> str:
    return render_to_string("admin/studyapp/_arm_settings_help.html", {"panel": panel}) if panel else ""


class ArmSettingsWidget(forms.Textarea):
    """A JSON settings box with, under it, the valid settings, defaults and meaning for the row's
    method (``which="method"``) or manipulation; the page script swaps the panel when the row's
    choice changes."""

    def __init__(self, *, which: str, attrs=None) -> None:
        super().__init__(attrs={"rows": 2, "cols": 28, **(attrs or {})})
        self.which = which
        self.choice = settings_choice(which=which, kind="control", method="", manipulation="none")

    def render(self, name, value, attrs=None, renderer=None):
        box = super().render(name, value, attrs, renderer)
        panel = render_panel(settings_panels().get((self.which, self.choice)))
        return format_html('{}<div class="arm-settings-help" data-settings="{}" data-choice="{}">{}</div>', box,
                           self.which, self.choice, mark_safe(panel))


class ArmForm(BoundedJSONForm, forms.ModelForm):
    class Meta:
        model = Arm
        fields = "__all__"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        chosen = {name: (self[name].value() or "") if name in self.fields else ""
                  for name in ("kind", "method", "manipulation")}
        for which in ("method", "manipulation"):
            box = self.fields.get(f"{which}_config")
            if box is not None and isinstance(box.widget, ArmSettingsWidget):
                box.widget.choice = settings_choice(which=which, **chosen)

    def clean(self):
        data = super().clean()
        # Unknown keys are refused here, next to the box, with the valid ones; the values of an
        # attribution method's settings depend on the dataset and are checked on save and at Prepare.
        if "method_config" in data:
            for problem in method_settings_problems(kind=data.get("kind") or "", method=data.get("method") or "",
                                                    settings=data["method_config"] or {}):
                self.add_error("method_config", capfirst(problem))
        if "manipulation_config" in data and data.get("manipulation") in MANIPULATION_SETTINGS:
            for problem in manipulation_settings_problems(data["manipulation"], data["manipulation_config"] or {}):
                self.add_error("manipulation_config", capfirst(problem))
        return data


class ArmFormSet(BaseInlineFormSet):
    def add_fields(self, form, index) -> None:
        super().add_fields(form, index)
        if "DELETE" in form.fields:  # a table cell without a <label>, like the other columns
            form.fields["DELETE"].widget.attrs["aria-label"] = "Delete this arm"


class ArmInline(FrozenAfterDraftMixin, admin.TabularInline):
    model = Arm
    form = ArmForm
    formset = ArmFormSet
    extra = 0
    template = "admin/studyapp/arm_inline.html"
    fields = ["position", "name", "kind", "method", "method_config", "manipulation", "manipulation_config",
              "allocation_weight"]

    class Media:
        js = ["staff/study_form.js"]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name in ("method_config", "manipulation_config"):
            kwargs["widget"] = ArmSettingsWidget(which=db_field.name.removesuffix("_config"))
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if field is None:
            return field
        # A row of a table has no <label>: each input is named after its column for screen readers.
        field.widget.attrs["aria-label"] = capfirst(db_field.verbose_name)
        # Narrow numbers, so that the inline fits a 1280 px screen (the other columns: arm_inline.html).
        if db_field.name in ("position", "allocation_weight"):
            field.widget.attrs.update(style="width: 3.5em")
        return field

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        # A new arm comes after the existing ones (not at position 0 beside the control arm).
        next_position = (max((a.position for a in obj.arms.all()), default=-1) + 1) if obj is not None else 0
        if "position" in formset.form.base_fields:  # absent when the study is no longer editable
            formset.form.base_fields["position"].initial = next_position
        return formset

    def settings_panels(self) -> list[SettingsHelp]:
        """Every help panel, for the page script to show when a row's choice changes."""
        return list(settings_panels().values())


# --- hypotheses: arms named by name ----------------------------------------------------------------

@dataclass(frozen=True)
class ArmNames:
    """The arms a hypothesis may name: the arm rows on the page, in order (rows marked for deletion
    left out), and for a saved arm renamed in the same POST its old name -> its new name."""

    names: tuple[str, ...]
    renamed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def saved(cls, study) -> ArmNames:
        if study is None or study.pk is None:
            return cls(())
        return cls(tuple(study.arms.order_by("position", "id").values_list("name", flat=True)))

    @classmethod
    def submitted(cls, data, study) -> ArmNames:
        try:
            total = int(data.get(f"{ARMS_PREFIX}-TOTAL_FORMS") or 0)
        except ValueError:
            total = 0  # the arm formset reports the broken management form
        deleted = forms.CheckboxInput().value_from_datadict
        rows = []
        for i in range(min(total, 1000)):
            name = (data.get(f"{ARMS_PREFIX}-{i}-name") or "").strip()
            if name and not deleted(data, {}, f"{ARMS_PREFIX}-{i}-DELETE"):
                rows.append((data.get(f"{ARMS_PREFIX}-{i}-id") or "", name))
        names = tuple(dict.fromkeys(name for _, name in rows))
        ids = [pk for pk, _ in rows if pk.isdigit()]
        saved = dict(study.arms.filter(pk__in=ids).values_list("pk", "name")) if ids and study.pk else {}
        renamed = {saved[int(pk)]: name for pk, name in rows
                   if pk.isdigit() and int(pk) in saved and saved[int(pk)] != name and saved[int(pk)] not in names}
        return cls(names, renamed)

    def resolve(self, name: str) -> str | None:
        """The arm row ``name`` refers to, by its name after this save; None when none does."""
        return name if name in self.names else self.renamed.get(name)


class ArmChoice(forms.Select):
    """An arm by name; the page script fills in the arm rows on the page."""

    def __init__(self) -> None:
        super().__init__(attrs={"data-arm-choice": ""})


class HypothesisForm(BoundedJSONForm, forms.ModelForm):
    arm_name = forms.CharField(label="Arm", max_length=80, widget=ArmChoice(),
                               help_text="The arm the claim is about: any arm on this page, saved or not.")
    comparator_name = forms.CharField(label="Comparator", max_length=80, required=False, widget=ArmChoice(),
                                      help_text=Hypothesis._meta.get_field("comparator").help_text)

    class Meta:
        model = Hypothesis
        exclude = ["arm", "comparator"]

    def __init__(self, *args, arm_names: ArmNames, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.arm_names = arm_names
        if self.instance.pk is not None:
            self.initial.setdefault("arm_name", self.instance.arm.name)
            self.initial.setdefault("comparator_name", self.instance.comparator.name if self.instance.comparator else "")
        choices = [("", "---------"), *((name, name) for name in arm_names.names)]
        for name in ("arm_name", "comparator_name"):
            self.fields[name].widget.choices = choices

    def _arm(self, field_name: str) -> str:
        name = (self.cleaned_data.get(field_name) or "").strip()
        if not name:
            return ""
        resolved = self.arm_names.resolve(name)
        if resolved is None:
            label = self.cleaned_data.get("label") or "This hypothesis"
            arms = ", ".join(self.arm_names.names) or "none yet"
            raise ValidationError(f"{label} names arm '{name}', which is not among this study's arms: {arms}.")
        return resolved

    def clean_arm_name(self) -> str:
        return self._arm("arm_name")

    def clean_comparator_name(self) -> str:
        return self._arm("comparator_name")

    def clean(self):
        data = super().clean()
        if data.get("arm_name") and data.get("arm_name") == data.get("comparator_name"):
            self.add_error("comparator_name", "The arm cannot be compared with itself: choose another comparator arm.")
        return data

    def save(self, commit: bool = True):
        # The arm inline was saved first: every arm named here now exists, under its new name.
        arms = {arm.name: arm for arm in Arm.objects.filter(study=self.instance.study)}
        self.instance.arm = arms[self.cleaned_data["arm_name"]]
        self.instance.comparator = arms.get(self.cleaned_data.get("comparator_name") or "")
        return super().save(commit)


class HypothesisFormSet(BaseInlineFormSet):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The arm rows of this POST; the saved arms when the page had no arm rows to edit.
        submitted = self.is_bound and f"{ARMS_PREFIX}-TOTAL_FORMS" in self.data
        self.arm_names = ArmNames.submitted(self.data, self.instance) if submitted else ArmNames.saved(self.instance)

    def get_form_kwargs(self, index):
        return {**super().get_form_kwargs(index), "arm_names": self.arm_names}


class HypothesisInline(FrozenAfterDraftMixin, admin.StackedInline):
    model = Hypothesis
    form = HypothesisForm
    formset = HypothesisFormSet
    extra = 0
    fk_name = "study"
    fields = [("label", "comparison", "arm_name", "comparator_name"), "statement", ("outcome", "likert_item"),
              ("direction", "equivalence_margin"), ("test", "alpha", "family", "correction"),
              ("planned_n_per_arm", "stopping_rule"), "exclusion_rules"]

    # Shown instead of the choices when the study is no longer a draft (the inline is read-only).
    @admin.display(description="arm")
    def arm_name(self, obj) -> str:
        return obj.arm.name if obj and obj.arm_id else "—"

    @admin.display(description="comparator")
    def comparator_name(self, obj) -> str:
        return obj.comparator.name if obj and obj.comparator_id else "the control arm"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("arm", "comparator")
