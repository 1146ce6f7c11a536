"""Builders for analysis tests: studies with participants, trials and answers in the database.

Rows are written with ``bulk_create`` (a simulated study of a few thousand trials takes well
under a second); the correctness pattern of a simulated study comes from
``studyapp.analysis.simulate_study`` so tests can compare the service with the statistics package
called directly on the same data.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from contextlib import contextmanager

import numpy as np
import pandas as pd

from django.db import connection

from studyapp import models as m
from studyapp.services.studies import study_launch
from tests.factories import ArmFactory, StudyFactory, npy_bytes, with_hypothesis

T0 = dt.datetime(2025, 1, 6, 9, 0, tzinfo=dt.timezone.utc)


def study_with_items(*, arms=("control", "explained"), n_items: int = 20, config: dict | None = None,
                     flip_every: int = 5) -> m.Study:
    """A ready-to-launch study: arms (first is the control), items and the model's outputs on them.

    Item ``i`` has truth ``i % 2``; the model agrees with the truth except on every
    ``flip_every``-th item, so "always the true label" is right on (1 - 1/flip_every) of the items.
    """
    study = StudyFactory(config=config or {})
    for position, name in enumerate(arms):
        if position == 0:
            ArmFactory(study=study, name=name, kind="control", position=0)
        else:
            ArmFactory(study=study, name=name, kind="explanation", method="saliency", position=position)
    rng = np.random.default_rng(0)
    stimuli = m.Stimulus.objects.bulk_create([
        m.Stimulus(dataset=study.dataset, index=i, label=i % 2, data=npy_bytes(rng.random(3)))
        for i in range(n_items)])
    m.ModelOutput.objects.bulk_create([
        m.ModelOutput(model=study.model, stimulus=s, predicted=model_prediction(s.index, flip_every),
                      probabilities=[0.5, 0.5])
        for s in stimuli])
    return study


def model_prediction(index: int, flip_every: int = 5) -> int:
    truth = index % 2
    return 1 - truth if flip_every and index % flip_every == 0 else truth


def launch(study: m.Study) -> m.Study:
    """Freeze the plan with the real launch service (preparation is skipped: outputs exist).
    A plan needs a hypothesis to launch: H0 (the first non-control arm beats control) when none."""
    with_hypothesis(study)
    m.Study.objects.filter(pk=study.pk).update(state=m.Study.State.READY)
    study.refresh_from_db()
    return study_launch(study=study)


def _response(trial: m.Trial, answer: int, correct: bool | None) -> m.Response:
    key = uuid.uuid4()
    return m.Response(trial=trial, idempotency_key=key, payload_sha256=hashlib.sha256(key.bytes).hexdigest(),
                      answer=int(answer), correct=correct, client_rt_ms=1500)


def _set_times(participants: list[m.Participant], seconds: list[float | None]) -> None:
    for participant, duration in zip(participants, seconds):
        participant.started_at = T0
        participant.completed_at = None if duration is None else T0 + dt.timedelta(seconds=duration)
    m.Participant.objects.bulk_update(participants, ["started_at", "completed_at"])


def add_participant(study: m.Study, arm: str, *, answers=(), checks=(), status: str = "completed",
                    seconds: float | None = 600.0, comprehension_attempts: int = 1,
                    instructions_ms: int | None = None, phase: str = "test",
                    shown_answers=(), checks_after: int | None = None) -> m.Participant:
    """One participant with answered trials.

    ``shown_answers``: answers to learning trials where the model's output was shown (first);
    ``answers``: answers to forward trials on items 0, 1, 2, ... (correct = matches the model);
    ``checks``: (answer, expected) pairs, attention checks placed after ``checks_after`` forward
    trials (default: after all of them); an answer of None leaves the check unanswered.
    """
    duration = seconds if status == "completed" else None
    participant = m.Participant.objects.create(
        study=study, arm=study.arms.get(name=arm), status=status, comprehension_attempts=comprehension_attempts,
        instructions_ms=instructions_ms, consented_at=T0,
        completed_at=None if duration is None else T0 + dt.timedelta(seconds=duration))
    _set_times([participant], [duration])
    stimuli = list(study.dataset.stimuli.order_by("index"))
    plan = [("learning", "forward", i, None, answer, True) for i, answer in enumerate(shown_answers)]
    forward = [(phase, "forward", i, model_prediction(stimuli[i % len(stimuli)].index), answer, False)
               for i, answer in enumerate(answers)]
    attention = [(phase, "attention_check", 0, expected, answer, False) for answer, expected in checks]
    split = len(forward) if checks_after is None else checks_after
    plan += forward[:split] + attention + forward[split:]
    trials, responses = [], []
    for position, (trial_phase, task, item, expected, answer, shown) in enumerate(plan):
        trials.append(m.Trial(participant=participant, position=position, phase=trial_phase, task=task,
                              stimulus=stimuli[item % len(stimuli)], expected_answer=expected,
                              show_model_output=shown))
        correct = None if expected is None or answer is None else answer == expected
        responses.append((answer, correct))
    trials = m.Trial.objects.bulk_create(trials)
    m.Response.objects.bulk_create([_response(t, a, c) for t, (a, c) in zip(trials, responses) if a is not None])
    return participant


def write_simulated_trials(study: m.Study, trials: pd.DataFrame, *, seconds: float = 900.0,
                           attention_checks: int = 0) -> dict[int, uuid.UUID]:
    """Write ``simulate_study`` output into the database; returns its participant_id -> public_id.

    Every simulated participant is completed; item ``item_id`` is the stimulus with that index;
    a correct answer is the model's output, a wrong one the other class (two classes). With
    ``attention_checks`` each participant also passes that many attention checks.
    """
    arms = {a.name: a for a in study.arms.all()}
    stimuli = {s.index: s for s in study.dataset.stimuli.all()}
    predicted = dict(m.ModelOutput.objects.filter(model=study.model, stimulus__isnull=False)
                     .values_list("stimulus__index", "predicted"))
    first = trials.drop_duplicates("participant_id")
    participants = m.Participant.objects.bulk_create([
        m.Participant(study=study, arm=arms[str(row.arm)], status="completed", consented_at=T0,
                      completed_at=T0 + dt.timedelta(seconds=seconds))
        for row in first.itertuples()])
    _set_times(participants, [seconds] * len(participants))
    by_id = dict(zip(first["participant_id"].tolist(), participants))
    rows = list(zip(trials["participant_id"].tolist(), trials["item_id"].tolist(),
                    trials["phase"].astype(str).tolist(), trials["task"].astype(str).tolist(),
                    trials["correct"].tolist()))
    planned, answers, positions = [], [], {}
    for pid, item, phase, task, correct in rows:
        position = positions.get(pid, 0)
        positions[pid] = position + 1
        expected = predicted[int(item)]
        planned.append(m.Trial(participant=by_id[pid], position=position, phase=phase, task=task,
                               stimulus=stimuli[int(item)], expected_answer=expected))
        answers.append((expected if correct else 1 - expected, bool(correct)))
    for pid, participant in by_id.items():
        for k in range(attention_checks):
            position = positions.get(pid, 0)
            positions[pid] = position + 1
            planned.append(m.Trial(participant=participant, position=position, phase="test",
                                   task="attention_check", stimulus=stimuli[0], expected_answer=1))
            answers.append((1, True))
    planned = m.Trial.objects.bulk_create(planned, batch_size=5000)
    m.Response.objects.bulk_create([_response(t, a, c) for t, (a, c) in zip(planned, answers)], batch_size=5000)
    return {pid: p.public_id for pid, p in by_id.items()}


def as_analysis_frame(trials: pd.DataFrame, public_ids: dict[int, uuid.UUID]) -> pd.DataFrame:
    """The simulated frame keyed like the database (participant_id = public id), for direct calls."""
    out = trials.copy()
    out["participant_id"] = out["participant_id"].map(public_ids)
    out["arm"] = out["arm"].astype(str)
    out["phase"] = out["phase"].astype(str)
    return out


@contextmanager
def append_only_triggers_off(table: str):
    """Inside: ``table``'s append-only triggers are off, as only someone with the table owner's
    rights could have them (ALTER TABLE ... DISABLE TRIGGER; on SQLite, dropping them). For tests of
    the last line of defence (a frozen plan whose hash no longer verifies). The test's transaction
    keeps the change local; the triggers are back on afterwards in any case."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # ALTER TABLE refuses while deferred foreign-key checks of this transaction are pending.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
            try:
                yield
            finally:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
                cursor.execute("SET CONSTRAINTS ALL DEFERRED")
            return
        cursor.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = %s", [table])
        triggers = cursor.fetchall()
        for name, _ in triggers:
            cursor.execute(f"DROP TRIGGER {name}")
        try:
            yield
        finally:
            for _, sql in triggers:
                cursor.execute(sql)


def tamper_with_frozen_plan(study: m.Study, frozen_config: dict) -> None:
    """Change a launched study's frozen plan behind everything's back (see append_only_triggers_off)."""
    with append_only_triggers_off("studyapp_study"):
        m.Study.objects.filter(pk=study.pk).update(frozen_config=frozen_config)
