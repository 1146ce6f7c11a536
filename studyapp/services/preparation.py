"""Preparation of a study: everything computed before participants arrive, as stored units of work.

``preparation_plan`` stores the first units when Prepare is pressed (the model's outputs per chunk,
then the item sample); each unit, when done, adds the units it makes possible:

    outputs/<k>  ->  sample  ->  [edits/<k>  ->  items]  ->  maps/<arm>/<k>  ->  render/<arm>/<k>
                                                         ->  arm/<arm>  (arms computed in one go)
                                                         ->  sanity/<method>
    render/<real arm>/* and the placebo's pictures  ->  realism/<placebo arm>

Any number of workers run them (``preparation_unit_run``, the Celery task ``run_preparation_unit``);
studyapp.services.work_units holds the claim/lease/completion contract. In the embedded mode
(no broker) ``study_run_preparation`` runs the same units in this process in dependency order,
with the same records. The study becomes ready in the transaction that completes its last unit.

Maps are computed per chunk of the sampled stimuli and stored without their picture; rendering
waits for all of the arm's maps, because every arm is drawn on a scale shared by all of its own
images, chosen by the same rule for every arm (studyapp.services.explanations). Arms whose maps need the whole
sample at once (inverted, matched random and other-input placebos take the real maps; the
label-randomized model is trained once; exemplars and OOD scores fit on the training set) are one
unit each.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db.models import Count, Max

from studyapp.design import design_parse
from studyapp.models import Arm, Explanation, ModelOutput, PreparationUnit, Stimulus, Study, StudyItem
from studyapp.models.base import OpaqueUploadPath
from studyapp.selectors import edit_settings, edit_settings_key
from studyapp.services import work_units
from studyapp.services.datasets import array_to_npy_bytes, stimulus_array
from studyapp.services.datasets.common import npy_array
from studyapp.services.errors import ServiceError
from studyapp.services.explanations import (PreparationContext, arm_compute_explanations, explainer_device,
                                            placebo_real_arm, randomized_model)
from studyapp.services.item_sample import items_sample_begin, items_sample_finish, sampled_stimuli
from studyapp.services.mlmodels import mlmodel_load
from studyapp.services.studies import study_mark_ready

logger = logging.getLogger(__name__)
Unit = PreparationUnit
OUTPUT_CHUNK = 512
EDIT_CHUNK = 16  # candidate stimuli per unit of counterfactual edits (16 edits each on a 4x4 grid)
# Sanity checks use paired per-stimulus tests: a few dozen stimuli are enough and keep it quick.
SANITY_STIMULI = 48
MIN_SANITY_STIMULI = 6


# ---------------------------------------------------------------- planning

def _unit(study: Study, key: str, kind: str, step: str, *, arm: Arm | None = None, params: dict | None = None,
          after: list[str] | tuple = ()) -> Unit:
    return Unit(study=study, key=key, kind=kind, step=step, arm=arm, params=params or {}, depends_on=list(after),
                max_attempts=settings.PREPARATION_MAX_ATTEMPTS)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def preparation_plan(*, study: Study) -> list[Unit]:
    """Replace the study's units by the first ones of a new preparation (inside Prepare's
    transaction). Results already stored (outputs, edits, maps, pictures) are found and kept by
    the units, so a preparation after a cancelled or failed one resumes from them."""
    Unit.objects.filter(study=study).delete()
    indexes = list(Stimulus.objects.filter(dataset=study.dataset).order_by("index").values_list("index", flat=True))
    outputs = [_unit(study, f"outputs/{k}", "outputs", "Model outputs", params={"from": c[0], "to": c[-1]})
               for k, c in enumerate(_chunks(indexes, OUTPUT_CHUNK))]
    units = outputs + [_unit(study, "sample", "sample", "Item sample", after=[u.key for u in outputs])]
    Unit.objects.bulk_create(units)
    Study.objects.filter(pk=study.pk).update(preparation={"status": "running"})
    return units


def chunked(arm: Arm, arms: list[Arm]) -> bool:
    """Arms whose maps are computed per chunk of stimuli (each stimulus on its own)."""
    if arm.kind == Arm.Kind.BASELINE:
        return arm.method == "sobel_edges"
    if arm.kind != Arm.Kind.EXPLANATION:
        return False
    if arm.manipulation == Arm.Manipulation.NONE:
        return True
    # The randomized model explains each stimulus on its own.
    return arm.manipulation == Arm.Manipulation.RANDOMIZED_MODEL


def _arm_units(study: Study, *, after: str) -> list[Unit]:
    """The units of every arm and the sanity checks, once the item sample is stored."""
    arms = list(study.arms.exclude(kind=Arm.Kind.CONTROL).order_by("position", "id"))
    ids = list(StudyItem.objects.filter(study=study).order_by("stimulus__index")
               .values_list("stimulus_id", flat=True).distinct())
    chunks = _chunks(ids, settings.PREPARATION_CHUNK)
    maps_keys = {a.pk: [f"maps/{a.pk}/{k}" for k in range(len(chunks))] for a in arms if chunked(a, arms)}
    units = []
    for arm in arms:
        step = f"Arm '{arm.name}'"
        if arm.pk in maps_keys:
            units += [_unit(study, key, "maps", step, arm=arm, params={"stimuli": chunk}, after=[after])
                      for key, chunk in zip(maps_keys[arm.pk], chunks)]
            units += [_unit(study, f"render/{arm.pk}/{k}", "render", f"Pictures of '{arm.name}'", arm=arm,
                            params={"stimuli": chunk}, after=maps_keys[arm.pk])
                      for k, chunk in enumerate(chunks)]
        else:
            real = placebo_real_arm(arm, arms)
            units.append(_unit(study, f"arm/{arm.pk}", "arm", step, arm=arm,
                               after=[after, *maps_keys.get(real.pk if real else None, [])]))
    if len(ids) >= MIN_SANITY_STIMULI:
        methods = sorted({a.method for a in arms if a.kind == Arm.Kind.EXPLANATION})
        units += [_unit(study, f"sanity/{m}", "sanity", "Sanity checks", params={"method": m}, after=[after])
                  for m in methods]
        drawn = {u.arm_id: u.key for u in units if u.kind == "arm"}
        pictures = {a.pk: [u.key for u in units if u.kind == "render" and u.arm_id == a.pk] or [drawn[a.pk]]
                    for a in arms if a.pk in maps_keys or a.pk in drawn}
        for arm in arms:
            real = placebo_real_arm(arm, arms)
            if real is not None and real.pk != arm.pk and arm.pk in pictures and real.pk in pictures:
                units.append(_unit(study, f"realism/{arm.pk}", "realism", "Placebo realism checks", arm=arm,
                                   params={"real_arm": real.pk}, after=pictures[arm.pk] + pictures[real.pk]))
    return units


# ---------------------------------------------------------------- per-process context

_CONTEXT: dict = {}


def _context(study: Study) -> PreparationContext:
    """The loaded model and training data, kept while this process works on the study."""
    key = (study.pk, study.model_id, study.model.weights_sha256, study.dataset_id)
    if _CONTEXT.get("key") != key:
        _CONTEXT.clear()
        _CONTEXT.update(key=key, ctx=PreparationContext.build(study=study, model=mlmodel_load(mlmodel=study.model),
                                                              stimuli=[]))
    return _CONTEXT["ctx"]


def _stimuli(ids: list[int]) -> list[Stimulus]:
    return list(Stimulus.objects.filter(pk__in=ids).order_by("index").only("data", "label", "index"))


def halving_on_out_of_memory(compute: Callable[[list], list], items: list) -> list:
    """``compute(items)``; on a device out-of-memory error, the two halves one after the other."""
    try:
        return compute(items)
    except RuntimeError as exc:
        if "out of memory" not in str(exc).lower() or len(items) < 2:
            raise
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.warning("Out of memory on %s items; halving the chunk", len(items))
        half = len(items) // 2
        return halving_on_out_of_memory(compute, items[:half]) + halving_on_out_of_memory(compute, items[half:])


# ---------------------------------------------------------------- the units' work

@dataclass
class Work:
    """What a unit computed, written by ``write`` inside its completion transaction."""

    write: Callable[[], dict | None]
    expand: Callable[[], list[Unit]] | None = None


def _outputs(unit: Unit) -> Work:
    from explainers.methods import predict

    study = unit.study
    done = ModelOutput.objects.filter(model=study.model, stimulus__dataset=study.dataset).values("stimulus_id")
    todo = list(Stimulus.objects.filter(dataset=study.dataset, index__gte=unit.params["from"],
                                        index__lte=unit.params["to"]).exclude(pk__in=done).order_by("index")
                .only("data"))
    rows = []
    if todo:
        model = _context(study).model

        def compute(chunk):
            predicted, probabilities = predict(model, np.stack([stimulus_array(s) for s in chunk]),
                                               device=explainer_device())
            return [ModelOutput(model=study.model, stimulus_id=s.pk, predicted=int(p),
                                probabilities=[round(float(x), 6) for x in probs])
                    for s, p, probs in zip(chunk, predicted, probabilities)]
        rows = halving_on_out_of_memory(compute, todo)

    def write():
        ModelOutput.objects.bulk_create(rows, ignore_conflicts=True)
        return {"created": len(rows)}
    return Work(write)


def _sample(unit: Unit) -> Work:
    study = unit.study
    design = design_parse(study.config)
    draft = items_sample_begin(study=study, design=design)
    candidates = [c[0] for c in draft.get("candidates", [])]
    if not candidates:
        def write():
            record = items_sample_finish(study=study, design=design, draft=draft)
            return {"pool_size": record.get("pool_size")}
        return Work(write, lambda: _arm_units(study, after="sample"))
    edits = [_unit(study, f"edits/{k}", "edits", "Counterfactual edits", params={"stimuli": chunk}, after=["sample"])
             for k, chunk in enumerate(_chunks(candidates, EDIT_CHUNK))]
    items = _unit(study, "items", "items", "Item sample", after=[u.key for u in edits])
    return Work(lambda: {"draft": draft}, lambda: [*edits, items])


def _edits(unit: Unit) -> Work:
    """Edits and the model's outputs on them. Written as they are made (unique keys: a second
    attempt adds only what is missing), before the unit's completion."""
    from studyapp.services.edits import edit_outputs_compute, edits_create

    ctx = _context(unit.study).with_stimuli(_stimuli(unit.params["stimuli"]))
    created = edits_create(ctx=ctx, save_files=lambda pngs: files_write(unit, pngs, folder="edits"))
    outputs = edit_outputs_compute(ctx=ctx, device=explainer_device())
    return Work(lambda: {"created": created, "outputs_created": outputs})


def _items(unit: Unit) -> Work:
    study = unit.study
    draft = Unit.objects.get(study=study, key="sample").result["draft"]

    def write():
        items_sample_finish(study=study, design=design_parse(study.config), draft=draft)
        return {}
    return Work(write, lambda: _arm_units(study, after="items"))


def _maps(unit: Unit) -> Work:
    """Maps of one arm on one chunk, stored without their pictures (rendering needs the scale)."""
    from explainers import manipulations

    arm, study = unit.arm, unit.study
    have = set(Explanation.objects.filter(arm=arm, stimulus_id__in=unit.params["stimuli"])
               .values_list("stimulus_id", flat=True))
    todo = [s for s in _stimuli(unit.params["stimuli"]) if s.pk not in have]
    rows: list[Explanation] = []
    if todo:
        base = _context(study)

        def compute(chunk):
            ctx = base.with_stimuli(chunk)
            started = time.perf_counter()
            if arm.kind == Arm.Kind.BASELINE:
                maps, record = manipulations.sobel_edges(ctx.inputs)
                stored = {"method": "sobel_edges", **record}
            else:
                config = ctx.method_config_recorded(arm)
                if arm.manipulation == Arm.Manipulation.NONE:
                    result, record = ctx.real(arm.method, config), {}
                else:
                    model, record = randomized_model(ctx, arm)
                    result = ctx.explain(model, arm.method, config)
                maps, stored = result.attributions, {**result.config,
                                                     "manipulation": {"name": arm.manipulation, **record}}
            each = (time.perf_counter() - started) / len(chunk)
            return [Explanation(arm=arm, stimulus_id=s.pk, attributions=array_to_npy_bytes(maps[i]), config=stored,
                                config_sha256="", seed=study.seed, target=int(ctx.targets[i]), compute_seconds=each)
                    for i, s in enumerate(chunk)]
        rows = halving_on_out_of_memory(compute, todo)

    def write():
        Explanation.objects.bulk_create(rows, ignore_conflicts=True)
        return {"created": len(rows)}
    return Work(write)


_SCALES: dict = {}


def _scale(study: Study, arm: Arm, *, signed: bool) -> float:
    """The arm's rendering scale, shared by all of its pictures: from its maps over the whole sample."""
    from explainers import rendering

    rows = Explanation.objects.filter(arm=arm)
    key = (study.pk, arm.pk, signed, *rows.aggregate(n=Count("pk"), last=Max("pk")).values())
    if key not in _SCALES:
        blobs = rows.order_by("stimulus__index").values_list("attributions", flat=True)
        maps = np.stack([npy_array(b) for b in blobs])
        ctx = _context(study)
        _SCALES.clear()
        _SCALES[key] = rendering.attribution_scale(ctx.shown(maps, signed=signed))
    return _SCALES[key]


def _render(unit: Unit) -> Work:
    """The pictures of one arm's chunk on the arm's shared scale, and the final configuration."""
    from explainers import rendering
    from explainers.methods import config_sha256
    from studyapp.services.explanations import is_signed, render_map

    arm, study = unit.arm, unit.study
    rows = list(Explanation.objects.filter(arm=arm, stimulus_id__in=unit.params["stimuli"], image="")
                .order_by("stimulus__index").select_related("stimulus"))
    updates = []
    if rows:
        signed = arm.kind == Arm.Kind.EXPLANATION and is_signed(rows[0].config)
        scale = _scale(study, arm, signed=signed)
        ctx = _context(study).with_stimuli([r.stimulus for r in rows])
        shown = ctx.shown(np.stack([npy_array(r.attributions) for r in rows]), signed=signed)
        pngs = [render_map(ctx, i, shown[i], signed=signed, scale=scale) for i in range(len(rows))]
        names = files_write(unit, pngs, folder="explanations")
        normalization = "shared_per_arm"
        for row, name in zip(rows, names):
            config = {**row.config, "rendering": {"normalization": normalization, "scale": scale, "signed": signed,
                                                  "clip_percentile": rendering.CLIP_PERCENTILE}}
            updates.append((row.pk, name, config, config_sha256(config)))

    def write():
        written = 0
        for pk, name, config, digest in updates:
            # Only a row still without its picture: a twin attempt may have drawn it already.
            written += Explanation.objects.filter(pk=pk, image="").update(image=name, config=config,
                                                                          config_sha256=digest)
        return {"rendered": written}
    return Work(write)


def _arm(unit: Unit) -> Work:
    """An arm computed over the whole sample at once (placebos of the real maps, models trained
    for the purpose, aids fitted on the training set)."""
    study, arm = unit.study, unit.arm
    ctx = _context(study).with_stimuli(sampled_stimuli(study=study))
    real = placebo_real_arm(arm, list(study.arms.all()))
    if real is not None and arm.kind == Arm.Kind.EXPLANATION and real.pk != arm.pk:
        stored = {r.stimulus_id: r for r in Explanation.objects.filter(arm=real)}
        if len(stored) == len(ctx.stimuli):
            # The placebo derives from the real arm's stored maps, not a second computation of them.
            ctx.prime_real(arm, np.stack([npy_array(stored[s.pk].attributions) for s in ctx.stimuli]),
                           config=next(iter(stored.values())).config)
    created = arm_compute_explanations(arm=arm, ctx=ctx, save_files=lambda pngs: files_write(unit, pngs,
                                                                                            folder="explanations"))
    return Work(lambda: {"created": created})


def displayed_maps(rows: list[Explanation], ctx: PreparationContext) -> np.ndarray:
    """The maps as participants see them: channels reduced as drawn, divided by the arm's shared
    scale and clipped (explainers.rendering)."""
    from explainers.rendering import CLIP_PERCENTILE, normalized  # what the pictures draw
    from studyapp.services.explanations import is_signed

    rendering = rows[0].config.get("rendering") or {}
    signed = rendering.get("signed", is_signed(rows[0].config))
    shown = ctx.shown(np.stack([npy_array(r.attributions) for r in rows]), signed=signed)
    return normalized(shown, normalization="shared", scale=float(rendering.get("scale", 0.0)),
                      clip_percentile=CLIP_PERCENTILE)


def _realism(unit: Unit) -> Work:
    """Could participants tell this placebo from its real arm's maps by how they look? A fixed
    low-level-feature classifier's cross-validated AUC with a permutation null
    (explainers.realism), on the pictures' values as drawn, paired by stimulus."""
    from explainers.realism import placebo_realism

    study = unit.study
    placebo = {r.stimulus_id: r for r in Explanation.objects.filter(arm=unit.arm).select_related("stimulus")}
    real = {r.stimulus_id: r for r in Explanation.objects.filter(arm_id=unit.params["real_arm"])}
    ids = sorted(set(placebo) & set(real), key=lambda pk: placebo[pk].stimulus.index)
    ctx = _context(study).with_stimuli([placebo[pk].stimulus for pk in ids])
    report = placebo_realism(displayed_maps([real[pk] for pk in ids], ctx),
                             displayed_maps([placebo[pk] for pk in ids], ctx),
                             inputs=ctx.inputs, seed=study.seed)
    return Work(lambda: {"report": {**report.to_dict(), "real_arm": Arm.objects.get(pk=unit.params["real_arm"]).name}})


def _sanity(unit: Unit) -> Work:
    from explainers.sanity import sanity_check

    study, method = unit.study, unit.params["method"]
    ctx = _context(study).with_stimuli(sampled_stimuli(study=study)[:SANITY_STIMULI])
    arm = study.arms.filter(kind=Arm.Kind.EXPLANATION, method=method).order_by("manipulation", "position").first()
    report = sanity_check(ctx.model, ctx.inputs, method=method, config=ctx.method_config(arm), targets=ctx.targets,
                          seed=study.seed)
    return Work(lambda: {"report": report.to_dict()})


WORK = {"outputs": _outputs, "sample": _sample, "edits": _edits, "items": _items, "maps": _maps, "render": _render,
        "arm": _arm, "sanity": _sanity, "realism": _realism}


# ---------------------------------------------------------------- files without orphans

def files_write(unit: Unit, pngs: list[bytes], *, folder: str) -> list[str]:
    """Store pictures under opaque names recorded on the unit first, so that a later attempt of a
    unit whose worker was killed between writing them and committing their rows deletes them."""
    upload = OpaqueUploadPath(folder)
    names = [upload(None, "x.png") for _ in pngs]
    unit.files_pending = list(unit.files_pending or []) + names
    Unit.objects.filter(pk=unit.pk).update(files_pending=unit.files_pending)
    return [default_storage.save(name, ContentFile(png)) for name, png in zip(names, pngs)]


def files_unreferenced_delete(names: list[str]) -> int:
    """Delete the stored files among ``names`` that no explanation or edit refers to."""
    from studyapp.models import Edit

    referenced = set(Explanation.objects.filter(image__in=names).values_list("image", flat=True)) | set(
        Edit.objects.filter(image__in=names).values_list("image", flat=True))
    orphans = [n for n in names if n not in referenced]
    for name in orphans:
        default_storage.delete(name)
    return len(orphans)


# ---------------------------------------------------------------- running units

def _finish(study: Study) -> None:
    """The last unit is done: the summary on the study, and the study ready (same transaction)."""
    units = list(Unit.objects.filter(study=study).select_related("arm"))

    def total(kind: str, field: str = "created") -> int:
        return sum(int(u.result.get(field, 0)) for u in units if u.kind == kind)
    explanations: dict[str, int] = {}
    for u in units:
        if u.kind in ("maps", "arm"):
            explanations[u.arm.name] = explanations.get(u.arm.name, 0) + int(u.result.get("created", 0))
    study.refresh_from_db(fields=["item_sample"])
    summary = {
        "status": "done", "model_outputs_created": total("outputs"), "explanations_created": explanations,
        "edits": {"created": total("edits"), "outputs_created": total("edits", "outputs_created"),
                  "settings": edit_settings(study=study), "settings_sha256": edit_settings_key(study=study)},
        "item_sample": {k: study.item_sample.get(k) for k in ("pool_size", "counts")},
        "sanity": {u.params["method"]: u.result["report"] for u in units if u.kind == "sanity"},
        "realism": {u.arm.name: u.result["report"] for u in units if u.kind == "realism"},
        "seconds": round(sum(u.seconds or 0 for u in units), 3),
    }
    Study.objects.filter(pk=study.pk).update(preparation=summary)
    study_mark_ready(study=study)


def _mark_failed(unit: Unit, error: str) -> None:
    Study.objects.filter(pk=unit.study_id, state=Study.State.PREPARING).update(preparation={
        "status": "failed", "error": f"{unit.step}: {error}"})


def _words(exc: Exception) -> str:
    if hasattr(exc, "messages"):  # ServiceError: already a message for the researcher
        return " ".join(exc.messages)
    return f"{exc.__class__.__name__}: {exc}"


def preparation_unit_run(*, unit_id: int, worker: str | None = None) -> str:
    """Claim the unit, do its work under a renewed lease, complete it (see work_units' contract).
    Returns what happened: "done", "retry", "failed", "lost" or "not claimed"."""
    worker = worker or work_units.worker_name()
    unit = work_units.unit_claim(unit_id=unit_id, worker=worker)
    if unit is None:
        return "not claimed"
    if unit.files_pending:  # an earlier attempt was interrupted after writing pictures
        files_unreferenced_delete(unit.files_pending)
        Unit.objects.filter(pk=unit.pk).update(files_pending=[])
        unit.files_pending = []
    started = time.perf_counter()
    try:
        with work_units.Heartbeat(unit, worker):
            work = WORK[unit.kind](unit)
            done = work_units.unit_complete(unit=unit, worker=worker, seconds=time.perf_counter() - started,
                                            write=work.write, expand=work.expand, finish=_finish)
        outcome = "done" if done else "lost"
    except ServiceError as exc:  # the study's settings, not chance: another attempt cannot help
        Unit.objects.filter(pk=unit.pk).update(max_attempts=unit.attempts)
        work_units.unit_fail(unit=unit, worker=worker, error=_words(exc))
        _mark_failed(unit, _words(exc))
        outcome = "failed"
    except Exception as exc:
        logger.exception("Preparation unit %s (%s) failed", unit.pk, unit.key)
        wait = work_units.unit_fail(unit=unit, worker=worker, error=_words(exc))
        if wait is None:
            _mark_failed(unit, _words(exc))
            outcome = "failed"
        else:
            work_units.units_send([unit.pk], countdown=wait.total_seconds())
            outcome = "retry"
    if unit.files_pending:
        # Pictures of this attempt that no row took (a twin attempt's rows won, or the attempt
        # failed before writing them): deleted now rather than left to cleanup_media.
        files_unreferenced_delete(unit.files_pending)
    work_units.study_units_send(study_id=unit.study_id)  # what this unit made possible, at once
    return outcome


def study_run_preparation(*, study_id: int, wait_for_backoff: bool = True) -> dict:
    """Run the study's units in this process, in dependency order, until none can run (the
    embedded mode, and tests). A study in preparation with no units left to do is planned again
    (a re-run writes nothing twice: each unit keeps what exists)."""
    study = Study.objects.get(pk=study_id)
    if study.state != Study.State.PREPARING:
        return {"skipped": study.state}
    if not Unit.objects.filter(study=study).exclude(status=Unit.Status.DONE).exists():
        preparation_plan(study=study)
    outcomes: dict[str, int] = {}
    while True:
        ready = work_units.ready_unit_ids(study_id=study_id)
        if not ready:
            waiting = Unit.objects.filter(study_id=study_id, status=Unit.Status.PENDING, not_before__isnull=False)
            soonest = waiting.order_by("not_before").values_list("not_before", flat=True).first()
            if soonest is None or not wait_for_backoff:
                break
            from django.utils import timezone

            time.sleep(max(0.0, (soonest - timezone.now()).total_seconds()) + 0.05)
            continue
        for unit_id in ready:
            outcome = preparation_unit_run(unit_id=unit_id)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    study.refresh_from_db()
    return {"state": study.state, "units": outcomes, **study.preparation}


def units_go_on_commit(*, study_id: int) -> None:
    """After the transaction commits, send the study's units that can run (or, in the embedded
    mode, run them all here)."""
    from django.db import transaction

    if work_units.in_process():
        transaction.on_commit(lambda: study_run_preparation(study_id=study_id))
    else:
        transaction.on_commit(lambda: work_units.study_units_send(study_id=study_id))


def preparation_retry_failed(*, study: Study) -> int:
    """Failed units get their attempts back and become pending (how many)."""
    retried = Unit.objects.filter(study=study, status=Unit.Status.FAILED).update(
        status=Unit.Status.PENDING, attempts=0, max_attempts=settings.PREPARATION_MAX_ATTEMPTS, not_before=None,
        enqueued_at=None, finished_at=None, worker="")
    if retried:
        Study.objects.filter(pk=study.pk).update(preparation={"status": "running"})
    return retried
