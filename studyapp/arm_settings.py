"""The settings a manipulated arm accepts, as validation schemas (pydantic): unknown keys and
wrong values are refused before Prepare, with the valid keys, instead of being frozen silently.

What each setting does is in ``studyapp/services/explanations.py`` (``_manipulated_maps``) and
``explainers/manipulations.py``; the method settings have their own schema in
``explainers/methods/config.py``.
"""
from __future__ import annotations

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
