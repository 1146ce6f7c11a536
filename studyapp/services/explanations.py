"""Precomputing an arm's explanations: raw float attributions plus a rendered PNG per stimulus.

Idempotent: one Explanation row per (arm, stimulus) is a database constraint, rows that exist are
skipped, and the maps are deterministic (seeded), so a redelivered task writes only what is
missing and writes the same thing. Rendering uses one shared scale per arm (the 99th percentile of
|map| over all the arm's maps, recorded in every row's config), never a per-image stretch, which
would itself manipulate what participants see.
"""
from __future__ import annotations

import time

import numpy as np
from django.core.files.base import ContentFile
from django.db import transaction

from explainers import rendering
from explainers.methods import data_reference_overrides, explain, resolve_config
from explainers.methods import config_sha256 as method_config_sha256
from studyapp.models import Arm, Explanation, ModelOutput, Stimulus, Study
from studyapp.services.datasets import array_to_npy_bytes, stimulus_array

WRITE_CHUNK = 128
# Manipulations whose maps the pipeline can produce today; others are refused at preparation.
SUPPORTED_MANIPULATIONS = (Arm.Manipulation.NONE,)


def study_stimulus_pool(*, study: Study):
    """The stimuli trials draw from: the dataset's test split (never the model's training items)."""
    return Stimulus.objects.filter(dataset=study.dataset, split=Stimulus.Split.TEST).order_by("index")


def arms_needing_explanations(*, study: Study) -> list[Arm]:
    return list(study.arms.filter(kind=Arm.Kind.EXPLANATION).order_by("position", "id"))


def arm_resolve_config(*, arm: Arm, X_train: np.ndarray) -> dict:
    """The arm's full method configuration: researcher overrides on top of explicit defaults.

    Tabular baselines default to the training mean (zeros in raw units would be an arbitrary,
    often impossible patient); images keep the all-black zeros baseline unless overridden.
    """
    modality = arm.study.dataset.modality
    overrides = dict(arm.method_config or {})
    if modality == "tabular":
        overrides = {**data_reference_overrides(arm.method, X_train, modality=modality), **overrides}
    return resolve_config(arm.method, overrides, modality=modality)


def is_signed(config: dict) -> bool:
    """Signed maps get the diverging colormap; magnitude maps (|gradient|, Grad-CAM) sequential."""
    return not (config["method"] == "gradcam" or config.get("signed") is False)


def _render(*, modality: str, inputs: np.ndarray, maps: np.ndarray, signed: bool, scale: float,
            dataset) -> list[bytes]:
    """PNG per stimulus; ``maps`` are 2-D (H, W) for images, 1-D (features) for tabular rows."""
    if modality == "image":
        return [rendering.render_heatmap_overlay(x, m, signed=signed, normalization="shared", scale=scale)
                for x, m in zip(inputs, maps)]
    units = [dataset.feature_descriptions.get(n, {}).get("unit") for n in dataset.feature_names]
    return [rendering.render_tabular_bars(a, feature_names=dataset.feature_names, feature_units=units,
                                          feature_values=x.tolist(), top_k=min(10, len(a)))
            for x, a in zip(inputs, maps)]


def arm_compute_explanations(*, arm: Arm, model, X_train: np.ndarray) -> int:
    """Compute and store every missing explanation of ``arm`` over the study's stimulus pool."""
    study = arm.study
    if arm.manipulation not in SUPPORTED_MANIPULATIONS:
        raise ValueError(f"Arm '{arm.name}': the manipulation '{arm.manipulation}' cannot be computed yet.")
    config = arm_resolve_config(arm=arm, X_train=X_train)
    if arm.method_config != config:
        # Store every parameter on the arm itself, so launch freezes the complete configuration.
        Arm.objects.filter(pk=arm.pk).update(method_config=config)
    stimuli = list(study_stimulus_pool(study=study).only("pk", "data"))
    if not stimuli:
        return 0
    predicted = dict(ModelOutput.objects.filter(model=study.model, stimulus__in=stimuli)
                     .values_list("stimulus_id", "predicted"))
    inputs = np.stack([stimulus_array(s) for s in stimuli])
    targets = [predicted[s.pk] for s in stimuli]
    started = time.perf_counter()
    # All maps at once (deterministic): the shared rendering scale needs them all anyway.
    result = explain(model, inputs, method=arm.method, config=config, targets=targets, seed=study.seed)
    seconds_each = (time.perf_counter() - started) / len(stimuli)
    signed = is_signed(config)
    # Images: channels summed for signed maps (keeps IG completeness), averaged for magnitude maps
    # (Grad-CAM repeats one map on every channel).
    shown = result.attributions if study.dataset.modality == "tabular" else np.stack(
        [rendering.reduce_channels(a, how="sum" if signed else "mean") for a in result.attributions])
    scale = rendering.attribution_scale(shown)
    stored = {**result.config, "rendering": {"normalization": "shared", "scale": scale, "signed": signed,
                                             "clip_percentile": rendering.CLIP_PERCENTILE}}
    digest = method_config_sha256(stored)
    done = set(Explanation.objects.filter(arm=arm, stimulus__in=stimuli).values_list("stimulus_id", flat=True))
    todo = [i for i, s in enumerate(stimuli) if s.pk not in done]
    written = 0
    for start in range(0, len(todo), WRITE_CHUNK):
        idx = todo[start:start + WRITE_CHUNK]
        pngs = _render(modality=study.dataset.modality, inputs=inputs[idx], maps=shown[idx],
                       signed=signed, scale=scale, dataset=study.dataset)
        rows = []
        for i, png in zip(idx, pngs):
            row = Explanation(arm=arm, stimulus_id=stimuli[i].pk, attributions=array_to_npy_bytes(result.attributions[i]),
                              config=stored, config_sha256=digest, seed=study.seed, target=int(result.targets[i]),
                              compute_seconds=seconds_each)
            row.image.save("explanation.png", ContentFile(png), save=False)
            rows.append(row)
        with transaction.atomic():
            Explanation.objects.bulk_create(rows, ignore_conflicts=True)
        written += len(rows)
    return written

