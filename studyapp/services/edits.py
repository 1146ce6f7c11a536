"""Counterfactual edits of the study's stimuli and the model's output on each.

Edits belong to a stimulus and the settings that made them (the same occluded cell of the same
grid is the same edit whichever model or study looks at it; another grid is another set of
edits); outputs belong to a (model, edit) pair. Both are unique in the database, so preparation
creates only what is missing: edits for stimuli that have none under the study's settings,
outputs for edits this model has not seen.
Whether an edit changes the prediction is derived (edit output vs stimulus output), not stored.
"""
from __future__ import annotations

import numpy as np
from django.core.files.base import ContentFile
from django.db import transaction

from explainers import rendering
from explainers.edits import feature_quantile_edits, grid_occlusion_edits
from explainers.methods import predict
from studyapp.models import Edit, ModelOutput
from studyapp.selectors import edit_settings, edit_settings_key, study_edits
from studyapp.services.datasets import array_to_npy_bytes, stimulus_array

KIND = {"occlusion": Edit.Kind.OCCLUDE_CELL, "feature_quantile": Edit.Kind.FEATURE_QUANTILE}


def _edit_batch(ctx, indices: list[int], options: dict):
    inputs = ctx.inputs[indices]
    if ctx.modality == "image":
        return grid_occlusion_edits(inputs, grid=tuple(options["grid"]), fill=options["fill"])
    return feature_quantile_edits(inputs, X_reference=ctx.X_train, quantiles=tuple(options["quantiles"]),
                                  feature_names=ctx.study.dataset.feature_names)


def edits_create(*, ctx, save_files=None) -> int:
    """Candidate edits for every pool stimulus that has none yet under the study's settings (with a
    display PNG for images). ``save_files(pngs) -> names`` stores the pictures (preparation records
    the names on its unit first: studyapp.services.preparation.files_write); by default each row
    saves its own."""
    key = edit_settings_key(study=ctx.study)
    have = set(study_edits(study=ctx.study, stimuli=ctx.stimuli).values_list("stimulus_id", flat=True).distinct())
    missing = [i for i, s in enumerate(ctx.stimuli) if s.pk not in have]
    if not missing:
        return 0
    batch = _edit_batch(ctx, missing, edit_settings(study=ctx.study))
    rows, pngs = [], []
    for row, i in enumerate(missing):
        for j in range(int(batch.counts[row])):
            params = {**batch.params[row][j], "config": batch.config}
            edit = Edit(stimulus_id=ctx.stimuli[i].pk, settings_sha256=key, position=j,
                        kind=KIND[batch.kind], params=params, data=array_to_npy_bytes(batch.edited[row, j]))
            if ctx.modality == "image":
                png = rendering.render_edit(ctx.inputs[i], box=tuple(params["box"]), occlude=True,
                                            fill_value=float(np.clip(params["fill_value"], 0.0, 1.0)))
                if save_files is None:
                    edit.image.save("edit.png", ContentFile(png), save=False)
                else:
                    pngs.append((edit, png))
            rows.append(edit)
    if pngs:
        for (edit, _), name in zip(pngs, save_files([png for _, png in pngs])):
            edit.image.name = name
    with transaction.atomic():
        Edit.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
    return len(rows)


def edit_outputs_compute(*, ctx, device: str | None = None) -> int:
    """The model's output on every edit of the study that it has not been run on yet."""
    edits = list(study_edits(study=ctx.study, stimuli=ctx.stimuli)
                 .exclude(outputs__model=ctx.study.model).only("data"))
    if not edits:
        return 0
    predicted, probabilities = predict(ctx.model, np.stack([stimulus_array(e) for e in edits]), device=device)
    rows = [ModelOutput(model=ctx.study.model, edit_id=e.pk, predicted=int(p),
                        probabilities=[round(float(x), 6) for x in probs])
            for e, p, probs in zip(edits, predicted, probabilities)]
    ModelOutput.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
    return len(rows)
