"""Every operation of the OpenAPI schema, fuzzed with schemathesis in-process: no request, however
malformed, gets a server error, and what the API answers conforms to its schema.

The schema is drf-spectacular's (the one /api/schema/ serves), the requests go through the
project's WSGI application inside the test's transaction. Two contexts:
- the participant API as an enrolled browser of a live study (its session cookie and CSRF token),
  walked first to the step each operation belongs to, so generated input reaches the services and
  not only the authentication and the step check; most generated study and trial ids are replaced
  by the real ones (the rest stay, for the 401/404 paths);
- the staff API as a superuser, with a launched study that has participants and answers.
Seeded and derandomized: CI runs the same requests every time.
"""
from __future__ import annotations

import traceback
import uuid
import zlib
from collections import Counter
from urllib.parse import unquote

import pytest
import schemathesis
from django.conf import settings
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections
from django.test import Client
from django.urls import Resolver404, resolve
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from studyapp.models import Participant, Study, Trial
from studyapp.selectors.participation import participant_current_trial
from tests.export_factories import exported_study
from tests.factories import SMALL_DESIGN, study_with_arms
from tests.participation_helpers import answer_body, api, enroll, live, post

pytestmark = pytest.mark.django_db

EXAMPLES = 30  # generated requests per operation (the coverage phase adds its boundary cases)
CONFIG = SchemathesisConfig.from_dict({"seed": 14, "generation": {"mode": "all", "deterministic": True}})
SCHEMA = schemathesis.openapi.from_dict(SchemaGenerator().get_schema(request=None, public=True), config=CONFIG)
participant_schema = SCHEMA.include(path_regex="^/api/participate/")
staff_schema = SCHEMA.exclude(path_regex="^/api/participate/")

# Function-scoped fixtures are intended: the study is set up once per operation and the examples
# walk on from the state the previous ones left (a participant moves on, withdraws, ...).
FUZZ = hypothesis_settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]
# drf-spectacular's own schema view answers 404 to an unknown ?format= without documenting it.
THIRD_PARTY_STATUSES = {"GET /api/schema/"}
FIGURES: dict[str, Counter] = {}


@pytest.fixture(scope="module", autouse=True)
def _figures(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if not FIGURES or reporter is None:
        return
    total = sum(sum(c.values()) for c in FIGURES.values())
    lines = [f"API fuzz: {len(FIGURES)} operations, {total} requests, "
             f"{sum(n for c in FIGURES.values() for code, n in c.items() if code >= 500)} server errors",
             *(f"  {label}: {sum(c.values())} requests, {dict(sorted(c.items()))}" for label, c in sorted(FIGURES.items()))]
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)


@pytest.fixture
def app():
    """The project's WSGI application, and the tracebacks of the exceptions it turned into 500s."""
    handler = WSGIHandler()
    handler.tracebacks = []

    def remember(**kwargs):
        handler.tracebacks.append(traceback.format_exc())

    signals.got_request_exception.connect(remember, weak=False)
    yield handler
    signals.got_request_exception.disconnect(remember)


def send(case, app, **kwargs):
    """Send the case and check the answer: never a server error; conformance wherever the request
    reached the API (a path the URLconf does not match gets Django's HTML 404 page)."""
    # Django closes the connection when a request starts and ends, which would throw away the
    # test's transaction; its own test client disconnects these handlers the same way.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    app.tracebacks.clear()
    try:
        response = case.call(app=app, **kwargs)
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)
    FIGURES.setdefault(case.operation.label, Counter())[response.status_code] += 1
    if response.status_code >= 500:
        pytest.fail(f"{case.operation.label} answered {response.status_code}:\n"
                    f"{app.tracebacks[-1] if app.tracebacks else response.text[:2000]}\n{case.as_curl_command()}")
    checks = [not_a_server_error]
    try:
        resolve(unquote(case.formatted_path))
        checks += [c for c in CONFORMANCE
                   if not (c is status_code_conformance and case.operation.label in THIRD_PARTY_STATUSES)]
    except Resolver404:
        pass
    case.validate_response(response, checks=checks)


def _mostly(value) -> bool:
    """Four generated ids in five are swapped for the real one (by a hash of the value: the same
    swaps on every run); only well-formed ones, so malformed ids still test the URLconf."""
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return zlib.crc32(str(value).encode()) % 5 != 0


# -- the participant API ------------------------------------------------------------------------

FUZZ_DESIGN = {**SMALL_DESIGN, "crowd": {"source": "prolific"},  # the link's parameters are read
               "comprehension": {"questions": [{"text": "Who do you predict?", "options": ["The truth", "The model"],
                                                "answer": 1}], "max_attempts": 10}}


def fuzz_study():
    """A study with the three completion codes a Prolific study needs."""
    study = study_with_arms()
    Study.objects.filter(pk=study.pk).update(completion_code="DONE", screened_out_code="SCREENED",
                                             failed_checks_code="FAILED")
    study.refresh_from_db()
    return study


# The step each operation is fuzzed at: the last operation the browser goes through before it.
WALK = ["participation_consent", "participation_instructions", "participation_comprehension",
        "participation_answer", "participation_questionnaire", "participation_demographics",
        "participation_debrief"]
STEP_OF = {"participation_consent": None, "participation_state": "participation_consent",
           "participation_withdraw": "participation_consent",
           "participation_instructions": "participation_consent",
           "participation_comprehension": "participation_instructions",
           "participation_current_trial": "participation_comprehension",
           "participation_answer": "participation_comprehension",
           "participation_media": "participation_comprehension",
           "participation_questionnaire": "participation_answer",
           "participation_demographics": "participation_questionnaire",
           "participation_debrief": "participation_demographics",
           "participation_completion": "participation_debrief"}


def walk_to(client, study, last: str | None) -> None:
    """Take the browser through the session up to and including ``last``."""
    client.get(f"/s/{study.public_id}/")  # the CSRF cookie
    for done in WALK[:WALK.index(last) + 1] if last else []:
        if done == "participation_consent":
            assert enroll(client, study, {"PROLIFIC_PID": "fuzz"}).status_code == 201
        elif done == "participation_comprehension":
            assert post(client, api(study, "comprehension"), {"answers": [1]}).json()["passed"]
        elif done == "participation_answer":
            while (trial := client.get(api(study, "trial"))).status_code == 200:
                post(client, api(study, f"trials/{trial.json()['trial']}/answer"), answer_body(0))
        elif done == "participation_questionnaire":
            items = client.get(api(study, "state")).json()["content"]["items"]
            post(client, api(study, "questionnaire"), {"answers": {i["id"]: 4 for i in items}})
        elif done == "participation_demographics":
            post(client, api(study, "demographics"), {"age_band": "25-34", "ml_experience": "none"})
        else:
            post(client, api(study, done.removeprefix("participation_")))
    assert client.get(api(study, "state")).status_code == (401 if last is None else 200)


@pytest.fixture
def browser(client, prepare):
    """A live study and a browser walked to the step of the operation under test (on first use)."""
    state: dict = {}

    def at(operation) -> dict:
        if not state:
            study = live(fuzz_study(), prepare, FUZZ_DESIGN)
            walk_to(client, study, STEP_OF[operation.definition.raw["operationId"]])
            state.update(study=study, cookies={k: v.value for k, v in client.cookies.items()},
                         participant=Participant.objects.filter(study=study).first())
        return state

    return at


def _real_ids(case, state) -> None:
    params = case.path_parameters
    if not params:
        return
    if "study" in params and _mostly(params["study"]):
        params["study"] = str(state["study"].public_id)
    if "trial" in params and _mostly(params["trial"]) and state["participant"] is not None:
        participant = state["participant"]
        trial = (participant_current_trial(participant=participant)
                 or Trial.objects.filter(participant=participant).order_by("-position").first())
        params["trial"] = str(trial.public_id)
    if "slot" in params:  # the real slots half the time (a tabular study has an aid image)
        params["slot"] = ("input", "aid", "edit", "option-0", params["slot"], params["slot"],
                          params["slot"], params["slot"])[zlib.crc32(str(params["slot"]).encode()) % 8]


@pytest.mark.slow
@participant_schema.parametrize()
@FUZZ
def test_the_participant_api_never_answers_with_a_server_error(case, app, browser):
    state = browser(case.operation)
    _real_ids(case, state)
    cookies = state["cookies"]
    send(case, app, cookies=cookies, headers={"X-CSRFToken": cookies.get(settings.CSRF_COOKIE_NAME, "")})


# -- the staff API ------------------------------------------------------------------------------

@pytest.fixture
def superuser_session(django_user_model):
    """A superuser's session cookie and a launched study with participants and answers (on first use)."""
    state: dict = {}

    def at() -> dict:
        if not state:
            state["study"] = exported_study(launch=True).study
            client = Client()
            client.force_login(django_user_model.objects.create_user(
                username="fuzz", password="pw-123456789", is_staff=True, is_superuser=True))
            state["cookies"] = {k: v.value for k, v in client.cookies.items()}
        return state

    return at


@pytest.mark.slow
@staff_schema.parametrize()
@FUZZ
def test_the_staff_api_never_answers_with_a_server_error(case, app, superuser_session):
    state = superuser_session()
    params = case.path_parameters or {}
    if isinstance(params.get("id"), int) and zlib.crc32(str(params["id"]).encode()) % 5:
        params["id"] = state["study"].pk
    send(case, app, cookies=state["cookies"])


# -- regressions: what the fuzzer found, in plain words ------------------------------------------

def test_every_participant_operation_documents_its_answers_without_a_session_or_a_csrf_token():
    undocumented = []
    for path, operations in SCHEMA.raw_schema["paths"].items():
        if not path.startswith("/api/participate/"):
            continue
        for method, operation in operations.items():
            # Anyone may agree to take part (no 401); consent also answers an unknown study and a flood.
            expected = ({"403", "404", "422", "429"} if operation["operationId"] == "participation_consent"
                        else {"401", "403"} if method == "post" else {"401"})
            undocumented += [f"{method.upper()} {path}: {code}" for code in expected - set(operation["responses"])]
    assert undocumented == []


def test_another_studys_path_answers_401_in_words_and_an_unknown_study_404(client, prepare):
    study = live(fuzz_study(), prepare, FUZZ_DESIGN)
    walk_to(client, study, "participation_consent")
    reply = client.get(f"/api/participate/{uuid.uuid4()}/state")
    assert reply.status_code == 401 and "open the study link" in reply.json()["detail"]
    reply = post(client, f"/api/participate/{uuid.uuid4()}/consent", {"agree": True})
    assert reply.status_code == 404 and reply.json() == {"detail": "Not found."}
