"""The participant API: one view per operation, thin (parse, authorize, call a service).

Every response carries ``Cache-Control: no-store`` (no shared cache or back button may replay an
earlier step); errors say what is wrong: 409 for a step or answer conflict, 422 for malformed or
out-of-range values, 404 for anything not the participant's own.
"""
from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user
from django.core import signing
from django.middleware.csrf import get_token
from django.http import Http404, HttpResponse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotAuthenticated, ParseError, Throttled
from rest_framework.renderers import JSONRenderer
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from studyapp.api import serializers as s
from studyapp.api.authentication import (IsParticipant, ParticipantAuthentication, enforce_csrf,
                                         session_participant_id, session_remember)
from studyapp.api.throttles import AnswerThrottle, EntryThrottle
from studyapp.json_input import BoundedJSONParser
from studyapp.models import Participant, Study
from studyapp.selectors.participation import (participant_current_trial, participant_progress, study_design,
                                              trial_content, trial_media_file)
from studyapp.services import participants as svc
from studyapp.services.errors import ServiceError
from studyapp.services.participants import ParticipationError, StepConflict
from studyapp.services.responses import Answer, AnswerConflict, response_record, trial_mark_served

SIMULATION_SALT = "studyapp.simulated-participants"
SIMULATION_MAX_AGE = 7 * 24 * 3600
Step = Participant.Step
NO_SESSION = OpenApiResponse(s.ErrorOutput, description="No session for this study in this browser")
ERRORS = {401: NO_SESSION,
          404: OpenApiResponse(s.ErrorOutput, description="Not this participant's"),
          409: OpenApiResponse(s.ErrorOutput, description="Not at this step, or the answer conflicts"),
          422: OpenApiResponse(s.ErrorOutput, description="Malformed or out-of-range values")}
# Unsafe methods are CSRF-checked (authentication.enforce_csrf): 403 without the token.
POST_ERRORS = {**ERRORS, 403: OpenApiResponse(s.ErrorOutput, description="CSRF check failed")}
THROTTLED = OpenApiResponse(s.ErrorOutput, description="Too many requests; send the same request again later")


def simulation_token(*, study: Study, allow_live: bool) -> str:
    """For manage.py simulate_participants: marks the participants it enrolls as simulated."""
    return signing.dumps({"study": str(study.public_id), "allow_live": allow_live}, salt=SIMULATION_SALT)


def _simulation(token: str | None, study: Study) -> tuple[bool, bool]:
    if not token:
        return False, False
    try:
        data = signing.loads(token, salt=SIMULATION_SALT, max_age=SIMULATION_MAX_AGE)
    except signing.BadSignature:
        raise ServiceError("The simulation token is not valid for this server.") from None
    if data.get("study") != str(study.public_id):
        raise ServiceError("The simulation token is for another study.")
    return True, bool(data.get("allow_live"))


def _problems(exc: ServiceError) -> list[str]:
    return [str(m) for m in exc.messages]


class ParticipantView(APIView):
    authentication_classes = [ParticipantAuthentication]
    permission_classes = [IsParticipant]
    # JSON only: no browsable HTML API for participants, no form or multipart bodies.
    renderer_classes = [JSONRenderer]
    parser_classes = [BoundedJSONParser]

    @property
    def participant(self) -> Participant:
        return self.request.auth

    def design(self):
        return study_design(study=self.participant.study)

    def permission_denied(self, request, message=None, code=None):
        # DRF answers a missing session with its generic "Authentication credentials were not
        # provided."; a participant needs to know what to do (IsParticipant.message).
        if request.authenticators and not request.successful_authenticator:
            raise NotAuthenticated(message)
        super().permission_denied(request, message=message, code=code)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if settings.CSRF_COOKIE_NAME not in request.COOKIES:
            get_token(request._request)  # the reply carries the CSRF cookie the next POST needs
        add_never_cache_headers(response)
        response["Cache-Control"] = "no-store, private, max-age=0"
        return response

    def handle_exception(self, exc):
        if isinstance(exc, (StepConflict, AnswerConflict)):
            body = {"detail": _problems(exc)[0], "problems": _problems(exc)}
            if isinstance(exc, AnswerConflict) and exc.stored is not None:
                body["stored"] = s.AnswerOutput(exc.stored).data
            return Response(body, status=status.HTTP_409_CONFLICT)
        if isinstance(exc, Throttled):
            response = super().handle_exception(exc)  # 429 with Retry-After
            response.data = {"detail": f"Too many requests; try again in {exc.wait or 1:.0f} s. Nothing was lost: "
                                       "send the same request again then."}
            return response
        if isinstance(exc, ParseError):
            return Response({"detail": f"The request body is not valid JSON: {exc.detail}"},
                            status=status.HTTP_422_UNPROCESSABLE_ENTITY)
        if isinstance(exc, ParticipationError):
            return Response({"detail": _problems(exc)[0], "reason": exc.reason}, status=status.HTTP_403_FORBIDDEN)
        if isinstance(exc, ServiceError):
            if getattr(exc, "code", None) == "not_found":
                return Response({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
            return Response({"detail": "; ".join(_problems(exc)), "problems": _problems(exc)},
                            status=status.HTTP_422_UNPROCESSABLE_ENTITY)
        return super().handle_exception(exc)

    def parsed(self, serializer_class):
        serializer = serializer_class(data=self.request.data)
        if not serializer.is_valid():
            problems = [f"{field}: {' '.join(str(m) for m in (msgs if isinstance(msgs, list) else [msgs]))}"
                        for field, msgs in serializer.errors.items()]
            raise ServiceError(problems)
        return serializer.validated_data

    def state(self) -> dict:
        return session_state(participant=self.participant, design=self.design())


def session_state(*, participant: Participant, design) -> dict:
    """The current step and what it shows (the page renders from this)."""
    step = participant.step
    study = participant.study
    content: dict = {}
    if step == Step.INSTRUCTIONS:
        svc.participant_instructions_shown(participant=participant)
        read = (timezone.now() - participant.instructions_shown_at).total_seconds()
        content = {"text": study.instructions, "min_seconds": design.min_instruction_seconds,
                   "seconds_left": max(0, int(design.min_instruction_seconds - read + 0.999))}
    elif step == Step.COMPREHENSION:
        content = {"questions": [{"text": q.text, "options": q.options} for q in design.comprehension.questions],
                   "instructions": study.instructions,
                   "attempts_left": design.comprehension.max_attempts - participant.comprehension_attempts}
    elif step == Step.QUESTIONNAIRE:
        content = {"items": [{"id": q.id, "text": q.text, "anchors": list(q.anchors)} for q in design.questionnaire]}
    elif step == Step.DEMOGRAPHICS:
        content = {"age_bands": list(svc.AGE_BANDS), "ml_experience": list(svc.ML_EXPERIENCE)}
    elif step == Step.DEBRIEF:
        content = {"text": study.debrief_text}
    elif step == Step.DONE:
        content = _completion(participant, design)
    return {"step": step, "status": participant.status, "progress": participant_progress(participant=participant),
            "content": content}


def _completion(participant: Participant, design) -> dict:
    outcome = {Participant.Status.COMPLETED: "completed", Participant.Status.SCREENED_OUT: "screened_out",
               Participant.Status.FAILED_CHECKS: "failed_checks", Participant.Status.WITHDRAWN: "withdrawn",
               }.get(participant.status, participant.status)
    result = {"outcome": outcome, "code": participant.completion_code,
              "redirect_url": svc.completion_redirect(participant=participant, design=design)}
    if outcome == "withdrawn" and participant.study.debrief_text.strip():
        # Someone who withdraws mid-study may have seen a manipulated explanation: they are
        # debriefed too (the debrief step itself is only reached by those who finish).
        result["debrief"] = participant.study.debrief_text
    return result


class ConsentView(ParticipantView):
    """I agree (enrolls: participant, arm and trial plan at once) or I decline (nothing stored)."""

    permission_classes = [AllowAny]
    throttle_classes = [EntryThrottle]

    def get_throttles(self):
        # Only new enrollments count: resuming an enrolled browser, declining, or a simulated
        # participant (its token is checked before enrolling) is not limited.
        if isinstance(self.request.auth, Participant) or not isinstance(self.request.data, dict):
            return []
        if not self.request.data.get("agree") or self.request.data.get("simulation"):
            return []
        return super().get_throttles()

    @extend_schema(request=s.ConsentInput, responses={
        201: s.StateOutput, 200: s.StateOutput, 422: s.ErrorOutput, 429: THROTTLED,
        403: OpenApiResponse(s.ErrorOutput, description="Not open to this browser (the reason says why), or the "
                                                        "CSRF check failed"),
        404: OpenApiResponse(s.ErrorOutput, description="No such study")}, operation_id="participation_consent")
    def post(self, request, study):
        enforce_csrf(request._request)
        target = Study.objects.filter(public_id=study).first()
        if target is None:
            raise Http404
        data = self.parsed(s.ConsentInput)
        if not data["agree"]:
            return Response({"step": "declined", "status": "declined", "progress": {}, "content": {}})
        if isinstance(request.auth, Participant):  # this browser is enrolled already: resume
            participant = request.auth
            return Response(session_state(participant=participant, design=study_design(study=participant.study)))
        simulated, allow_live = _simulation(data.get("simulation"), target)
        participant, resumed = browser_enroll(request._request, study=target, params=data.get("params") or {},
                                              simulated=simulated, allow_live_simulation=allow_live,
                                              consent_shown=data.get("consent_version") or None)
        return Response(session_state(participant=participant, design=study_design(study=target)),
                        status=status.HTTP_200_OK if resumed else status.HTTP_201_CREATED)


class StateView(ParticipantView):
    @extend_schema(responses={200: s.StateOutput, 401: NO_SESSION}, operation_id="participation_state")
    def get(self, request, study):
        svc.participant_touch(participant=self.participant)
        return Response(self.state())


class InstructionsView(ParticipantView):
    @extend_schema(request=None, responses={200: s.StateOutput, **POST_ERRORS}, operation_id="participation_instructions")
    def post(self, request, study):
        svc.participant_instructions_done(participant=self.participant, design=self.design())
        return Response(self.state())


class ComprehensionView(ParticipantView):
    @extend_schema(request=s.ComprehensionInput, responses={200: s.ComprehensionOutput, **POST_ERRORS},
                   operation_id="participation_comprehension")
    def post(self, request, study):
        data = self.parsed(s.ComprehensionInput)
        result = svc.participant_comprehension_answer(participant=self.participant, design=self.design(),
                                                      answers=data["answers"])
        return Response({**result, "state": self.state()})


class CurrentTrialView(ParticipantView):
    @extend_schema(responses={200: s.TrialOutput, **ERRORS}, operation_id="participation_current_trial")
    def get(self, request, study):
        participant = self.participant
        if participant.step != Step.TRIALS:
            raise StepConflict(f"The session is at '{participant.step}', not at the trials.")
        trial = participant_current_trial(participant=participant)
        if trial is None:
            raise StepConflict("All trials are answered.")
        trial_mark_served(trial=trial)
        svc.participant_touch(participant=participant)
        # The dict as built (TrialOutput documents it): re-serializing it cost more than building it.
        return Response(trial_content(participant=participant, trial=trial, design=self.design(),
                                      total=participant.n_trials))


class AnswerView(ParticipantView):
    throttle_classes = [AnswerThrottle]

    @extend_schema(request=s.AnswerInput, responses={201: s.AnswerOutput, 200: s.AnswerOutput, **POST_ERRORS,
                                                      429: THROTTLED},
                   operation_id="participation_answer")
    def post(self, request, study, trial):
        data = self.parsed(s.AnswerInput)
        answer = Answer(idempotency_key=data["idempotency_key"], answer=data["answer"],
                        confidence=data.get("confidence"), client_rt_ms=data["client_rt_ms"],
                        client_sent_at=data.get("client_sent_at"),
                        events=tuple(dict(e) for e in data.get("events", [])),
                        client=dict(data["client"]) if data.get("client") else None)
        reply, created = response_record(participant=self.participant, trial_public_id=trial, answer=answer,
                                         design=self.design())
        return Response(s.AnswerOutput(reply).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class QuestionnaireView(ParticipantView):
    @extend_schema(request=s.QuestionnaireInput, responses={200: s.StateOutput, **POST_ERRORS},
                   operation_id="participation_questionnaire")
    def post(self, request, study):
        data = self.parsed(s.QuestionnaireInput)
        svc.participant_questionnaire(participant=self.participant, design=self.design(), answers=data["answers"])
        return Response(self.state())


class DemographicsView(ParticipantView):
    @extend_schema(request=s.DemographicsInput, responses={200: s.StateOutput, **POST_ERRORS},
                   operation_id="participation_demographics")
    def post(self, request, study):
        data = self.parsed(s.DemographicsInput)
        svc.participant_demographics(participant=self.participant, **data)
        return Response(self.state())


class DebriefView(ParticipantView):
    @extend_schema(request=None, responses={200: s.StateOutput, **POST_ERRORS}, operation_id="participation_debrief")
    def post(self, request, study):
        svc.participant_complete(participant=self.participant, design=self.design())
        return Response(self.state())


class WithdrawView(ParticipantView):
    """Withdraw consent: the session ends here."""

    @extend_schema(request=None, responses={200: s.StateOutput, **POST_ERRORS}, operation_id="participation_withdraw")
    def post(self, request, study):
        svc.participant_withdraw(participant=self.participant)
        return Response(self.state())


class CompletionView(ParticipantView):
    @extend_schema(responses={200: s.CompletionOutput, **ERRORS}, operation_id="participation_completion")
    def get(self, request, study):
        if self.participant.step != Step.DONE:
            raise StepConflict(f"The session is at '{self.participant.step}'; finish it first.")
        return Response(_completion(self.participant, self.design()))


class MediaView(ParticipantView):
    """Image bytes of the participant's own trial: opaque URL, no file name, no metadata, not cached."""

    @extend_schema(responses={(200, "image/png"): bytes, 401: NO_SESSION, 404: s.ErrorOutput},
                   operation_id="participation_media")
    def get(self, request, study, trial, slot):
        media = trial_media_file(participant=self.participant, trial_public_id=trial, slot=slot)
        if media is None:
            raise Http404
        with media.open("rb") as handle:  # small PNGs; no FileResponse: it would name the file
            response = HttpResponse(handle.read(), content_type="image/png")
        response["X-Content-Type-Options"] = "nosniff"
        return response


def browser_enroll(request, *, study: Study, params: dict, simulated: bool = False,
                   allow_live_simulation: bool = False, consent_shown: str | None = None) -> tuple[Participant, bool]:
    """"I agree" from this browser, by the page or the API: enroll (or resume) and bind the
    participant to the browser's session. Raises ParticipationError with the polite page's reason."""
    user = get_user(request)  # the logged-in user (under DRF, request.user is the participant's)
    if not simulated and user.is_authenticated and user.is_staff:
        # Staff previews never create participants: they would be counted and analysed.
        raise ParticipationError("You are logged in as staff: previews never create participants. Use a private "
                                 "window to take part, or manage.py simulate_participants.", reason="staff_preview")
    try:
        design = study_design(study=study)
    except ValueError:
        raise ParticipationError("This study is not open yet.", reason="not_open") from None
    participant, resumed = svc.participant_enroll(
        study=study, external=svc.external_ids_from(params, design=design), simulated=simulated,
        allow_live_simulation=allow_live_simulation, consent_shown=consent_shown)
    session_remember(request, study.public_id, participant)
    participant.study = study
    return participant, resumed


def participant_session_for(request, study: Study) -> Participant | None:
    """The participant this browser holds for ``study`` (for the HTML pages)."""
    participant_id = session_participant_id(request, study.public_id)
    if participant_id is None:
        return None
    return Participant.objects.filter(public_id=participant_id, study=study).first()
