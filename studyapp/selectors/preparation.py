"""What the researcher reads about a preparation in progress: per step, units done / running /
failed / pending, elapsed time, an estimate of the time left, and which workers are busy on what."""
from __future__ import annotations

from dataclasses import dataclass, field

from django.utils import timezone

from studyapp.models import PreparationUnit, Study

Status = PreparationUnit.Status


@dataclass
class StepProgress:
    step: str
    done: int = 0
    running: int = 0
    failed: int = 0
    pending: int = 0
    seconds: float = 0.0  # summed durations of the finished units
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.done + self.running + self.failed + self.pending


@dataclass
class PreparationProgress:
    steps: list[StepProgress]
    elapsed_seconds: float | None
    remaining_seconds: float | None  # None while nothing has finished to measure from
    busy: list[dict]  # {"worker", "unit", "step", "seconds"}
    waiting: int  # pending units whose dependencies are not done yet (the later steps)

    @property
    def totals(self) -> dict[str, int]:
        return {s: sum(getattr(p, s) for p in self.steps) for s in ("done", "running", "failed", "pending")}

    @property
    def failed(self) -> bool:
        return any(p.failed for p in self.steps)


def preparation_progress(*, study: Study) -> PreparationProgress:
    """Measured, not guessed: the time left is the mean measured time of finished units of each
    kind (all kinds' mean where a kind has none yet) times the units left, shared among the
    workers busy now."""
    units = list(PreparationUnit.objects.filter(study=study).order_by("id").values(
        "key", "kind", "step", "status", "seconds", "error", "worker", "started_at", "created_at", "depends_on"))
    steps: dict[str, StepProgress] = {}
    for u in units:
        step = steps.setdefault(u["step"], StepProgress(u["step"]))
        setattr(step, u["status"], getattr(step, u["status"]) + 1)
        step.seconds += u["seconds"] or 0.0
        if u["status"] == Status.FAILED and len(step.errors) < 3:
            step.errors.append(u["error"])
    now = timezone.now()
    elapsed = (now - min(u["created_at"] for u in units)).total_seconds() if units else None
    measured: dict[str, list[float]] = {}
    for u in units:
        if u["status"] == Status.DONE and u["seconds"] is not None:
            measured.setdefault(u["kind"], []).append(u["seconds"])
    everything = [s for values in measured.values() for s in values]
    busy = [{"worker": u["worker"], "unit": u["key"], "step": u["step"],
             "seconds": round((now - u["started_at"]).total_seconds(), 1) if u["started_at"] else None}
            for u in units if u["status"] == Status.RUNNING]
    left = [u for u in units if u["status"] in (Status.PENDING, Status.RUNNING)]
    remaining = None
    if everything and left:
        mean = {kind: sum(v) / len(v) for kind, v in measured.items()}
        overall = sum(everything) / len(everything)
        remaining = sum(mean.get(u["kind"], overall) for u in left) / max(1, len({b["worker"] for b in busy}))
    elif units and not left:
        remaining = 0.0
    done = {u["key"] for u in units if u["status"] == Status.DONE}
    waiting = sum(1 for u in units if u["status"] == Status.PENDING and not set(u["depends_on"]) <= done)
    return PreparationProgress(steps=list(steps.values()), elapsed_seconds=elapsed, remaining_seconds=remaining,
                               busy=busy, waiting=waiting)


def preparation_context(*, study: Study, can_change: bool = False) -> dict:
    """What templates/admin/studyapp/_preparation.html shows."""
    progress = preparation_progress(study=study)
    return {"study": study, "progress": progress, "total": sum(progress.totals.values()), "can_change": can_change}
