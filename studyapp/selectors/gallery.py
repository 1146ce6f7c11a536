"""The arm gallery a researcher checks after Prepare: per sampled item, the input, the model's
output and every arm's aid side by side (real and manipulated next to each other, each drawn on
its arm's shared scale), the counterfactual edits with the model's output on each, and the sanity
verdicts in words. Staff only: it shows what participants must not see (truth, outputs)."""
from __future__ import annotations

import numpy as np

from studyapp.models import Arm, Edit, Explanation, ModelOutput, Study, StudyItem
from studyapp.selectors.plans import SANITY_MEANING
from studyapp.services.datasets.common import npy_array

TOP_FEATURES = 6


def _label(names: list[str], index: int | None) -> str:
    if index is None:
        return "—"
    return names[index] if 0 <= index < len(names) else str(index)


def study_gallery(*, study: Study, limit: int = 40) -> dict:
    names = list(study.model.class_names)
    features = list(study.dataset.feature_names or [])
    arms = list(Arm.objects.filter(study=study).order_by("position", "id"))
    items = list(StudyItem.objects.filter(study=study).select_related("stimulus")
                 .defer("stimulus__data").order_by("role", "position")[:limit])
    stimulus_ids = [i.stimulus_id for i in items]
    outputs = dict(ModelOutput.objects.filter(model=study.model, stimulus_id__in=stimulus_ids)
                   .values_list("stimulus_id", "predicted"))
    explanations = {(e.arm_id, e.stimulus_id): e for e in Explanation.objects.filter(
        arm__study=study, stimulus_id__in=stimulus_ids, edit__isnull=True).only("pk", "arm_id", "stimulus_id",
                                                                                  "image", "attributions")}
    edit_ids = [pk for i in items for pk in (i.edits or [])]
    edits = Edit.objects.defer("data").in_bulk(edit_ids)
    edit_outputs = dict(ModelOutput.objects.filter(model=study.model, edit_id__in=edit_ids)
                        .values_list("edit_id", "predicted"))
    rows = []
    for item in items:
        cells = []
        for arm in arms:
            e = explanations.get((arm.pk, item.stimulus_id))
            cell = {"arm": arm.name, "explanation": e.pk if e is not None and e.image else None, "bars": None}
            if e is not None and not e.image and features:
                values = npy_array(e.attributions)
                if values.ndim == 1 and len(values) == len(features):
                    order = np.argsort(-np.abs(values), kind="stable")[:TOP_FEATURES]
                    cell["bars"] = [(features[i], round(float(values[i]), 4)) for i in order]
            cells.append(cell)
        rows.append({
            "role": item.get_role_display(), "stratum": item.stratum, "stimulus": item.stimulus_id,
            "image": bool(item.stimulus.image), "truth": _label(names, item.stimulus.label),
            "output": _label(names, outputs.get(item.stimulus_id)),
            "model_right": outputs.get(item.stimulus_id) == item.stimulus.label, "cells": cells,
            "edits": [{"pk": pk, "image": bool(edits[pk].image), "params": edits[pk].params,
                       "output": _label(names, edit_outputs.get(pk)),
                       "changes": edit_outputs.get(pk) != outputs.get(item.stimulus_id)}
                      for pk in (item.edits or []) if pk in edits],
        })
    sanity = (study.preparation or {}).get("sanity") or {}
    checks = [{"method": m, "verdict": r.get("verdict"), "meaning": SANITY_MEANING.get(r.get("verdict"), ""),
               "config": r.get("config"), "reason": r.get("verdict_reason") or "",
               # Each metric's verdict in words (reports recorded before they existed have none).
               "metrics": [v for v in r.get("metric_verdicts") or [] if isinstance(v, dict) and v.get("sentence")]}
              for m, r in sorted(sanity.items())]
    realism = [{"arm": name, **report} for name, report in sorted(((study.preparation or {}).get("realism") or {}).items())]
    # The rule each report was decided by, in words (older reports do not state it).
    rules = sorted({r["rule"]["in_words"] for r in sanity.values()
                    if isinstance(r.get("rule"), dict) and r["rule"].get("in_words")})
    return {"arms": [a.name for a in arms], "rows": rows, "sanity": checks, "sanity_rules": rules, "realism": realism,
            "total": StudyItem.objects.filter(study=study).count(), "shown": len(rows)}


def gallery_image(*, study: Study, kind: str, pk: int):
    """The file of a stimulus, explanation or edit of this study's item sample (None: not one)."""
    in_sample = StudyItem.objects.filter(study=study)
    if kind == "stimulus":
        obj = in_sample.filter(stimulus_id=pk).select_related("stimulus").first()
        return obj.stimulus.image if obj is not None and obj.stimulus.image else None
    if kind == "explanation":
        e = Explanation.objects.filter(pk=pk, arm__study=study).only("image").first()
        return e.image if e is not None and e.image else None
    if kind == "edit":
        e = Edit.objects.filter(pk=pk, stimulus__study_items__study=study).only("image").first()
        return e.image if e is not None and e.image else None
    return None
