"""Running simulated participants against a study (pilot, demo, load test)."""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from studyapp.models import Study
from studyapp.simulated_participants import (DatabaseOracle, DjangoTransport, HttpTransport, SimulationError,
                                             run_participant)


def simulate_participants(*, study: Study, n: int, accuracy: dict[str, float], base_url: str | None = None,
                          allow_live: bool = False, rng: np.random.Generator | None = None) -> dict:
    """N participants one after another through the participant API; a summary of what came of it."""
    from studyapp.api.participation import simulation_token

    if study.state == Study.State.LIVE and not allow_live:
        raise ValueError(f"The study '{study.slug}' is live: simulating participants there needs --allow-live.")
    if study.state not in (Study.State.READY, Study.State.LIVE):
        raise ValueError(f"The study '{study.slug}' is {study.state}; prepare it first (simulation runs on a ready "
                         "study, or a live one with --allow-live).")
    rng = rng or np.random.default_rng(0)
    token = simulation_token(study=study, allow_live=allow_live)
    oracle = DatabaseOracle(study)
    outcomes, arms, answers = Counter(), Counter(), 0
    # A pilot's link is not public yet: the 404/401 on its way to a session are expected, not news.
    request_log = logging.getLogger("django.request")
    level = request_log.level
    request_log.setLevel(logging.ERROR)
    try:
        for _ in range(n):
            transport = HttpTransport(base_url) if base_url else DjangoTransport()
            try:
                result = run_participant(transport=transport, study_public_id=str(study.public_id), rng=rng,
                                         token=token, accuracy=accuracy, oracle=oracle)
            except SimulationError as exc:
                raise ValueError(f"A simulated participant could not finish: {exc}") from None
            outcomes[result.outcome] += 1
            arms[result.arm or "?"] += 1
            answers += result.answers
    finally:
        request_log.setLevel(level)
    return {"participants": n, "answers": answers, "outcomes": dict(outcomes), "arms": dict(arms)}
