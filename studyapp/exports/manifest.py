"""The provenance manifest: everything needed to say which model, data, explainer configuration,
stimuli, seeds, software and plan produced an export.

Hashes are copied from the database (weights_sha256, content_sha256, config_sha256, frozen_sha256)
and the frozen plan's hash is re-computed (``preregistration_verify``), so a tampered plan shows up
as ``preregistration.frozen_sha256_verified = false``.
"""
from __future__ import annotations

from collections import Counter, defaultdict

from django.db.models import Count
from django.utils import timezone

from studyapp.analysis.software import software_versions
from studyapp.exports.columns import EXPORTS, export_columns, iso_utc
from studyapp.exports.rows import likert_items
from studyapp.models import AnalysisRun, Arm, Explanation, ExternalStudyImport, MLModel, Study, Trial
from studyapp.selectors.plans import deviation_as_dict, study_deviations
from studyapp.services.preregistration import preregistration_drift, preregistration_sha256, preregistration_verify

MANIFEST_VERSION = 1
# Distribution names, as pip knows them.
SOFTWARE = ("django", "djangorestframework", "torch", "captum", "numpy", "scipy", "statsmodels", "pandas",
            "psycopg2", "psycopg2-binary", "celery")


def _model(model: MLModel) -> dict:
    return {"id": model.pk, "name": model.name, "architecture": model.architecture, "role": model.role,
            "format": model.format, "weights_sha256": model.weights_sha256,
            "derived_from": model.derived_from_id, "input_shape": model.input_shape,
            "class_names": model.class_names, "hyperparameters": model.hyperparameters,
            "training": model.training, "metrics": model.metrics}


def _arms(*, study: Study) -> list[dict]:
    explanations = Explanation.objects.filter(arm__study=study)
    configs: dict[int, list[dict]] = defaultdict(list)
    for arm_id, digest, n in (explanations.values("arm_id", "config_sha256").annotate(n=Count("id"))
                              .order_by("arm_id", "config_sha256").values_list("arm_id", "config_sha256", "n")):
        # One stored configuration per distinct hash (normally one per arm): what actually ran.
        config = (explanations.filter(arm_id=arm_id, config_sha256=digest).order_by("id")
                  .values_list("config", flat=True).first())
        configs[arm_id].append({"config_sha256": digest, "count": n, "config": config})
    seeds: dict[int, list[int]] = defaultdict(list)
    for arm_id, seed in explanations.values_list("arm_id", "seed").distinct().order_by("arm_id", "seed"):
        seeds[arm_id].append(seed)
    return [
        {"name": arm.name, "kind": arm.kind, "position": arm.position, "allocation_weight": arm.allocation_weight,
         "method": arm.method, "method_config": arm.method_config, "method_config_sha256": preregistration_sha256(arm.method_config),
         "manipulation": arm.manipulation, "manipulation_config": arm.manipulation_config,
         "explanations": {"count": sum(c["count"] for c in configs[arm.pk]), "configs": configs[arm.pk],
                          "seeds": seeds[arm.pk]}}
        for arm in Arm.objects.filter(study=study).order_by("position", "id")
    ]


def _stimuli(*, study: Study) -> dict:
    used = (Trial.objects.filter(participant__study=study, participant__preview=False)
            .values_list("stimulus__index", "stimulus__split").distinct().order_by("stimulus__index"))
    indices, splits = [], Counter()
    for index, split in used:
        indices.append(index)
        splits[split] += 1
    return {
        "seed": study.seed,
        "sampling": (study.config or {}).get("sampling"),
        "n_distinct_in_trials": len(indices),
        "dataset_indices": indices,
        "splits": dict(splits),
        "explanation_seeds": sorted(set(Explanation.objects.filter(arm__study=study)
                                        .values_list("seed", flat=True))),
    }


def _exclusions(*, study: Study) -> dict:
    from studyapp.services.errors import ServiceError
    from studyapp.services.exclusions import participant_exclusions, study_exclusion_rules

    rules = study_exclusion_rules(study=study)
    try:
        exclusions = participant_exclusions(study=study)
    except ServiceError as exc:
        return {"evaluated": False, "rules": rules, "problems": list(exc.messages)}
    counts = Counter(rule for names in exclusions.values() for rule in names)
    return {"evaluated": True, "rules": rules, "n_participants": len(exclusions),
            "n_excluded": sum(1 for names in exclusions.values() if names), "per_rule": dict(counts)}


def _external_import(*, study: Study) -> dict:
    """The file an imported study's data came from (name, SHA-256, rows, import time), under the
    study; nothing for a study run here."""
    record = ExternalStudyImport.objects.filter(study=study).first()
    if record is None:
        return {}
    return {"external_import": {
        "file_name": record.file_name, "file_sha256": record.file_sha256, "n_rows": record.n_rows,
        "n_participants": record.n_participants, "n_items": record.n_items,
        "imported_at": iso_utc(record.imported_at), "imported_by": record.imported_by,
        "columns": record.columns, "ignored_columns": record.ignored_columns, "settings": record.settings,
        # Said in words too: the plan of an imported study is frozen after its data were seen.
        "note": "The data were collected elsewhere and imported from this file; the plan was frozen after the "
                "import (preregistration.launched_at), so it is a pre-registration only if it was registered "
                "before the data were collected."}}


def manifest_build(*, study: Study) -> dict:
    """The provenance manifest of a study, as JSON-able data."""
    study = Study.objects.select_related("model", "dataset").get(pk=study.pk)
    frozen = study.frozen_config
    # A study whose data were collected elsewhere has no model (its file: study.external_import).
    models = ([study.model, *MLModel.objects.filter(derived_from=study.model).order_by("id")]
              if study.model_id is not None else [])
    dataset = study.dataset
    runs = AnalysisRun.objects.filter(study=study).order_by("created_at", "id")
    columns = export_columns(study=study, likert_items=likert_items(study=study))
    return {
        "manifest_version": MANIFEST_VERSION,
        "exported_at": iso_utc(timezone.now()),
        "study": {"id": study.pk, "slug": study.slug, "state": study.state, "seed": study.seed,
                  "config": study.config, "target_per_arm": study.target_per_arm,
                  "n_participants": study.participants.count(), "source": study.source,
                  **_external_import(study=study)},
        "preregistration": {
            "frozen_sha256": study.frozen_sha256 or None,
            "frozen_sha256_verified": preregistration_verify(study=study) if frozen is not None else None,
            "drift": preregistration_drift(study=study),
            "launched_at": iso_utc(study.launched_at), "closed_at": iso_utc(study.closed_at),
            "frozen_config": frozen,
        },
        "models": [_model(m) for m in models],
        "dataset": {"id": dataset.pk, "name": dataset.name, "modality": dataset.modality, "source": dataset.source,
                    "content_sha256": dataset.content_sha256, "split_info": dataset.split_info,
                    "n_items": dataset.n_items, "input_shape": dataset.input_shape,
                    "class_names": dataset.class_names, "feature_names": dataset.feature_names,
                    "value_range": dataset.value_range},
        "arms": _arms(study=study),
        "stimuli": _stimuli(study=study),
        "item_sample": study.item_sample or None,
        "software": software_versions(SOFTWARE, missing=None),
        "deviations": [deviation_as_dict(d, timestamp=iso_utc) for d in study_deviations(study=study)],
        "analysis_runs": [
            {"id": r.pk, "kind": r.kind, "number": r.number, "plan_sha256": r.plan_sha256 or None, "seed": r.seed,
             "plan_matches": bool(study.frozen_sha256) and r.plan_sha256 == study.frozen_sha256,
             "software": r.software, "created_at": iso_utc(r.created_at)}
            for r in runs
        ],
        "exclusions": _exclusions(study=study),
        "exports": {
            spec.suffix: {"file_name": f"{study.slug}_{spec.suffix}", "description": spec.description,
                          "columns": [c.name for c in columns[spec.suffix]]}
            for spec in EXPORTS.values()
        },
    }
