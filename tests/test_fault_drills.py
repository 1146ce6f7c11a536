"""Fault drills as tests: simulated participants keep answering over HTTP while PostgreSQL is
restarted (``pg_ctl restart -m fast``), then Redis stopped and started again empty, under them;
every answer the server acknowledged is stored exactly once, every participant gets to the end,
and the app is healthy afterwards.

The stack, the crowd and the drills are benchmarks/load.py's (``DrillStack``, ``Crowd``,
``drill_postgres``, ``drill_redis``, ``stored_answers``, ``answer_integrity``): a PostgreSQL
cluster and a redis-server of the test's own (the machine's shared ones are never stopped), the
participant benchmark's live study (27 trials a participant) in it, gunicorn with 2 sync workers
and production settings. The clients are the real participant client (``run_participant``)
retrying as the participant page does (static/participant/api.js): a network error or a
408/425/429/5xx reply is sent again, the same request with the same idempotency key, after 0.5 s
doubling.

Needs initdb and pg_ctl (and runuser when run as root), redis-server and gunicorn: with CI=true a
missing one fails the test, elsewhere it is skipped with the reason. The integrity check itself is
tested first, without any server: a drill whose check could not see a lost answer proves nothing.
"""
from __future__ import annotations

import shutil
import time
from collections import Counter

import pytest

from benchmarks.common import ServiceUnavailable, private_postgres_problem
from benchmarks.load import (RETRYABLE, Crowd, DrillStack, Stored, Window, answer_integrity, drill_postgres,
                             drill_redis, stored_answers)
from tests.celery_processes import ROOT, require

PARTICIPANTS = 20
THINK = 0.1  # mean seconds before each answer: the run stays short, and many requests meet the fault
REDIS_DOWN = 1.5  # seconds Redis stays stopped (PostgreSQL: a plain pg_ctl restart -m fast)
GIVE_UP = 30.0  # a client retrying one request this long gives up (the participant fails the test)
FINISHED = {"completed", "failed_checks", "screened_out"}  # what the completion step may say


def drill_test(test):
    """A drill: its own PostgreSQL and Redis servers and gunicorn, most of a minute on 2 cores."""
    return pytest.mark.postgres(pytest.mark.redis(pytest.mark.slow(test)))


# -- the integrity check, alone -----------------------------------------------------------------

def _answer(pid: str, trial: str, key: str, status: int) -> tuple[float, str, str, str, int]:
    return (0.0, pid, trial, key, status)


def test_the_integrity_check_passes_answers_stored_once_each():
    answers = [_answer("p1", "t1", "k1", 201), _answer("p1", "t2", "k2", 0), _answer("p1", "t2", "k2", 200)]
    stored = Stored(responses=[("k1", "t1", "p1"), ("k2", "t2", "p1")], trials={"p1": (2, 2)})

    check = answer_integrity(answers, stored)

    assert (check.ok, check.acknowledged, check.resent, check.stored, check.unacknowledged) == (True, 2, 1, 2, 0)


def test_the_integrity_check_sees_an_acknowledged_answer_that_is_not_stored():
    answers = [_answer("p1", "t1", "k1", 201), _answer("p1", "t2", "k2", 201)]
    stored = Stored(responses=[("k1", "t1", "p1")], trials={"p1": (2, 1)})

    check = answer_integrity(answers, stored)

    assert (check.ok, check.lost, check.stored, check.acknowledged) == (False, 1, 1, 2)


def test_the_integrity_check_sees_a_trial_answered_twice_and_a_stored_answer_no_one_was_told_of():
    answers = [_answer("p1", "t1", "k1", 201), _answer("p1", "t1", "k9", 201)]
    stored = Stored(responses=[("k1", "t1", "p1"), ("k9", "t1", "p1"), ("k3", "t3", "p1")], trials={"p1": (3, 3)})

    check = answer_integrity(answers, stored)

    assert not check.ok
    assert check.duplicated == 2  # two rows for t1, and two "201 created" for it
    assert check.unacknowledged == 1


# -- the drills ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require(private_postgres_problem())
    require(None if shutil.which("redis-server") else "redis-server is not installed (the drill starts its own)")
    require(None if (ROOT / ".venv/bin/gunicorn").exists() else "gunicorn is not installed in .venv")
    built = DrillStack(workers=2, workdir=tmp_path_factory.mktemp("fault_drill"))
    try:
        built.start(warm_up_seconds=1.0)
    except ServiceUnavailable as exc:  # the programs are there, yet a server would not start: a failure
        built.close()
        pytest.fail(str(exc), pytrace=False)
    except BaseException:
        built.close()
        raise
    print(f"\ndrill stack built in {built.seconds:.1f} s: "
          + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in built.stages.items()))
    yield built
    built.close()


def _crowd_through(stack: DrillStack, drills: list[tuple[str, int, object]], *, seed: int) -> tuple[Crowd, dict]:
    """PARTICIPANTS participants, one each per thread, from the study link to the completion code,
    while the ``drills`` (name, answers acknowledged before it starts, the drill) run in turn, each
    once that many answers are acknowledged (mid-run: before anyone can have finished). Returns
    the crowd once everyone is done, and when each drill began and ended."""
    window = Window(time.monotonic() + 300)
    crowd = Crowd(base_url=stack.base_url, study=stack.study, n=PARTICIPANTS, think=THINK, ramp=1.0,
                  give_up=GIVE_UP, window=window, seed=seed, once=True, prefix=f"drill{seed}")
    crowd.start()
    started = time.monotonic()
    windows = {}
    for name, after, drill in drills:
        while crowd.acknowledged() < after and len(crowd.finished) < PARTICIPANTS \
                and time.monotonic() < started + 60:
            time.sleep(0.05)
        assert crowd.acknowledged() >= after, (
            f"{after} answers were not acknowledged within 60 s: attempts "
            f"{dict(_attempts(crowd, 0, time.monotonic()))}, finished {crowd.finished}; server errors "
            f"{stack.server_errors()[:5]}")
        assert len(crowd.finished) < PARTICIPANTS, f"everyone had finished before {name}: it would test nothing"
        begun = time.monotonic()
        drill()
        windows[name] = (begun, time.monotonic())
    still = crowd.join(GIVE_UP + 60)
    window.deadline = time.monotonic()  # any straggler stops before its next request
    print(f"\n{crowd.acknowledged()} answers acknowledged; everyone done {time.monotonic() - started:.1f} s after the "
          f"start; drills at " + ", ".join(f"{b - started:.1f} s ({name}, {e - b:.1f} s)"
                                           for name, (b, e) in windows.items()))
    assert still == 0, f"{still} participants were still going {GIVE_UP + 60:.0f} s after the drills"
    return crowd, windows


def _attempts(crowd: Crowd, begun: float, until: float) -> Counter:
    """Attempts by operation and outcome (a status, or a network error's name) that ended between
    ``begun`` and ``until``."""
    return Counter((op, outcome) for t, op, outcome in list(crowd.events.attempts) if begun <= t <= until)


def _assert_every_answer_stored_once_and_everyone_finished(stack: DrillStack, crowd: Crowd) -> None:
    unfinished = {pid: outcome for pid, outcome in crowd.finished.items() if outcome not in FINISHED}
    assert len(crowd.finished) == PARTICIPANTS and not unfinished, \
        f"participants who could not finish: {unfinished}; server errors {stack.server_errors()[:5]}"
    stored = stored_answers(stack.pg.url)
    check = answer_integrity(crowd.events.answers, stored, participants=set(crowd.finished))
    assert check.lost == 0, f"answers acknowledged but not stored: {check}"
    assert check.duplicated == 0, f"answers stored twice: {check}"
    assert check.stored == check.acknowledged > 0, f"Response rows differ from the answers acknowledged: {check}"
    assert check.unacknowledged == 0, f"answers stored that no client was told of: {check}"
    plans = {pid: stored.trials.get(pid) for pid in crowd.finished}  # (trials, answered)
    assert all(plan is not None and plan[0] == plan[1] > 0 for plan in plans.values()), \
        f"participants with a trial left unanswered (trials, answered): {plans}"


def _assert_healthy(stack: DrillStack) -> None:
    # Several requests, so that both workers answer (each had its connection cut by the fault).
    statuses = [stack.health() for _ in range(6)]
    assert statuses == [200] * 6, f"/healthz/ after the drill: {statuses}"


@drill_test
def test_a_postgresql_restart_then_a_redis_outage_mid_run_lose_no_answer_store_none_twice_and_let_everyone_finish(
        stack):
    # One crowd meets both faults in turn (as in benchmarks/load.py): the stack and the crowd are
    # most of the time, so the second drill costs little. Each starts once the participants have
    # on average one answer, then ten, acknowledged (of 27 each).
    crowd, windows = _crowd_through(stack, [
        ("PostgreSQL restarted", PARTICIPANTS, lambda: drill_postgres(stack.pg, 0.0)),
        ("Redis stopped", 10 * PARTICIPANTS, lambda: drill_redis(stack.redis, REDIS_DOWN))], seed=1)

    during = {name: _attempts(crowd, begun, ended + 1) for name, (begun, ended) in windows.items()}
    print(f"attempts that ended during each drill (and 1 s after): {during}")
    # Each fault must have been met, or the test proves nothing about recovering from it. A
    # PostgreSQL restart fails requests (they are sent again); with Redis down the app answers
    # from the database, so that drill only needs requests in flight.
    pg_failed = {k: n for k, n in during["PostgreSQL restarted"].items()
                 if not isinstance(k[1], int) or k[1] in RETRYABLE}
    assert pg_failed, f"no request failed while PostgreSQL restarted: {during}"
    assert during["Redis stopped"], f"no request ended while Redis was down: {during}"
    _assert_every_answer_stored_once_and_everyone_finished(stack, crowd)
    _assert_healthy(stack)
