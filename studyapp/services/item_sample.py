"""The study's item sample: a recorded, seeded, stratified draw from the dataset's test split.

A step of preparation, after the model's outputs exist and before anything is explained: only the
sampled items get explanations and edits. Every participant sees the same items (items are
crossed with arms); only their order differs.

* Strata are (the model's predicted class) x (model right / wrong). Each role gets
  ``model_error_share`` of items the model gets wrong (default half), spread evenly over the
  predicted classes, so neither "answer the true label" nor "always answer class k" is a winning
  strategy. Where a stratum runs short its share moves to the others, and the record says so.
* Learning items, test items and counterfactual items are disjoint (a database constraint).
* Counterfactual items are drawn only where suitable edits exist: for ``counterfactual_predict``
  one edit per item, about half of them changing the output; for ``counterfactual_choose``
  exactly one of K edits changes it (``explainers.edits`` selects these).

Idempotent: the draw is keyed by what determines it (seed, needs, share, K, edit settings); a
re-run with the same key keeps the stored sample, another key redraws it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from django.db import transaction

from explainers.canonical import canonical_sha256
from studyapp.design import StudyDesign
from studyapp.models import ModelOutput, Stimulus, Study, StudyItem
from studyapp.selectors import edit_settings, study_edits
from studyapp.services.errors import ServiceError

FORWARD_ROLES = ("learning", "test")
COUNTERFACTUAL_ROLES = ("counterfactual_predict", "counterfactual_choose")
# Candidates examined for counterfactual items: edits are computed for these only.
CANDIDATE_FACTOR, MIN_CANDIDATES = 4, 40


@dataclass(frozen=True)
class PoolItem:
    stimulus_id: int
    predicted: int
    correct: bool

    @property
    def stratum(self) -> str:
        return f"predicted {self.predicted} / model {'right' if self.correct else 'wrong'}"


def sample_key(*, study: Study, design: StudyDesign) -> str:
    return canonical_sha256({"seed": study.seed, "needs": design.items_needed(), "share": design.model_error_share,
                             "k": design.counterfactual_options, "edits": edit_settings(study=study)})


def pool_items(*, study: Study) -> list[PoolItem]:
    """The test split with the model's predictions, in dataset order."""
    rows = (ModelOutput.objects.filter(model=study.model, stimulus__dataset=study.dataset,
                                       stimulus__split=Stimulus.Split.TEST)
            .order_by("stimulus__index").values_list("stimulus_id", "predicted", "stimulus__label"))
    return [PoolItem(s, int(p), int(p) == int(label)) for s, p, label in rows]


def stratified_draw(pool: list[PoolItem], n: int, *, error_share: float, rng: np.random.Generator
                    ) -> tuple[list[PoolItem], list[str]]:
    """n items: round(n * error_share) the model gets wrong, spread evenly over predicted classes.

    Returns the items (in drawn order) and notes on any stratum that ran short."""
    groups = {False: {}, True: {}}
    for item in (pool[i] for i in rng.permutation(len(pool))):
        groups[item.correct].setdefault(item.predicted, []).append(item)
    for classes in groups.values():
        for items in classes.values():
            items.reverse()  # pop() from the end keeps the permuted order
    want = {False: int(round(n * error_share)), True: n - int(round(n * error_share))}
    taken, notes = [], []
    for correct in (False, True):
        got = _round_robin(groups[correct], want[correct])
        if len(got) < want[correct]:
            other = not correct
            notes.append(f"only {len(got)} of {want[correct]} items the model gets "
                         f"{'right' if correct else 'wrong'}; the rest come from the other group")
            want[other] += want[correct] - len(got)
        taken += got
    for correct in (False, True):  # a group that ran short after the other was served
        taken += _round_robin(groups[correct], n - len(taken))
    if len(taken) < n:
        raise ServiceError([f"The design needs {n} items here but only {len(taken)} are left in the test split."])
    order = rng.permutation(len(taken))
    return [taken[i] for i in order], notes


def _round_robin(classes: dict[int, list[PoolItem]], k: int) -> list[PoolItem]:
    out = []
    while len(out) < k and any(classes.values()):
        for c in sorted(classes):
            if classes[c] and len(out) < k:
                out.append(classes[c].pop())
    return out


def _outcomes(*, study: Study, stimulus_ids: list[int]):
    """explainers.edits.EditOutcomes of the candidates' edits, read from the database."""
    from explainers.edits import EditOutcomes

    edits = list(study_edits(study=study, stimuli=stimulus_ids).order_by("stimulus_id", "position")
                 .values_list("pk", "stimulus_id", "position", "data"))
    predicted = dict(ModelOutput.objects.filter(model=study.model, edit_id__in=[e[0] for e in edits])
                     .values_list("edit_id", "predicted"))
    original = dict(ModelOutput.objects.filter(model=study.model, stimulus_id__in=stimulus_ids)
                    .values_list("stimulus_id", "predicted"))
    data = dict(Stimulus.objects.filter(pk__in=stimulus_ids).values_list("pk", "data"))
    width = max([e[2] for e in edits], default=-1) + 1
    n = len(stimulus_ids)
    row = {s: i for i, s in enumerate(stimulus_ids)}
    classes = np.full((n, width), -1, dtype=np.int64)
    changes_input = np.zeros((n, width), dtype=bool)
    ids = np.full((n, width), -1, dtype=np.int64)
    for pk, stimulus_id, position, blob in edits:
        i = row[stimulus_id]
        classes[i, position] = predicted[pk]
        changes_input[i, position] = bytes(blob) != bytes(data[stimulus_id])
        ids[i, position] = pk
    originals = np.array([original[s] for s in stimulus_ids], dtype=np.int64)
    valid = classes >= 0
    outcomes = EditOutcomes(original_classes=originals, original_probabilities=np.zeros((n, 1), np.float32),
                            classes=classes, probabilities=np.zeros((n, width, 1), np.float32),
                            changes_prediction=valid & (classes != originals[:, None]), valid=valid,
                            changes_input=changes_input & valid)
    return outcomes, ids


def counterfactual_candidates(*, study: Study, design: StudyDesign, pool: list[PoolItem], used: set[int],
                              rng: np.random.Generator) -> list[PoolItem]:
    """The pool items whose edits preparation computes to find counterfactual items."""
    need = sum(design.items_needed()[r] for r in COUNTERFACTUAL_ROLES)
    if need == 0:
        return []
    rest = [p for p in pool if p.stimulus_id not in used]
    order = rng.permutation(len(rest))
    return [rest[i] for i in order[:max(MIN_CANDIDATES, CANDIDATE_FACTOR * need)]]


def _draw_counterfactual(*, study: Study, design: StudyDesign, candidates: list[PoolItem], role: str,
                         rng: np.random.Generator) -> tuple[list[tuple[PoolItem, list[int], int | None]], list[str]]:
    from explainers.edits import counterfactual_choose_candidates, counterfactual_predict_edits

    n = design.items_needed()[role]
    ids = [c.stimulus_id for c in candidates]
    outcomes, edit_ids = _outcomes(study=study, stimulus_ids=ids)
    if role == "counterfactual_predict":
        sets = counterfactual_predict_edits(outcomes, per_stimulus=1, flip_fraction=0.5, seed=study.seed,
                                            stimulus_keys=ids)
    else:
        sets = counterfactual_choose_candidates(outcomes, n_candidates=design.counterfactual_options,
                                                seed=study.seed, stimulus_keys=ids)
    suitable = {c.stimulus_id: s for c, s in zip(candidates, sets) if s is not None}
    eligible = [c for c in candidates if c.stimulus_id in suitable]
    if len(eligible) < n:
        what = ("an edit to predict" if role == "counterfactual_predict" else
                f"exactly one of {design.counterfactual_options} edits that changes the model's output")
        raise ServiceError([f"The design needs {n} {role.replace('_', ' ')} items, but only {len(eligible)} of "
                            f"the {len(candidates)} items examined have {what}. Lower n_items, or change the edit "
                            "settings (for images a finer grid gives more edits)."])
    drawn, notes = stratified_draw(eligible, n, error_share=design.model_error_share, rng=rng)
    row = {s: i for i, s in enumerate(ids)}
    out = []
    for item in drawn:
        chosen = suitable[item.stimulus_id]
        out.append((item, [int(edit_ids[row[item.stimulus_id], slot]) for slot in chosen.edits],
                    chosen.correct_position))
    return out, notes


def items_sample_begin(*, study: Study, design: StudyDesign) -> dict:
    """The first half of the draw: the forward items and the counterfactual candidates whose edits
    must exist before the second half (``items_sample_finish``). A JSON draft, so that the edits can
    be computed by other units in between; ``{"kept": True}`` when the stored sample has this key."""
    key = sample_key(study=study, design=design)
    if study.item_sample.get("key") == key and StudyItem.objects.filter(study=study).exists():
        return {"kept": True}
    pool = pool_items(study=study)
    rng = np.random.default_rng([study.seed, 7919])
    needs = design.items_needed()
    chosen: dict[str, list] = {}
    notes: dict[str, list[str]] = {}
    used: set[int] = set()
    for role in FORWARD_ROLES:
        if needs[role]:
            rest = [p for p in pool if p.stimulus_id not in used]
            if len(rest) < needs[role]:
                raise ServiceError([f"The design needs {sum(needs.values())} distinct items (learning, test and "
                                    f"counterfactual items are disjoint) but the test split has {len(pool)}."])
            drawn, notes[role] = stratified_draw(rest, needs[role], error_share=design.model_error_share, rng=rng)
            chosen[role] = [[p.stimulus_id, p.predicted, p.correct, [], None] for p in drawn]
            used |= {p.stimulus_id for p in drawn}
    candidates = counterfactual_candidates(study=study, design=design, pool=pool, used=used, rng=rng)
    state = rng.bit_generator.state
    return {"key": key, "pool_size": len(pool), "chosen": chosen, "notes": notes,
            "candidates": [[p.stimulus_id, p.predicted, p.correct] for p in candidates],
            # 128-bit integers as text: JSON columns do not all keep them exactly.
            "rng": {**state, "state": {k: str(v) for k, v in state["state"].items()}}}


def items_sample_finish(*, study: Study, design: StudyDesign, draft: dict) -> dict:
    """The second half: the counterfactual items among the candidates (their edits and the model's
    outputs on them exist by now), then the sample and its record, stored together."""
    if draft.get("kept"):
        return study.item_sample
    rng = np.random.default_rng()
    rng.bit_generator.state = {**draft["rng"], "state": {k: int(v) for k, v in draft["rng"]["state"].items()}}
    needs = design.items_needed()
    chosen = {role: [(PoolItem(s, p, c), edits, answer) for s, p, c, edits, answer in items]
              for role, items in draft["chosen"].items()}
    notes = dict(draft["notes"])
    candidates = [PoolItem(s, p, c) for s, p, c in draft["candidates"]]
    used = {p.stimulus_id for items in chosen.values() for p, _, _ in items}
    for role in COUNTERFACTUAL_ROLES:
        if needs[role]:
            rest = [c for c in candidates if c.stimulus_id not in used]
            chosen[role], notes[role] = _draw_counterfactual(study=study, design=design, candidates=rest, role=role,
                                                             rng=rng)
            used |= {p.stimulus_id for p, _, _ in chosen[role]}
    record = {
        "key": draft["key"], "seed": study.seed, "pool_size": draft["pool_size"],
        "model_error_share": design.model_error_share, "counterfactual_candidates": len(candidates),
        "counts": {role: _counts([p for p, _, _ in items]) for role, items in chosen.items()},
        "notes": {role: n for role, n in notes.items() if n},
    }
    with transaction.atomic():
        StudyItem.objects.filter(study=study).delete()
        StudyItem.objects.bulk_create([
            StudyItem(study=study, stimulus_id=p.stimulus_id, role=role, position=i, stratum=p.stratum,
                      edits=edits, answer_position=answer)
            for role, items in chosen.items() for i, (p, edits, answer) in enumerate(items)])
        Study.objects.filter(pk=study.pk).update(item_sample=record)
    study.item_sample = record
    return record


def _counts(items: list[PoolItem]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item.stratum] = out.get(item.stratum, 0) + 1
    return dict(sorted(out.items()))


def sampled_stimuli(*, study: Study) -> list[Stimulus]:
    """The sampled stimuli in dataset order (what preparation explains)."""
    ids = StudyItem.objects.filter(study=study).values_list("stimulus_id", flat=True)
    return list(Stimulus.objects.filter(pk__in=ids).order_by("index").only("data", "label", "index"))

