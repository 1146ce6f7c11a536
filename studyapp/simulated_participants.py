"""Simulated participants: a client that takes part in a study through the real participant API.

Used by ``manage.py simulate_participants`` (pilots before launch, the demo's filled study, load
tests) and by ``benchmarks/participants.py`` (the load generator). Every request goes through the
same URLs, CSRF checks, session cookie and services as a browser's; nothing is written behind the
API's back.

The API never tells anyone the right answer before they answer (that is the point), so a
simulated participant that should answer at a given accuracy asks an *oracle* that reads the
study's database (``DatabaseOracle``): the command runs where the database is. The load generator
runs without one and answers at random.

Transports: ``DjangoTransport`` calls the WSGI application in-process (the embedded demo, tests);
``HttpTransport`` speaks HTTP to a running server (``--base-url``), with a cookie jar like a
browser's.
"""
from __future__ import annotations

import http.cookiejar
import json
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
ML_EXPERIENCE = ("none", "some (a course or tutorial)", "practitioner")
MAX_STEPS = 10_000  # a runaway loop guard: no study has this many trials


@dataclass
class Reply:
    status: int
    body: dict | bytes


@dataclass
class Timings:
    """Latency in seconds per operation, for the benchmark."""

    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, name: str, seconds: float) -> None:
        self.samples[name].append(seconds)


class DjangoTransport:
    """In-process: Django's test client over the WSGI handler (no network, real middleware)."""

    def __init__(self) -> None:
        from django.test import Client

        self.client = Client(enforce_csrf_checks=True, HTTP_HOST="localhost")

    def _csrf(self) -> dict:
        token = self.client.cookies.get("csrftoken")
        return {"HTTP_X_CSRFTOKEN": token.value} if token else {}

    def get(self, path: str) -> Reply:
        response = self.client.get(path)
        return Reply(response.status_code, _body(response.content, response.get("Content-Type", "")))

    def post(self, path: str, payload: dict | None) -> Reply:
        response = self.client.post(path, data=json.dumps(payload or {}), content_type="application/json",
                                    **self._csrf())
        return Reply(response.status_code, _body(response.content, response.get("Content-Type", "")))


class HttpTransport:
    """HTTP to a running server, with its own cookie jar (one per simulated participant)."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.timeout = timeout

    def _csrf(self) -> dict:
        token = next((c.value for c in self.jar if c.name == "csrftoken"), None)
        return {"X-CSRFToken": token, "Referer": self.base_url + "/"} if token else {}

    def _send(self, request: urllib.request.Request) -> Reply:
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                return Reply(response.status, _body(response.read(), response.headers.get("Content-Type", "")))
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, _body(exc.read(), exc.headers.get("Content-Type", "")))

    def get(self, path: str) -> Reply:
        return self._send(urllib.request.Request(self.base_url + path))

    def post(self, path: str, payload: dict | None) -> Reply:
        request = urllib.request.Request(self.base_url + path, data=json.dumps(payload or {}).encode(), method="POST",
                                         headers={"Content-Type": "application/json", **self._csrf()})
        return self._send(request)


def _body(content: bytes, content_type: str) -> dict | bytes:
    if content_type.startswith("application/json"):
        return json.loads(content or b"{}")
    return content


class DatabaseOracle:
    """Knows what the API hides: the arm and the right answer of a trial (simulation only)."""

    def __init__(self, study) -> None:
        self.study = study

    def trial(self, trial_public_id: str) -> tuple[str, int | None]:
        from studyapp.models import Trial

        row = Trial.objects.filter(public_id=trial_public_id).values_list(
            "participant__arm__name", "expected_answer").get()
        return row[0], row[1]

    def comprehension_answers(self) -> list[int]:
        from studyapp.selectors.participation import study_design

        return [q.answer for q in study_design(study=self.study).comprehension.questions]


class SimulationError(RuntimeError):
    pass


@dataclass
class Outcome:
    code: str
    outcome: str
    answers: int
    arm: str | None


def _timed(timings: Timings | None, name: str, call):
    started = time.perf_counter()
    reply = call()
    if timings is not None:
        timings.add(name, time.perf_counter() - started)
    return reply


def _expect(reply: Reply, *codes: int, what: str) -> dict:
    if reply.status not in codes:
        raise SimulationError(f"{what}: HTTP {reply.status} {reply.body!r:.300}")
    return reply.body if isinstance(reply.body, dict) else {}


def run_participant(*, transport, study_public_id: str, rng: np.random.Generator, token: str | None = None,
                    accuracy: dict[str, float] | None = None, default_accuracy: float = 0.7,
                    oracle: DatabaseOracle | None = None, think_seconds: float = 0.0,
                    timings: Timings | None = None, params: dict | None = None, fetch_media: bool = False) -> Outcome:
    """One simulated participant from the study link to the completion code."""
    api = f"/api/participate/{study_public_id}/"
    landing = _timed(timings, "landing", lambda: transport.get(f"/s/{study_public_id}/"))  # sets the CSRF cookie
    if landing.status != 200:  # a pilot on a study that is not live: its link is not public yet
        transport.get(api + "state")
    payload = {"agree": True, "params": params or {}, **({"simulation": token} if token else {})}
    state = _expect(_timed(timings, "consent", lambda: transport.post(api + "consent", payload)), 200, 201,
                    what="consent")
    answers, arm = 0, None
    for _ in range(MAX_STEPS):
        step = state["step"]
        if step == "instructions":
            time.sleep(state["content"].get("seconds_left", 0))
            state = _expect(transport.post(api + "instructions", None), 200, what="instructions")
        elif step == "comprehension":
            right = oracle.comprehension_answers() if oracle else [0] * len(state["content"]["questions"])
            state = _expect(transport.post(api + "comprehension", {"answers": right}), 200, what="comprehension")["state"]
        elif step == "trials":
            reply = _timed(timings, "trial", lambda: transport.get(api + "trial"))
            if reply.status == 409:  # every trial is answered: on to the next step
                state = _expect(transport.get(api + "state"), 200, what="state")
                continue
            trial = _expect(reply, 200, what="trial")
            if fetch_media and "image" in trial["input"]:
                _timed(timings, "media", lambda: transport.get(trial["input"]["image"]))
            if think_seconds:
                time.sleep(float(rng.exponential(think_seconds)))
            arm_name, expected = oracle.trial(trial["trial"]) if oracle else (None, None)
            arm = arm_name or arm
            body = _answer(trial, rng=rng, expected=expected,
                           p=(accuracy or {}).get(arm_name, default_accuracy))
            path = api + f"trials/{trial['trial']}/answer"
            _expect(_timed(timings, "answer", lambda: transport.post(path, body)), 200, 201, what="answer")
            answers += 1
        elif step == "questionnaire":
            ratings = {item["id"]: int(rng.integers(1, 8)) for item in state["content"]["items"]}
            state = _expect(transport.post(api + "questionnaire", {"answers": ratings}), 200, what="questionnaire")
        elif step == "demographics":
            state = _expect(transport.post(api + "demographics", {
                "age_band": AGE_BANDS[int(rng.integers(len(AGE_BANDS)))],
                "ml_experience": ML_EXPERIENCE[int(rng.integers(len(ML_EXPERIENCE)))]}), 200, what="demographics")
        elif step == "debrief":
            state = _expect(transport.post(api + "debrief", None), 200, what="debrief")
        elif step == "done":
            done = _expect(transport.get(api + "completion"), 200, what="completion")
            return Outcome(code=done["code"], outcome=done["outcome"], answers=answers, arm=arm)
        else:
            raise SimulationError(f"unexpected step {step!r}")
    raise SimulationError("the session did not end")


def _answer(trial: dict, *, rng: np.random.Generator, expected: int | None, p: float) -> dict:
    n = len(trial["options"])
    if trial.get("model_output") is not None and trial["task"] == "forward":
        choice = int(trial["model_output"]["value"])  # learning: the output is on screen
    elif expected is not None and "reading carefully" in trial["question"]:
        choice = expected if rng.random() < 0.97 else int(rng.integers(n))  # attention check
    elif expected is not None:
        right = rng.random() < p
        wrong = [o for o in range(n) if o != expected]
        choice = expected if right or not wrong else int(rng.choice(wrong))
    else:
        choice = int(rng.integers(n))
    rt = int(min(120_000, rng.lognormal(np.log(2500), 0.5)))
    # Fresh random keys (not from the seeded rng): keys are unique across every study and run.
    body = {"idempotency_key": str(uuid.uuid4()), "answer": choice,
            "client_rt_ms": rt, "events": []}
    if trial.get("confidence"):
        sure = expected is None or choice == expected
        body["confidence"] = int(np.clip(rng.normal(5.2 if sure else 3.8, 1.2), 1, 7).round())
    return body
