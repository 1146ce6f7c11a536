"""A participant's session: enrollment, then steps that only move forward.

Enrollment (``participant_enroll``) creates the participant, their arm and their trial plan in
one transaction under the study row lock (see ``studyapp.services.assignment``). Every later
status or step change is a conditional UPDATE (``WHERE step = <expected>``), so a resent request
or a second tab cannot move a participant twice; the loser gets a ``StepConflict`` that names
where the participant really is. Lock order, everywhere: study, then participant, then trial.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from studyapp.design import StudyDesign
from studyapp.models import Participant, QuestionnaireAnswer, Study
from studyapp.selectors.participation import participant_failed_checks, study_design
from studyapp.services.assignment import arm_assign, study_is_full
from studyapp.services.errors import ServiceError
from studyapp.services.trial_plans import trial_plan_create

Status, Step = Participant.Status, Participant.Step
PROLIFIC_COMPLETE = "https://app.prolific.com/submissions/complete?cc={code}"
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+", "prefer not to say")
ML_EXPERIENCE = ("none", "some (a course or tutorial)", "practitioner", "researcher", "prefer not to say")


class ParticipationError(ServiceError):
    """Why a person cannot take part now; ``reason`` picks the polite page to show."""

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason


class StepConflict(ServiceError):
    """A request for a step the participant is not at (a resent or stale request)."""


@dataclass(frozen=True)
class ExternalIds:
    """What the crowd platform put in the link (PROLIFIC_PID, STUDY_ID, SESSION_ID, ...)."""

    external_id: str = ""
    source: str = Participant.Source.DIRECT
    params: dict = field(default_factory=dict)


def external_ids_from(query: dict, *, design: StudyDesign) -> ExternalIds:
    crowd = design.crowd
    if crowd.source == "prolific":
        params = {k: str(query.get(k, ""))[:128] for k in ("PROLIFIC_PID", "STUDY_ID", "SESSION_ID") if query.get(k)}
        return ExternalIds(params.get("PROLIFIC_PID", ""), Participant.Source.PROLIFIC, params)
    if crowd.source in ("sona", "generic"):
        value = str(query.get(crowd.id_parameter, ""))[:128]
        return ExternalIds(value, crowd.source, {crowd.id_parameter: value} if value else {})
    return ExternalIds()


def _abandonment_cutoff(design: StudyDesign, now: dt.datetime) -> dt.datetime:
    return now - dt.timedelta(minutes=design.abandonment_minutes)


def participants_release_abandoned(*, study: Study, design: StudyDesign, now: dt.datetime | None = None) -> int:
    """Mark participants not seen within the abandonment timeout as abandoned (their slot refills).

    A conditional UPDATE: only rows still consented/in progress and still stale change.
    """
    now = now or timezone.now()
    return Participant.objects.filter(
        study=study, status__in=(Status.CONSENTED, Status.IN_PROGRESS),
        last_seen_at__lt=_abandonment_cutoff(design, now)).update(status=Status.ABANDONED)


def consent_version(study: Study) -> str:
    """The version of the consent text a person reads: the first 12 hex digits of its SHA-256.
    Stored with each participant, so an amended text (an ethics amendment) shows who agreed to what."""
    return hashlib.sha256(study.consent_text.encode()).hexdigest()[:12]


def participant_enroll(*, study: Study, external: ExternalIds, simulated: bool = False,
                       allow_live_simulation: bool = False, consent_shown: str | None = None) -> tuple[Participant, bool]:
    """Enroll (or resume) after the person pressed "I agree"; returns (participant, resumed).

    Contract: one transaction holding the study row lock for its whole length; the participant,
    their arm (balanced, ``arm_assign``) and their trial plan are created together or not at all.
    The same external id resumes or is refused per ``design.crowd.same_id_elsewhere``; a database
    constraint (study, external_id) backs this up.
    """
    with transaction.atomic():
        # of=self: the model is an outer join (a study imported from elsewhere has none), which
        # PostgreSQL cannot lock; the study row is the lock this contract needs.
        study = Study.objects.select_for_update(of=("self",)).select_related("model").get(pk=study.pk)
        _check_open(study, simulated=simulated, allow_live_simulation=allow_live_simulation)
        version = consent_version(study)
        if consent_shown and consent_shown != version:
            raise ParticipationError("The information and consent text changed after you opened this page. Please "
                                     "read it again before you agree.", reason="consent_changed")
        design = study_design(study=study)
        now = timezone.now()
        participants_release_abandoned(study=study, design=design, now=now)
        if external.external_id:
            existing = Participant.objects.filter(study=study, external_id=external.external_id).first()
            if existing is not None:
                if design.crowd.same_id_elsewhere == "refuse" or existing.status not in (
                        Status.CONSENTED, Status.IN_PROGRESS):
                    raise ParticipationError("You have already taken part in this study with this id.",
                                             reason="already_taken_part")
                Participant.objects.filter(pk=existing.pk).update(last_seen_at=now)
                return existing, True
        cutoff = _abandonment_cutoff(design, now)
        if not simulated and (study.ingest_paused or not study.arms.filter(ingest_paused=False).exists()):
            raise ParticipationError("This study is paused and takes no new participants right now.", reason="paused")
        if not simulated and study_is_full(study=study, active_since=cutoff):
            raise ParticipationError("This study has all the participants it needs.", reason="full")
        arm, record = arm_assign(study=study, simulated=simulated, active_since=cutoff)
        participant = _participant_start(
            study=study, arm=arm, design=design, now=now, consent_version=version, external_id=external.external_id,
            source=external.source, source_params=external.params, simulated=simulated, assignment=record)
        return participant, False


def _participant_start(*, study: Study, arm, design: StudyDesign, now: dt.datetime, **fields) -> Participant:
    """A participant who has just agreed, at the instructions, with their trial plan (inside the
    caller's transaction)."""
    participant = Participant.objects.create(
        study=study, arm=arm, status=Status.CONSENTED, consented_at=now, last_seen_at=now,
        plan_seed=secrets.randbits(62), step=Step.INSTRUCTIONS, **fields)
    participant.study = study
    trial_plan_create(participant=participant, design=design)
    return participant


def _check_open(study: Study, *, simulated: bool, allow_live_simulation: bool) -> None:
    if study.state == Study.State.CLOSED:
        raise ParticipationError("This study has closed.", reason="closed")
    if simulated:
        if study.state == Study.State.READY or (study.state == Study.State.LIVE and allow_live_simulation):
            return
        raise ParticipationError("Simulated participants run on a ready study (a pilot), or on a live one only "
                                 "when allowed explicitly.", reason="not_open")
    if study.state != Study.State.LIVE:
        raise ParticipationError("This study is not open yet.", reason="not_open")


STEP_ORDER = list(Step.values)


def _past(participant: Participant, step: str) -> bool:
    """The participant (as read for this request) is beyond ``step``: a resent request for it
    finds the work done. A stale read only makes the conditional update below refuse."""
    return STEP_ORDER.index(participant.step) > STEP_ORDER.index(step)


def _advance(participant: Participant, *, expected: str, to: str, **fields) -> None:
    """Conditional step change; the participant object is updated to match."""
    now = timezone.now()
    changed = Participant.objects.filter(pk=participant.pk, step=expected).update(
        step=to, last_seen_at=now, **fields)
    if changed != 1:
        current = Participant.objects.filter(pk=participant.pk).values_list("step", flat=True).first()
        raise StepConflict(f"This step is done already; the session is at '{current}'.")
    participant.step, participant.last_seen_at = to, now
    for name, value in fields.items():
        setattr(participant, name, value)


def participant_instructions_shown(*, participant: Participant) -> None:
    """Start the reading clock the first time the instructions are served (kept on a refresh)."""
    if participant.instructions_shown_at is None:
        now = timezone.now()
        Participant.objects.filter(pk=participant.pk, instructions_shown_at__isnull=True).update(
            instructions_shown_at=now)
        participant.refresh_from_db(fields=["instructions_shown_at"])


def participant_instructions_done(*, participant: Participant, design: StudyDesign) -> None:
    """Checked on the server: the minimum reading time since the instructions were first served."""
    if _past(participant, Step.INSTRUCTIONS):
        return  # a resend after the reply was lost: already done
    if participant.instructions_shown_at is None:
        raise StepConflict("Read the instructions first.")
    elapsed = timezone.now() - participant.instructions_shown_at
    if elapsed.total_seconds() < design.min_instruction_seconds:
        left = design.min_instruction_seconds - int(elapsed.total_seconds())
        raise StepConflict(f"Please take {left} more seconds to read the instructions.")
    nxt = Step.COMPREHENSION if design.comprehension.questions else Step.TRIALS
    _advance(participant, expected=Step.INSTRUCTIONS, to=nxt, instructions_ms=int(elapsed.total_seconds() * 1000),
             **({"status": Status.IN_PROGRESS} if nxt == Step.TRIALS else {}))


def participant_comprehension_answer(*, participant: Participant, design: StudyDesign, answers: list[int]) -> dict:
    """One attempt at the quiz. Passing starts the trials; the last failed attempt screens out
    (never "failed checks": comprehension cannot be grounds for rejection on Prolific)."""
    questions = design.comprehension.questions
    if len(answers) != len(questions):
        raise ServiceError(f"Answer all {len(questions)} questions (got {len(answers)} answers).")
    with transaction.atomic():
        locked = Participant.objects.select_for_update().get(pk=participant.pk)
        if locked.step != Step.COMPREHENSION:
            raise StepConflict(f"The quiz is done already; the session is at '{locked.step}'.")
        attempts = locked.comprehension_attempts + 1
        wrong = [i + 1 for i, (q, a) in enumerate(zip(questions, answers)) if q.answer != a]
        if not wrong:
            _advance(locked, expected=Step.COMPREHENSION, to=Step.TRIALS, comprehension_attempts=attempts,
                     status=Status.IN_PROGRESS)
        elif attempts >= design.comprehension.max_attempts:
            _advance(locked, expected=Step.COMPREHENSION, to=Step.DONE, comprehension_attempts=attempts,
                     status=Status.SCREENED_OUT, completed_at=timezone.now(),
                     completion_code=locked.study.screened_out_code)
        else:
            Participant.objects.filter(pk=locked.pk).update(comprehension_attempts=attempts,
                                                            last_seen_at=timezone.now())
    participant.refresh_from_db()
    return {"passed": not wrong, "wrong_questions": wrong, "attempts": attempts,
            "attempts_left": max(0, design.comprehension.max_attempts - attempts)}


def participant_trials_finished(*, participant: Participant) -> None:
    """After the last answer (called under the participant lock by response_record)."""
    _advance(participant, expected=Step.TRIALS, to=Step.QUESTIONNAIRE)


def participant_questionnaire(*, participant: Participant, design: StudyDesign, answers: dict[str, int]) -> None:
    """All Likert ratings at once (stored once: the step moves in the same transaction)."""
    ids = [q.id for q in design.questionnaire]
    missing = [i for i in ids if i not in answers]
    unknown = [k for k in answers if k not in ids]
    bad = [k for k, v in answers.items() if k in ids and (not isinstance(v, int) or isinstance(v, bool)
                                                           or not 1 <= v <= 7)]
    if missing or unknown or bad:
        raise ServiceError([*(f"Rate '{i}' (1 to 7)." for i in missing), *(f"'{k}' is not a question here." for k in unknown),
                            *(f"'{k}' must be a whole number from 1 to 7." for k in bad)])
    nxt = Step.DEMOGRAPHICS if design.demographics else Step.DEBRIEF
    if _past(participant, Step.QUESTIONNAIRE):
        stored = dict(QuestionnaireAnswer.objects.filter(participant=participant).values_list("item", "value"))
        if stored == {i: answers[i] for i in ids}:
            return  # a resend of what is stored: stored once, same reply
        raise StepConflict("The questionnaire was already answered with other ratings.")
    with transaction.atomic():
        _advance(participant, expected=Step.QUESTIONNAIRE, to=nxt)
        QuestionnaireAnswer.objects.bulk_create([
            QuestionnaireAnswer(participant=participant, item=i, value=answers[i], idempotency_key=uuid.uuid4())
            for i in ids])


def participant_demographics(*, participant: Participant, age_band: str, ml_experience: str) -> None:
    problems = []
    if age_band not in AGE_BANDS:
        problems.append(f"Age band must be one of: {', '.join(AGE_BANDS)}.")
    if ml_experience not in ML_EXPERIENCE:
        problems.append(f"Machine-learning experience must be one of: {', '.join(ML_EXPERIENCE)}.")
    if problems:
        raise ServiceError(problems)
    answers = {"age_band": age_band, "ml_experience": ml_experience}
    if _past(participant, Step.DEMOGRAPHICS):
        participant.refresh_from_db(fields=["demographics"])
        if participant.demographics == answers:
            return  # a resend of what is stored
        raise StepConflict("The demographics were already answered differently.")
    _advance(participant, expected=Step.DEMOGRAPHICS, to=Step.DEBRIEF, demographics=answers)


def participant_complete(*, participant: Participant, design: StudyDesign) -> None:
    """Debrief read: the session ends with the code that matches the outcome."""
    if _past(participant, Step.DEBRIEF):
        return  # a resend: the session ended with its code already
    study = participant.study
    failed = participant_failed_checks(participant=participant)
    if failed >= design.attention_checks.fail_threshold and design.attention_checks.count:
        status, code = Status.FAILED_CHECKS, study.failed_checks_code
    else:
        status, code = Status.COMPLETED, study.completion_code
    _advance(participant, expected=Step.DEBRIEF, to=Step.DONE, status=status, completed_at=timezone.now(),
             completion_code=code)


def participant_withdraw(*, participant: Participant) -> None:
    """The participant withdraws consent: the session ends, nothing more is asked or stored, and
    the participant is never analysed (only completed participants are)."""
    changed = Participant.objects.filter(pk=participant.pk, status__in=(Status.CONSENTED, Status.IN_PROGRESS)).update(
        status=Status.WITHDRAWN, step=Step.DONE, last_seen_at=timezone.now(), completion_code="")
    if changed != 1:
        raise StepConflict("This session has ended already.")
    participant.refresh_from_db()


def completion_redirect(*, participant: Participant, design: StudyDesign) -> str | None:
    """Where the finished participant goes: Prolific's or SONA's completion URL with the code."""
    code = participant.completion_code
    if not code or participant.step != Step.DONE or participant.preview:  # a staff preview stays here
        return None
    if design.crowd.source == "prolific":
        return PROLIFIC_COMPLETE.format(code=quote(code, safe=""))
    if design.crowd.source == "sona" and participant.external_id:
        return design.crowd.sona_completion_url.replace("%SURVEY_CODE%", quote(participant.external_id, safe=""))
    return None


TOUCH_EVERY = dt.timedelta(seconds=30)


def participant_touch(*, participant: Participant) -> None:
    """Seen now (keeps the slot from being released as abandoned). Written at most every
    TOUCH_EVERY: the abandonment timeout is minutes, and a write per read costs every request."""
    now = timezone.now()
    if participant.last_seen_at is None or now - participant.last_seen_at >= TOUCH_EVERY:
        Participant.objects.filter(pk=participant.pk).update(last_seen_at=now)
        participant.last_seen_at = now


def participants_delete_simulated(*, study: Study) -> int:
    """Delete the study's simulated participants with their trials and answers."""
    with transaction.atomic():
        Study.objects.select_for_update().get(pk=study.pk)
        ids = list(Participant.objects.filter(study=study, simulated=True).values_list("pk", flat=True))
        QuestionnaireAnswer.objects.filter(participant_id__in=ids).delete()
        deleted, _ = Participant.objects.filter(pk__in=ids).delete()
    return len(ids)


def participant_preview_start(*, study: Study, arm, replaces: str | None = None, by: str = "") -> Participant:
    """A staff member walks through the real pages of ``arm``: a participant marked simulated and
    preview, with a trial plan like anyone's. Never counted toward targets, never in an analysis or
    an export. The preview this browser held before (``replaces``, a public id) and the earlier
    previews of this study by the same staff member (``by``, a username; abandoned in other
    browsers) are deleted, so that previews do not pile up."""
    if study.state not in (Study.State.READY, Study.State.LIVE):
        raise ServiceError(f"Preview a prepared (ready) or live study; '{study.title}' is {study.state}.")
    if arm.study_id != study.pk:
        raise ServiceError("That arm is not in this study.")
    design = study_design(study=study)
    now = timezone.now()
    with transaction.atomic():
        earlier = (Q(public_id=replaces) if replaces else Q()) | (Q(assignment__preview_by=by) if by else Q())
        if earlier:
            Participant.objects.filter(earlier, study=study, preview=True).delete()
        return _participant_start(study=study, arm=arm, design=design, now=now,
                                  consent_version=consent_version(study), simulated=True, preview=True,
                                  assignment={"preview": True, "arm": arm.name, "preview_by": by})
