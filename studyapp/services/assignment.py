"""Balanced assignment of a new participant to an arm (server side only).

The arm with the lowest (completed + active in-progress) / allocation weight wins; ties are broken
by a seeded draw. "Active" means seen within the design's abandonment timeout: a participant past
it has been released (``participants_release_abandoned``) and no longer holds a slot, so the slot
refills. Simulated participants are balanced among themselves and never fill real slots.

Locking contract: the caller holds the study row lock (``select_for_update`` on the Study), taken
before any participant row, so concurrent enrollments are serialized per study and cannot both
see the same counts and overfill one arm.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
from django.db.models import Count, Q

from studyapp.models import Arm, Participant, Study

Status = Participant.Status
HOLDING = (Status.CONSENTED, Status.IN_PROGRESS)


def slot_holders(*, study: Study, simulated: bool, active_since: dt.datetime):
    """Participants that hold a slot: completed, or in progress and seen since ``active_since``."""
    return Participant.objects.filter(study=study, simulated=simulated, preview=False).filter(
        Q(status=Status.COMPLETED) | Q(status__in=HOLDING, last_seen_at__gte=active_since))


def arm_counts(*, study: Study, simulated: bool, active_since: dt.datetime) -> dict[int, int]:
    rows = slot_holders(study=study, simulated=simulated, active_since=active_since) \
        .values("arm_id").annotate(n=Count("pk")).values_list("arm_id", "n")
    return dict(rows)


def arm_assign(*, study: Study, simulated: bool, active_since: dt.datetime) -> tuple[Arm, dict]:
    """The arm for the next participant and the record of how it was chosen (stored with them)."""
    arms = list(study.arms.order_by("position", "id"))
    if not simulated:  # a paused arm takes no new real participant (the live monitor's switch)
        arms = [a for a in arms if not a.ingest_paused] or arms
    counts = arm_counts(study=study, simulated=simulated, active_since=active_since)
    load = {a.pk: counts.get(a.pk, 0) / a.allocation_weight for a in arms}
    lowest = min(load.values())
    candidates = [a for a in arms if load[a.pk] == lowest]
    # Seeded by the study's seed and how many have enrolled so far: reproducible, not guessable
    # by the participant (who never sees any of it).
    enrolled = Participant.objects.filter(study=study, simulated=simulated, preview=False).count()
    draw = int(np.random.default_rng([study.seed, enrolled, int(simulated)]).integers(len(candidates)))
    chosen = candidates[draw]
    record = {"counts": {a.name: counts.get(a.pk, 0) for a in arms},
              "weights": {a.name: a.allocation_weight for a in arms},
              "candidates": [a.name for a in candidates],
              "draw": {"seed": [study.seed, enrolled, int(simulated)], "index": draw}}
    return chosen, record


def study_is_full(*, study: Study, active_since: dt.datetime) -> bool:
    """Every arm holds its target of real participants (completed + active in progress)."""
    counts = arm_counts(study=study, simulated=False, active_since=active_since)
    return all(counts.get(a.pk, 0) >= study.target_per_arm for a in study.arms.all())
