"""Reads for the participant session: the live design, the current trial and what it shows.

Leakage hazard: what these functions return for a trial that is not yet answered goes to the
participant. They never include ``expected_answer``, the stimulus' label, database ids, arm
names, or the model's output on what the trial asks about; images are addressed by the trial's
opaque id and a slot name, never by their file name.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.db.models import Count, Q

from studyapp.design import StudyDesign, design_parse, trial_asks_confidence
from studyapp.services.datasets.common import npy_array, stimulus_array
from studyapp.models import Arm, Edit, Explanation, ModelOutput, Participant, Response, Stimulus, Study, Trial


# Reads of a launched study that never change (its frozen plan cannot): kept per process by
# (study, plan hash), so they are read and validated once instead of once per request.
_FROZEN_CACHE: dict[tuple[str, int, str], object] = {}
_FROZEN_CACHE_MAX = 512


def _frozen_cached(kind: str, study: Study, build):
    """``build()`` once per (kind, study, plan hash) for a launched study; every time before launch."""
    if not study.frozen_sha256:
        return build()
    key = (kind, study.pk, study.frozen_sha256)
    value = _FROZEN_CACHE.get(key)
    if value is None:
        value = build()
        if len(_FROZEN_CACHE) >= _FROZEN_CACHE_MAX:
            _FROZEN_CACHE.clear()
        _FROZEN_CACHE[key] = value
    return value


_MISSING = object()


def _frozen_memo(kind: str, study: Study, key, build):
    """``build()`` once per ``key`` among a launched study's reads that never change (a model output,
    an aid, a stimulus' features, an edit): one query per item and process instead of one per request.
    Bounded by the study's item sample. Every time before launch (previews of a draft)."""
    if not study.frozen_sha256:
        return build()
    memo = _frozen_cached(kind, study, dict)
    value = memo.get(key, _MISSING)
    if value is _MISSING:
        value = memo[key] = build()
    return value


def study_design(*, study: Study) -> StudyDesign:
    """The design that runs: the frozen one once the study is launched."""
    if not study.frozen_sha256:
        return design_parse(study.config)
    return _frozen_cached("design", study, lambda: design_parse(
        Study.objects.filter(pk=study.pk).values_list("frozen_config", flat=True).get()["study"]["config"]))


# The columns every participant request reads (the rest load on first use, one query each: the
# consent, instructions and debrief texts on their own steps, the JSON columns almost never).
# Compiling and decoding fewer columns is most of what a lean read saves (benchmarks/participants.py).
PARTICIPANT_REQUEST_COLUMNS = (
    "id", "study_id", "arm_id", "public_id", "external_id", "source", "status", "step", "simulated", "preview",
    "plan_seed", "instructions_shown_at", "completion_code", "n_trials", "started_at", "consented_at",
    "completed_at", "last_seen_at", "comprehension_attempts", "instructions_ms",
    "study__id", "study__public_id", "study__state", "study__frozen_sha256", "study__ingest_paused",
    "study__target_per_arm", "study__title", "study__completion_code", "study__screened_out_code",
    "study__failed_checks_code")


def participant_for_request(*, public_id: str, study_public_id) -> Participant | None:
    """The participant a browser's session names, if it belongs to the study in the URL."""
    return (Participant.objects.select_related("study").only(*PARTICIPANT_REQUEST_COLUMNS)
            .filter(public_id=public_id, study__public_id=study_public_id).first())


def participant_current_trial(*, participant: Participant) -> Trial | None:
    """The first trial without a response, in plan order (None when all are answered). The trial
    row alone: what it shows of its stimulus and edit comes from ``trial_content``'s memo."""
    return Trial.objects.filter(participant=participant, response__isnull=True).order_by("position").first()


def participant_progress(*, participant: Participant) -> dict:
    counts = Trial.objects.filter(participant=participant).aggregate(
        total=Count("pk"), answered=Count("pk", filter=Q(response__isnull=False)))
    return {"answered": counts["answered"], "total": counts["total"]}


def participant_failed_checks(*, participant: Participant) -> int:
    return Response.objects.filter(trial__participant=participant, trial__task=Trial.Task.ATTENTION_CHECK,
                                   correct=False).count()


def trial_aid(*, participant: Participant, trial: Trial) -> Explanation | None:
    """The arm's precomputed aid for the trial's (original) stimulus, when the trial shows one."""
    if not trial.show_explanation:
        return None
    return Explanation.objects.filter(arm_id=participant.arm_id, stimulus_id=trial.stimulus_id).first()


def _edit_params(study: Study, edit_id: int) -> dict:
    return _frozen_memo("edit", study, edit_id, lambda: Edit.objects.filter(pk=edit_id)
                        .values_list("params", flat=True).get() or {})


# ---------------------------------------------------------------- what the participant sees

QUESTIONS = {
    "forward": "What will the model answer for this example?",
    "counterfactual_predict": "The example was changed as shown. What will the model answer for the changed example?",
    "counterfactual_choose": "Which of these changes makes the model give a different answer?",
    "learning": "This is the model's answer for this example. Look at it, then continue.",
}
ATTENTION = "To show that you are reading carefully, choose \u201c{label}\u201d for this item."
TOP_FEATURES = 10


@dataclass(frozen=True)
class StudyRuntime:
    """What every trial of a study needs and what never changes once it is launched: read once
    per process (per plan hash) instead of joining model, dataset and arm on every request."""

    public_id: str
    model_id: int
    class_names: tuple[str, ...]
    modality: str
    feature_names: tuple[str, ...]
    feature_descriptions: dict
    arms: dict[int, tuple[str, str]]  # arm id -> (kind, method)


def study_runtime(*, study: Study) -> StudyRuntime:
    return _frozen_cached("runtime", study, lambda: _runtime_read(study))


def _runtime_read(study: Study) -> StudyRuntime:
    row = Study.objects.filter(pk=study.pk).values(
        "public_id", "model_id", "model__class_names", "dataset__modality", "dataset__feature_names",
        "dataset__feature_descriptions").get()
    return StudyRuntime(
        public_id=str(row["public_id"]), model_id=row["model_id"], class_names=tuple(row["model__class_names"]),
        modality=row["dataset__modality"], feature_names=tuple(row["dataset__feature_names"] or ()),
        feature_descriptions=row["dataset__feature_descriptions"] or {},
        arms={pk: (kind, method) for pk, kind, method in
              Arm.objects.filter(study_id=study.pk).values_list("pk", "kind", "method")})


def _media_url(runtime: StudyRuntime, trial: Trial, slot: str) -> str:
    # Opaque: the study's public id, the trial's random per-participant id and a slot name.
    return f"/api/participate/{runtime.public_id}/media/{trial.public_id}/{slot}"


def _features(runtime: StudyRuntime, values) -> list[dict]:
    described = runtime.feature_descriptions
    return [{"name": name, "value": round(float(v), 6), "unit": described.get(name, {}).get("unit", ""),
             "description": described.get(name, {}).get("description", "")}
            for name, v in zip(runtime.feature_names, values)]


def _aid(runtime: StudyRuntime, participant: Participant, trial: Trial) -> dict | None:
    if not trial.show_explanation:
        return None
    kind, method = runtime.arms[participant.arm_id]
    if kind == "baseline" and method == "exemplars" or (kind != "ood_warning" and runtime.modality == "image"):
        # Rendered images: the URL alone (the file is checked when it is fetched).
        image_kind = "exemplars" if method == "exemplars" else "map"
        aid = {"kind": image_kind, "image": _media_url(runtime, trial, "aid")}
        if image_kind == "exemplars":
            aid["text"] = "Examples from the model's training data that resemble this one."
        return aid
    return _frozen_memo("aid", participant.study, (participant.arm_id, trial.stimulus_id),
                        lambda: _aid_values(runtime, kind, trial_aid(participant=participant, trial=trial)))


def _aid_values(runtime: StudyRuntime, kind: str, explanation: Explanation | None) -> dict | None:
    if explanation is None:
        return None
    values = npy_array(explanation.attributions)
    if kind == "ood_warning":
        flagged = bool(values[2] > 0.5)
        return {"kind": "ood_warning", "flagged": flagged,
                "text": "Warning: this example is unlike the examples the model learned from; its answer may be "
                        "unreliable." if flagged else "This example looks like the examples the model learned from."}
    order = np.argsort(-np.abs(values), kind="stable")[:TOP_FEATURES]
    return {"kind": "bars", "features": [{"name": runtime.feature_names[i], "attribution": round(float(values[i]), 6)}
                                         for i in order]}


def _edit(runtime: StudyRuntime, trial: Trial, params: dict, slot: str) -> dict:
    if runtime.modality == "image":
        return {"image": _media_url(runtime, trial, slot), "box": params.get("box")}
    return {"feature": params.get("feature_name"), "from_value": round(float(params.get("from_value", 0)), 6),
            "to_value": round(float(params.get("to_value", 0)), 6)}


def trial_content(*, participant: Participant, trial: Trial, design: StudyDesign, total: int) -> dict:
    """What a trial shows, before it is answered. Leakage: see the module docstring."""
    study = participant.study
    runtime = study_runtime(study=study)
    classes = runtime.class_names
    task = trial.task
    out = {"trial": str(trial.public_id), "number": trial.position + 1, "total": total, "phase": trial.phase,
           "block": trial.block, "task": "forward" if task == "attention_check" else task, "model_output": None,
           "aid": None, "edit": None,
           "confidence": trial_asks_confidence(design, task=task, show_model_output=trial.show_model_output)}
    if runtime.modality == "image":
        out["input"] = {"image": _media_url(runtime, trial, "input")}
    else:
        out["input"] = {"features": _frozen_memo("features", study, trial.stimulus_id, lambda: _features(
            runtime, stimulus_array(Stimulus.objects.only("data").get(pk=trial.stimulus_id))))}
    if trial.show_model_output:
        # Forward learning trials: the output on the item; counterfactual trials: on the original.
        predicted = _frozen_memo("output", study, trial.stimulus_id, lambda: ModelOutput.objects.filter(
            model_id=runtime.model_id, stimulus_id=trial.stimulus_id).values_list("predicted", flat=True).get())
        out["model_output"] = {"value": predicted, "label": classes[predicted]}
    if task == "counterfactual_choose":
        out["options"] = [{"value": i, **_edit(runtime, trial, _edit_params(study, pk), f"option-{i}")}
                          for i, pk in enumerate(trial.options)]
    else:
        out["options"] = [{"value": i, "label": name} for i, name in enumerate(classes)]
    if task == "counterfactual_predict":
        out["edit"] = _edit(runtime, trial, _edit_params(study, trial.edit_id), "edit")
    out["aid"] = _aid(runtime, participant, trial)
    if task == "attention_check":
        out["question"] = ATTENTION.format(label=classes[trial.expected_answer])
    elif task == "forward" and trial.show_model_output:
        out["question"] = QUESTIONS["learning"]
    else:
        out["question"] = QUESTIONS[task]
    return out


def trial_media_file(*, participant: Participant, trial_public_id, slot: str):
    """The file behind a media URL of the participant's own trial, or None (-> 404)."""
    trial = (Trial.objects.filter(participant=participant, public_id=trial_public_id)
             .select_related("stimulus", "edit").defer("stimulus__data", "edit__data").first())
    if trial is None:
        return None
    if slot == "input":
        return trial.stimulus.image or None
    if slot == "aid":
        explanation = trial_aid(participant=participant, trial=trial)
        return explanation.image if explanation is not None and explanation.image else None
    if slot == "edit" and trial.edit_id:
        return trial.edit.image or None
    if slot.startswith("option-") and slot[7:].isdigit():
        i = int(slot[7:])
        if i < len(trial.options):
            edit = Edit.objects.defer("data").filter(pk=trial.options[i]).first()
            return edit.image if edit is not None and edit.image else None
    return None


# ---------------------------------------------------------------- the live monitor (staff)

def _excluded_so_far(study: Study) -> tuple[int | None, dt.datetime]:
    """(participants the pre-registered rules exclude so far, None when they cannot be evaluated;
    when that was counted). Counted at most once per ``MONITOR_EXCLUSIONS_SECONDS`` per study in
    the shared cache (keyed by the study's public id, unique across databases), since every open
    monitor polls every 5 s and the count reads every answer."""
    from django.core.cache import cache
    from django.utils import timezone

    from studyapp.exports.rows import exclusion_flags

    key = f"monitor-excluded:{study.public_id}"
    seconds = settings.MONITOR_EXCLUSIONS_SECONDS
    cached = cache.get(key) if seconds else None
    if cached is not None:
        return cached["excluded"], dt.datetime.fromisoformat(cached["at"])
    flags = exclusion_flags(study=study)  # None when the rules cannot be evaluated (shown as such)
    excluded = None if flags is None else sum(1 for _, flag in flags.values() if flag)
    now = timezone.now()
    if seconds:
        cache.set(key, {"excluded": excluded, "at": now.isoformat()}, timeout=seconds)
    return excluded, now


def study_monitor(*, study: Study, recent: int = 10) -> dict:
    """What the live monitor shows: real participants per arm and status, completion, exclusions
    so far, the median duration, recent activity and the pause switches (simulated participants
    are counted apart). A few aggregate queries, whatever the number of participants."""
    import statistics

    from django.utils import timezone

    real = Participant.objects.filter(study=study, simulated=False)
    by_arm_status = {(arm, status): n for arm, status, n in
                     real.values_list("arm_id", "status").annotate(n=Count("pk")).values_list("arm_id", "status", "n")}
    statuses = [s for s, _ in Participant.Status.choices]
    arms = []
    for arm in Arm.objects.filter(study=study).order_by("position", "id"):
        counts = {s: by_arm_status.get((arm.pk, s), 0) for s in statuses}
        arms.append({"pk": arm.pk, "name": arm.name, "kind": arm.kind, "paused": arm.ingest_paused,
                     "counts": counts, "completed": counts["completed"], "target": study.target_per_arm,
                     "active": counts["consented"] + counts["in_progress"]})
    totals = {s: sum(a["counts"][s] for a in arms) for s in statuses}
    durations = [(done - start).total_seconds() / 60 for start, done in
                 real.filter(status="completed").values_list("started_at", "completed_at") if start and done]
    now = timezone.now()
    latest = [{"id": str(p.public_id)[:8], "arm": p.arm.name if p.arm_id else "", "step": p.step,
               "status": p.status, "seconds_ago": int((now - p.last_seen_at).total_seconds()) if p.last_seen_at else None}
              for p in real.select_related("arm").only("public_id", "arm__name", "step", "status", "last_seen_at")
              .order_by("-last_seen_at")[:recent]]
    excluded, excluded_at = _excluded_so_far(study)
    return {"arms": arms, "totals": totals, "enrolled": sum(totals.values()), "excluded": excluded,
            "excluded_at": excluded_at, "excluded_every": settings.MONITOR_EXCLUSIONS_SECONDS,
            "median_minutes": round(statistics.median(durations), 1) if durations else None,
            "simulated": Participant.objects.filter(study=study, simulated=True, preview=False).count(),
            "recent": latest, "paused": study.ingest_paused, "updated": now}
