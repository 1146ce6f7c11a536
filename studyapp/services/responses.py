"""Recording a participant's answer to a trial: exactly once, whatever the network does.

Followed from the click: ``static/participant`` (the page) -> ``studyapp/api/participation.py``
(AnswerView) -> ``response_record`` here -> ``studyapp/selectors.trials_long_queryset`` (the long
format) -> ``studyapp/exports/rows.py`` (the CSV row).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from studyapp.design import StudyDesign, trial_asks_confidence
from studyapp.models import Participant, Response, Trial
from studyapp.services.errors import ServiceError
from studyapp.services.participants import participant_touch, participant_trials_finished

# What the page may report about a trial's screen time (the API's input serializer enforces it).
MAX_EVENTS = 200
EVENT_TYPES = ("focus", "blur", "visible", "hidden")
# Above any plan's length: trial positions move out of the way through here (practice_repeat).
SHIFT = 1_000_000


class AnswerConflict(ServiceError):
    """The answer cannot be stored as sent (HTTP 409); ``stored`` describes what is stored, if any."""

    def __init__(self, message: str, *, stored: dict | None = None):
        super().__init__(message)
        self.stored = stored


@dataclass(frozen=True)
class Answer:
    """What the browser sends for one trial (validated by the API's input serializer)."""

    idempotency_key: uuid.UUID
    answer: int
    client_rt_ms: int
    confidence: int | None = None
    client_sent_at: dt.datetime | None = None
    events: tuple = ()
    # The browser's viewport and device class when it answered (see the API's ClientInput).
    client: dict | None = None

    def focus_losses(self) -> int:
        return sum(1 for e in self.events if e.get("type") in ("blur", "hidden"))

    def sha256(self) -> str:
        """Of the answer's content, not its transport: a resend with the same content matches."""
        content = {"answer": self.answer, "client_rt_ms": self.client_rt_ms, "confidence": self.confidence,
                   "client_sent_at": self.client_sent_at.isoformat() if self.client_sent_at else None,
                   "events": list(self.events), "client": self.client}
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def answer_problems(*, trial: Trial, answer: Answer, design: StudyDesign) -> list[str]:
    """Range checks that depend on the trial (HTTP 422 with these messages)."""
    problems = []
    if not 0 <= answer.answer < (trial.n_options or 0):
        problems.append(f"answer must be an option number from 0 to {(trial.n_options or 1) - 1}.")
    if design.confidence == "off" and answer.confidence is not None:
        problems.append("this study does not ask for confidence; leave it out.")
    if answer.confidence is None and trial_asks_confidence(design, task=trial.task,
                                                           show_model_output=trial.show_model_output):
        problems.append("confidence (1 to 7) is required in this study.")
    return problems


def stored_reply(response: Response) -> dict:
    """What every copy of the same answer gets back."""
    trial = response.trial
    reply = {"trial": str(trial.public_id), "answer": response.answer, "received_at": response.received_at,
             "idempotency_key": str(response.idempotency_key), "feedback": None}
    if trial.feedback == "correctness" and response.correct is not None:
        reply["feedback"] = {"correct": bool(response.correct)}
    elif trial.feedback == "model_output" and trial.task != Trial.Task.COUNTERFACTUAL_CHOOSE:
        # After the answer only: the model's output on what the trial asked about.
        reply["feedback"] = {"model_output": trial.expected_answer}
    return reply


def response_record(*, participant: Participant, trial_public_id: uuid.UUID, answer: Answer,
                    design: StudyDesign) -> tuple[dict, bool]:
    """Store the answer once; returns (the stored reply, created).

    Idempotency and locking contract:

    * The participant row is locked (``select_for_update``) for the whole check-and-insert, so
      concurrent copies of one answer run one after the other. Nothing here locks the study, so
      the lock order study -> participant -> trial holds (enrollment takes the study first).
    * Same idempotency key and same content: the stored reply, ``created`` False (a resend).
      Same key, other content: ``AnswerConflict`` (409). A trial answered under another key:
      ``AnswerConflict`` naming the stored answer (409). A trial that is not the current one
      (an earlier trial is unanswered): ``AnswerConflict`` (409).
    * The common case costs one plain read: the current trial (the first unanswered one) is the
      one answered. Otherwise a second read says why not (answered: a resend or a 409; an earlier
      trial is open: a 409; not the participant's: a 404). A key already stored
      for *another* trial is found by the database: ``idempotency_key`` is unique, the insert
      raises IntegrityError, the transaction rolls back and the stored row is read to say why.
      ``Response.trial`` is one-to-one too, so a race that got past the lock anyway ends the same
      way: the stored row decides (a resend with the same content gets its reply).
    * ``correct`` is computed here from ``Trial.expected_answer``; the client never says.
    """
    key_sha = answer.sha256()
    try:
        with transaction.atomic():
            return _record(participant=participant, trial_public_id=trial_public_id, answer=answer,
                           design=design, key_sha=key_sha)
    except IntegrityError:
        # The key is taken: by another trial's answer, or by a copy of this one that got past the
        # lock. The transaction is rolled back; the stored row decides (a resend gets its reply).
        existing = Response.objects.filter(idempotency_key=answer.idempotency_key).select_related("trial").first()
        if existing is None:
            raise AnswerConflict("This answer was stored by a concurrent request; resend to get its reply.") from None
        return _resent(existing, participant=participant, trial_public_id=trial_public_id, key_sha=key_sha), False


def _resent(existing: Response, *, participant: Participant, trial_public_id: uuid.UUID, key_sha: str) -> dict:
    """The reply to an answer whose idempotency key is stored already (or a 409 saying why not)."""
    if existing.trial.participant_id != participant.pk or existing.trial.public_id != trial_public_id:
        raise AnswerConflict("This idempotency key was used for another answer; send a new key.")
    if existing.payload_sha256 != key_sha:
        raise AnswerConflict("This answer was already stored with different content under the same key.",
                             stored=stored_reply(existing))
    return stored_reply(existing)


def _record(*, participant: Participant, trial_public_id: uuid.UUID, answer: Answer, design: StudyDesign,
            key_sha: str) -> tuple[dict, bool]:
    # The lock first, in its own statement: the reads below then see every answer committed before it.
    step, n_trials = (Participant.objects.select_for_update().filter(pk=participant.pk)
                      .values_list("step", "n_trials").get())
    mine = Trial.objects.filter(participant_id=participant.pk)
    # The common case, one plain read: the answer is to the current trial (the first unanswered one).
    trial = mine.filter(response__isnull=True).order_by("position").first()
    if trial is None or trial.public_id != trial_public_id:
        asked = mine.filter(public_id=trial_public_id).select_related("response").first()
        if asked is None:
            raise ServiceError("No such trial.", code="not_found")
        stored = getattr(asked, "response", None)
        if stored is not None:
            stored.trial = asked
            if stored.idempotency_key == answer.idempotency_key:
                return _resent(stored, participant=participant, trial_public_id=trial_public_id,
                               key_sha=key_sha), False
            raise AnswerConflict(f"This trial was already answered (answer {stored.answer}, key "
                                 f"{stored.idempotency_key}).", stored=stored_reply(stored))
        raise AnswerConflict("This is not the current trial; fetch the current trial and answer it.")
    if step != Participant.Step.TRIALS:
        raise AnswerConflict(f"The session is at '{step}', not at the trials.")
    problems = answer_problems(trial=trial, answer=answer, design=design)
    if problems:
        raise ServiceError(problems, code="invalid")
    now = timezone.now()
    served = trial.served_at or now
    # An IntegrityError here (the key is another answer's) leaves the transaction: see response_record.
    response = Response.objects.create(
        trial=trial, idempotency_key=answer.idempotency_key, payload_sha256=key_sha, answer=answer.answer,
        correct=None if trial.expected_answer is None else answer.answer == trial.expected_answer,
        confidence=answer.confidence, client_rt_ms=answer.client_rt_ms,
        server_rt_ms=max(0, int((now - served).total_seconds() * 1000)),
        client_sent_at=answer.client_sent_at, events=list(answer.events),
        client=answer.client, focus_losses=answer.focus_losses())
    participant.step = step
    participant_touch(participant=participant)
    repeated = response.correct is False and practice_repeat(trial=trial, design=design)
    # Positions run 0..n_trials-1 (practice_repeat keeps them so, under this lock): only a trial
    # that looks last is confirmed by a read.
    if (not repeated and trial.position >= n_trials - 1
            and not mine.filter(position__gt=trial.position).exists()):
        participant_trials_finished(participant=participant)  # that was the last trial of the plan
    response.trial = trial
    return stored_reply(response), True


def practice_repeat(*, trial: Trial, design: StudyDesign) -> bool:
    """After a wrong answer to a practice trial whose block repeats until correct (Zimmermann et al.
    2021's quality control): the same item again, right after it, unless the cap is reached.
    Returns whether a repeat was added. Runs inside ``response_record``'s transaction, under its
    lock on the participant, so two answers cannot insert two repeats."""
    block = design.blocks[trial.block] if trial.block < len(design.blocks) else None
    if trial.phase != "practice" or block is None or not block.repeat_until_correct:
        return False
    mine = Trial.objects.filter(participant_id=trial.participant_id)
    asked = mine.filter(block=trial.block, stimulus_id=trial.stimulus_id, edit_id=trial.edit_id).count()
    if asked > block.repeat_until_correct:
        return False
    # Make room after it: two steps, so the unique (participant, position) holds after each UPDATE.
    later = mine.filter(position__gt=trial.position)
    later.update(position=F("position") + SHIFT)
    mine.filter(position__gte=SHIFT).update(position=F("position") - SHIFT + 1)
    Trial.objects.create(
        participant_id=trial.participant_id, position=trial.position + 1, phase=trial.phase, task=trial.task,
        stimulus_id=trial.stimulus_id, edit_id=trial.edit_id, show_explanation=trial.show_explanation,
        show_model_output=trial.show_model_output, expected_answer=trial.expected_answer, n_options=trial.n_options,
        block=trial.block, feedback=trial.feedback, options=trial.options)
    Participant.objects.filter(pk=trial.participant_id).update(n_trials=F("n_trials") + 1)
    return True


def trial_mark_served(*, trial: Trial) -> None:
    """Record when the trial was first served (kept on later fetches: server_rt_ms counts from it)."""
    if trial.served_at is None:
        now = timezone.now()
        Trial.objects.filter(pk=trial.pk, served_at__isnull=True).update(served_at=now)
        trial.served_at = now
