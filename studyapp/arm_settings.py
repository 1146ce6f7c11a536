"""The settings an arm accepts, as validation schemas (pydantic) and key lists: unknown keys and
wrong values are refused before Prepare, with the valid keys, instead of being frozen silently;
``settings_help`` lists every choice's valid keys, defaults and meaning for the admin form.

What each setting does is in ``studyapp/services/explanations.py`` (``_manipulated_maps``) and
``explainers/manipulations.py``; the method settings have their own schema in
``explainers/methods/config.py``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from studyapp.design import validation_problems


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RandomizedModel(_Settings):
    mode: Literal["cascading", "independent"] = Field(
        "cascading", description="cascading: re-initialize the layers from the output down to down_to; "
                                 "independent: only the one layer named in layer.")
    down_to: str | None = Field(None, description="cascading: the last layer to re-initialize (all when empty).")
    layer: str | None = Field(None, description="independent: the layer to re-initialize.")

    @model_validator(mode="after")
    def _layer_for_independent(self) -> RandomizedModel:
        if self.mode == "independent" and not self.layer:
            raise ValueError("mode 'independent' needs the layer to re-initialize (setting 'layer')")
        if self.mode == "cascading" and self.layer:
            raise ValueError("'layer' is for mode 'independent'; cascading uses 'down_to'")
        return self


class OtherInput(_Settings):
    same_class: bool = Field(True, description="Take the map of another input the model gives the same answer.")


class NoSettings(_Settings):
    pass


MANIPULATION_SETTINGS: dict[str, type[_Settings]] = {
    "none": NoSettings, "randomized_model": RandomizedModel, "label_randomized_model": NoSettings,
    "inverted": NoSettings, "random_matched": NoSettings, "other_input": OtherInput,
}


def manipulation_settings_problems(manipulation: str, settings) -> list[str]:
    """Why ``settings`` are not valid for ``manipulation`` (empty when they are)."""
    schema = MANIPULATION_SETTINGS.get(manipulation)
    if schema is None:
        return [f"unknown manipulation '{manipulation}'"]
    if not isinstance(settings, dict):
        return [f"the manipulation settings must be a JSON object of settings, not {type(settings).__name__}"]
    try:
        schema.model_validate(settings)
    except ValidationError as exc:
        return validation_problems(exc, schema, "manipulation settings")
    return []


# --- baseline and warning arms -------------------------------------------------------------
# Their settings are read by studyapp/services/explanations.py (``_baseline_arm``, ``_ood_arm``);
# the defaults here are the ones it uses (EXEMPLARS_K, OOD_QUANTILE; a test keeps them equal).

class Exemplars(_Settings):
    k: int = Field(3, ge=1, le=12, description="How many training items of the class the model predicts are shown "
                                               "(the nearest ones to the input).")


class OodWarning(_Settings):
    ood_method: Literal["mahalanobis", "energy"] = Field(
        "mahalanobis", description="mahalanobis: distance of the model's penultimate features to the training "
                                   "classes; energy: the model's logits only (misses far-out tabular rows).")
    quantile: float = Field(0.95, gt=0, lt=1, description="The warning threshold: this share of held-out training "
                                                          "items is not flagged (0.95: about 5% false alarms).")


BASELINE_SETTINGS: dict[str, type[_Settings]] = {"sobel_edges": NoSettings, "exemplars": Exemplars}

# The meaning of each attribution-method setting (the keys, checks and defaults are those of
# explainers/methods/config.py; a test keeps every key there explained here).
METHOD_SETTING_MEANINGS: dict[str, str] = {
    "n_steps": "Steps of the path integral from the baseline to the input; more is more exact and slower.",
    "integration": "How the path integral is approximated: gausslegendre, riemann_left, riemann_right, "
                   "riemann_middle or riemann_trapezoid.",
    "multiply_by_inputs": "Multiply by (input - baseline), the method's usual global attribution.",
    "baseline": "The reference input: zeros, training_mean (values filled in at preparation for tables) or custom "
                "(give baseline_values).",
    "baseline_values": "For baseline custom or training_mean: one value per feature or channel, or an array shaped "
                       "like one input.",
    "return_convergence_delta": "Record how far the attributions are from summing to the output difference.",
    "signed": "true: keep the sign (for and against the answer); false: magnitude only.",
    "base": "The method smoothed: saliency or integrated_gradients (then also its settings: n_steps, "
            "integration, baseline).",
    "nt_type": "smoothgrad (mean of maps), smoothgrad_sq (mean of squares) or vargrad (variance).",
    "nt_samples": "Noisy copies of the input averaged.",
    "noise_fraction": "Noise standard deviation as a fraction of the input range.",
    "draw_baseline_from_distrib": "Fixed at false (the baseline is never drawn at random).",
    "input_range": "Images: [low, high] of pixel values, which scales the noise.",
    "feature_ranges": "Tables: max - min of each feature in the training data (filled in at preparation).",
    "noise_stdev": "Derived (noise_fraction x input range): not set by hand.",
    "layer": "The layer whose activations are used, e.g. features.conv2; empty: the architecture's last "
             "convolution.",
    "relu_attributions": "Keep only positive evidence (Grad-CAM's ReLU).",
    "attribute_to_layer_input": "Use the layer's input instead of its output.",
    "interpolation": "Upsampling to the input size: bilinear, bicubic or nearest.",
    "align_corners": "Corner alignment of the upsampling.",
    "channels": "Fixed at repeat: the same map on every colour channel.",
    "relu_rule": "Fixed at guided (negative gradients stopped at every ReLU).",
    "rule": "Fixed at rescale (DeepLIFT's rescale rule).",
    "eps": "Small number that keeps the rescale rule from dividing by zero.",
    "window": "Images: [rows, cols] of the occluding patch, in pixels.",
    "stride": "Images: [rows, cols] the patch moves between positions.",
    "occlude_all_channels": "Fixed at true: the patch covers every colour channel.",
    "feature_mask": "What counts as one feature: grid cells (images) or each feature (tables); fixed.",
    "grid_cells": "Images: the grid [rows, cols] of cells that are switched on and off together.",
    "n_samples": "Perturbed inputs evaluated; more is more stable and slower.",
    "perturbation": "Fixed: how features are switched off in the samples.",
    "kernel": "Fixed at exponential: the similarity weight of a sample.",
    "kernel_formula": "Fixed: the weight formula.",
    "kernel_space": "Fixed at interpretable: similarity on the on/off vector, as the original LIME.",
    "kernel_distance": "cosine or euclidean distance in the kernel.",
    "kernel_width": "Width of the similarity kernel; smaller trusts only samples close to the input.",
    "interpretable_model": "The surrogate fitted to the samples: ridge, lasso or linear_regression.",
    "interpretable_model_alpha": "Regularization of ridge or lasso.",
    "fit_intercept": "Fit an intercept in the surrogate.",
}
# Keys a configuration stored by preparation also carries; accepted (and checked) when present.
RECORD_KEYS = ("method", "modality", "execution")


def method_settings_problems(*, kind: str, method: str, settings) -> list[str]:
    """Unknown settings (and, for baseline and warning arms, wrong values) of an arm's method, in
    words with the valid ones. The values of an attribution method's settings depend on the
    dataset's modality and are checked with it when the study is saved and at Prepare."""
    if not isinstance(settings, dict):
        return [f"the method settings must be a JSON object of settings, not {type(settings).__name__}"]
    if kind == "control":
        return ["a control arm shows nothing, so it has no method settings: leave them empty ({})."] if settings else []
    schema = OodWarning if kind == "ood_warning" else BASELINE_SETTINGS.get(method) if kind == "baseline" else None
    if schema is not None:
        try:
            schema.model_validate(settings)
        except ValidationError as exc:
            return validation_problems(exc, schema, "method settings")
        return []
    valid = method_setting_keys(method)
    if kind != "explanation" or valid is None:
        return []  # no method chosen yet, or one this kind does not use: the arm's checks say so
    unknown = sorted(set(settings) - set(valid) - set(RECORD_KEYS))
    if unknown:
        return [f"method settings: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                f"(valid settings for {method}: {', '.join(valid) or 'none'})."]
    return []


def method_setting_keys(method: str) -> list[str] | None:
    """Every key the attribution method takes on some modality, in the order the defaults list
    them (None: not an attribution method)."""
    defaults = method_defaults(method)
    return None if defaults is None else list(defaults)


def method_defaults(method: str) -> dict[str, dict[str, object]] | None:
    """key -> {modality: default} for an attribution method (None: not one). SmoothGrad lists
    the settings of its integrated-gradients base too."""
    # Imported here: explainers.methods loads PyTorch, which the web process should not pay for at start-up.
    from explainers.methods import METHODS, resolve_config

    info = METHODS.get(method)
    if info is None:
        return None
    overrides = [{}] + ([{"base": "integrated_gradients", "signed": True}] if method == "smoothgrad" else [])
    defaults: dict[str, dict[str, object]] = {}
    for extra in overrides:
        for modality in info.modalities:
            config = resolve_config(method, extra, modality=modality, allow_incomplete=True)
            for key, value in config.items():
                if key not in RECORD_KEYS and key not in extra:
                    defaults.setdefault(key, {}).setdefault(modality, value)
    return defaults


# --- what the admin shows under each settings box --------------------------------------------

@dataclass(frozen=True)
class SettingHelp:
    key: str
    default: str  # as JSON, per modality where it differs
    meaning: str


@dataclass(frozen=True)
class SettingsHelp:
    """The valid settings of one choice (a method, or a manipulation), for the admin's help panels."""

    which: str  # "method" or "manipulation"
    choice: str  # what the row chose (see settings_choice)
    title: str
    note: str
    settings: tuple[SettingHelp, ...] = ()


def settings_choice(*, which: str, kind: str, method: str, manipulation: str) -> str:
    """The help panel an arm row shows (static/staff/arm_form.js computes the same)."""
    if which == "manipulation":
        return manipulation or "none"
    if kind in ("control", "ood_warning"):
        return kind
    return method or "unset"


def _json(value) -> str:
    return json.dumps(value)


def _schema_help(which: str, choice: str, title: str, schema: type[_Settings], note: str = "") -> SettingsHelp:
    settings = tuple(SettingHelp(key, _json(field.default), field.description or "")
                     for key, field in schema.model_fields.items())
    return SettingsHelp(which, choice, title, note or ("" if settings else "No settings: leave the box empty ({})."),
                        settings)


def _method_help(method: str, title: str) -> SettingsHelp:
    from explainers.methods import METHODS

    names = {"image": "images", "tabular": "tables"}
    settings = []
    for key, per_modality in (method_defaults(method) or {}).items():
        values = {names[m]: _json(v) for m, v in per_modality.items()}
        if len(set(values.values())) == 1:
            default = next(iter(values.values()))
            if len(values) < len(METHODS[method].modalities):
                default += f" ({next(iter(values))} only)"
        else:
            default = "; ".join(f"{m}: {v}" for m, v in values.items())
        settings.append(SettingHelp(key, default, METHOD_SETTING_MEANINGS.get(key, "")))
    note = METHODS[method].description + " Leave a setting out to keep its default; every value is stored at " \
                                         "preparation."
    if not settings:
        note = METHODS[method].description + " No settings: leave the box empty ({})."
    return SettingsHelp("method", method, title, note, tuple(settings))


def settings_help(*, method_titles: dict[str, str], manipulation_titles: dict[str, str]) -> list[SettingsHelp]:
    """Every help panel: one per method choice (and for control, warning and no method yet), one
    per manipulation. The titles are the choices' labels (the model's, passed in)."""
    from explainers.methods import METHODS

    panels = [SettingsHelp("method", "control", "Control arm", "A control arm shows nothing: no method settings."),
              _schema_help("method", "ood_warning", "Out-of-distribution warning", OodWarning,
                           "Warns when an input is unlike the training data instead of explaining it."),
              SettingsHelp("method", "unset", "No method chosen", "Choose the method: its settings are listed here.")]
    for method, title in method_titles.items():
        if method in METHODS:
            panels.append(_method_help(method, title))
        elif method in BASELINE_SETTINGS:
            panels.append(_schema_help("method", method, title, BASELINE_SETTINGS[method]))
        elif method:
            panels.append(SettingsHelp("method", method, title,
                                       "Not an attribution method or baseline aid that is computed here: for a random "
                                       "map use an explanation arm with the 'random map matched to the real one' "
                                       "manipulation."))
    panels += [_schema_help("manipulation", m, title, MANIPULATION_SETTINGS[m])
               for m, title in manipulation_titles.items() if m in MANIPULATION_SETTINGS]
    return panels
