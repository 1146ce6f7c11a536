"""Preparation of a study: everything computed before participants arrive.

Runs in a Celery task. Each step writes rows guarded by unique constraints
(``ignore_conflicts``), so a redelivered or re-run task only fills in what is missing.
"""
from __future__ import annotations

import logging
import traceback

import numpy as np
from django.db import transaction

from studyapp.models import ModelOutput, Stimulus, Study
from studyapp.services.datasets import stimulus_array
from studyapp.services.explanations import arm_compute_explanations, arms_needing_explanations
from studyapp.services.mlmodels import mlmodel_load
from studyapp.services.studies import study_back_to_draft, study_mark_ready

logger = logging.getLogger(__name__)
CHUNK = 512


def model_outputs_compute(*, study: Study) -> int:
    """The model's prediction on every stimulus of the study's dataset (missing ones only)."""
    from explainers.methods import predict

    model = mlmodel_load(mlmodel=study.model)
    done = set(ModelOutput.objects.filter(model=study.model, stimulus__dataset=study.dataset)
               .values_list("stimulus_id", flat=True))
    todo = list(Stimulus.objects.filter(dataset=study.dataset).exclude(pk__in=done).order_by("index").only("data"))
    created = 0
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start:start + CHUNK]
        inputs = np.stack([stimulus_array(s) for s in chunk])
        predicted, probabilities = predict(model, inputs, device="cpu")
        rows = [ModelOutput(model=study.model, stimulus_id=s.pk, predicted=int(p),
                            probabilities=[round(float(x), 6) for x in probs])
                for s, p, probs in zip(chunk, predicted, probabilities)]
        ModelOutput.objects.bulk_create(rows, ignore_conflicts=True)
        created += len(rows)
    return created


def _training_inputs(*, study: Study) -> np.ndarray:
    rows = Stimulus.objects.filter(dataset=study.dataset, split=Stimulus.Split.TRAIN).order_by("index")
    return np.stack([stimulus_array(s) for s in rows.only("data")])


def _progress(study: Study, **fields) -> None:
    study.preparation = {**study.preparation, **fields}
    Study.objects.filter(pk=study.pk).update(preparation=study.preparation)


def study_run_preparation(*, study_id: int) -> dict:
    study = Study.objects.select_related("model", "dataset").get(pk=study_id)
    if study.state != Study.State.PREPARING:
        # Redelivered after completion, or cancelled: nothing to do (idempotent).
        return {"skipped": study.state}
    try:
        _progress(study, status="running", step="model outputs")
        outputs = model_outputs_compute(study=study)
        arms = arms_needing_explanations(study=study)
        explanations = {}
        if arms:
            model = mlmodel_load(mlmodel=study.model)
            X_train = _training_inputs(study=study)
            for arm in arms:
                _progress(study, step=f"explanations for arm '{arm.name}'")
                explanations[arm.name] = arm_compute_explanations(arm=arm, model=model, X_train=X_train)
    except Exception as exc:
        logger.exception("Preparation of study %s failed", study.pk)
        with transaction.atomic():
            Study.objects.filter(pk=study.pk).update(preparation={
                "status": "failed", "error": f"{exc.__class__.__name__}: {exc}",
                "traceback": traceback.format_exc(limit=5)})
            study_back_to_draft(study=study)
        raise
    summary = {"status": "done", "model_outputs_created": outputs, "explanations_created": explanations}
    Study.objects.filter(pk=study.pk).update(preparation=summary)
    study_mark_ready(study=study)
    return summary
