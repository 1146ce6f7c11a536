"""Preparation of a study: everything computed before participants arrive.

Runs in a Celery task. Each step writes rows guarded by unique constraints
(``ignore_conflicts``), so a redelivered or re-run task only fills in what is missing.
"""
from __future__ import annotations

import logging
import traceback

import numpy as np
from django.db import transaction

from explainers.sanity import sanity_check
from studyapp.models import Arm, ModelOutput, Stimulus, Study
from studyapp.design import design_parse
from studyapp.selectors import edit_settings, edit_settings_key
from studyapp.services.datasets import stimulus_array
from studyapp.services.edits import edit_outputs_compute, edits_create
from studyapp.services.item_sample import items_sample, sampled_stimuli
from studyapp.services.explanations import PreparationContext, arm_compute_explanations, explainer_device
from studyapp.services.mlmodels import mlmodel_load
from studyapp.services.studies import study_back_to_draft, study_mark_ready

logger = logging.getLogger(__name__)
CHUNK = 512
# Sanity checks use paired per-stimulus tests: a few dozen stimuli are enough and keep it quick.
SANITY_STIMULI = 48
MIN_SANITY_STIMULI = 6


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
        predicted, probabilities = predict(model, inputs, device=explainer_device())
        rows = [ModelOutput(model=study.model, stimulus_id=s.pk, predicted=int(p),
                            probabilities=[round(float(x), 6) for x in probs])
                for s, p, probs in zip(chunk, predicted, probabilities)]
        ModelOutput.objects.bulk_create(rows, ignore_conflicts=True)
        created += len(rows)
    return created


def _progress(study: Study, **fields) -> None:
    study.preparation = {**study.preparation, **fields}
    Study.objects.filter(pk=study.pk).update(preparation=study.preparation)


def sanity_checks_run(*, ctx: PreparationContext, arms: list[Arm]) -> dict:
    """Adebayo et al.'s randomization checks for each method shown in the study, on a sample of its
    stimuli, with verdicts calibrated against null references (explainers.sanity)."""
    results = {}
    sample = slice(0, SANITY_STIMULI)
    for arm in arms:
        if arm.kind != Arm.Kind.EXPLANATION or arm.method in results:
            continue
        report = sanity_check(ctx.model, ctx.inputs[sample], method=arm.method, config=ctx.method_config(arm),
                              targets=ctx.targets[sample], seed=ctx.study.seed)
        results[arm.method] = report.to_dict()
    return results


def study_run_preparation(*, study_id: int) -> dict:
    study = Study.objects.select_related("model", "dataset").get(pk=study_id)
    if study.state != Study.State.PREPARING:
        # Redelivered after completion, or cancelled: nothing to do (idempotent).
        return {"skipped": study.state}
    try:
        _progress(study, status="running", step="model outputs")
        design = design_parse(study.config)
        outputs = model_outputs_compute(study=study)
        arms = list(study.arms.exclude(kind=Arm.Kind.CONTROL).order_by("position", "id"))
        base = PreparationContext.build(study=study, model=mlmodel_load(mlmodel=study.model), stimuli=[])
        _progress(study, step="item sample")
        edits = {"created": 0, "outputs_created": 0}

        def compute_edits(stimulus_ids: list[int]) -> None:
            # Edits only for the counterfactual candidates, not the whole test split.
            candidates = base.with_stimuli(list(Stimulus.objects.filter(pk__in=stimulus_ids).order_by("index")))
            edits["created"] += edits_create(ctx=candidates)
            edits["outputs_created"] += edit_outputs_compute(ctx=candidates, device=explainer_device())

        sample = items_sample(study=study, design=design, compute_edits=compute_edits)
        ctx = base.with_stimuli(sampled_stimuli(study=study))
        explanations = {}
        for arm in arms:
            _progress(study, step=f"arm '{arm.name}'")
            explanations[arm.name] = arm_compute_explanations(arm=arm, ctx=ctx)
        edits.update(settings=edit_settings(study=study), settings_sha256=edit_settings_key(study=study))
        _progress(study, step="sanity checks")
        sanity = sanity_checks_run(ctx=ctx, arms=arms) if len(ctx.stimuli) >= MIN_SANITY_STIMULI else {}
    except Exception as exc:
        logger.exception("Preparation of study %s failed", study.pk)
        with transaction.atomic():
            Study.objects.filter(pk=study.pk).update(preparation={
                "status": "failed", "error": f"{exc.__class__.__name__}: {exc}",
                "traceback": traceback.format_exc(limit=5)})
            study_back_to_draft(study=study)
        raise
    summary = {"status": "done", "model_outputs_created": outputs, "explanations_created": explanations,
               "edits": edits, "item_sample": {k: sample[k] for k in ("pool_size", "counts")}}
    Study.objects.filter(pk=study.pk).update(preparation={**summary, "sanity": sanity})
    study_mark_ready(study=study)
    return {**summary, "sanity_verdicts": {method: report["verdict"] for method, report in sanity.items()}}
