"""Pre-registered exclusion rules, applied blind to arm.

The rules live in ``study.config["exclusion_rules"]`` and are frozen with the rest of the
configuration at launch; after launch the frozen copy is the one that counts (a changed rule is a
dated deviation, see ``studyapp.services.preregistration``). Every key is optional; a missing
key means "this rule is not used".

``max_failed_attention_checks`` (int >= 0)
    Excluded when MORE than this many attention checks were failed. A check is failed when the
    answer differs from ``Trial.expected_answer`` on an ``attention_check`` trial; an unanswered
    check is not a failure (a participant who stops early is "not completed" instead).
    ``1`` therefore excludes from two failures on, which is also the minimum Prolific accepts
    as grounds for *rejecting* a submission for inattention.
``total_seconds_window`` ([low, high], numbers or null, 0 <= low < high)
    Excluded when the total time, ``completed_at - started_at`` in seconds, lies outside the
    closed interval [low, high]; ``null`` leaves that side open. Only defined for participants
    who completed: someone who did not complete is "not completed", never excluded by time.
``straightlining_max_run`` (int >= 2)
    Excluded when the longest run of the SAME answer on consecutive answered trials is LONGER
    than this. Counted over non-attention trials where the model's output was not shown (an
    answer copied from a shown output is not straight-lining), in position order; attention
    checks and trials with the output shown are skipped, they do not break a run. Choose the
    value with the class balance of the items in mind: with two classes, long runs happen by
    chance when many consecutive items share the model's output.
``max_comprehension_attempts`` (int >= 1)
    Excluded from the analysis when the comprehension check needed MORE attempts than this.
    Comprehension checks come first, before any trial, and on Prolific they can NOT be grounds
    for rejecting (not paying) a submission: this rule only removes the participant from the
    analysis; the participant is paid like everyone else.
``min_instructions_seconds`` (number >= 0)
    Excluded when the time spent on the instructions (``Participant.instructions_ms``) is
    below this. An unmeasured time (null) is not grounds for exclusion.

Blindness: :func:`participant_exclusions` reads the participants' quality-control columns and
their answers and never the arm (its queries do not select ``arm_id``; a test checks the SQL),
so the rules cannot be tuned, even by accident, to favour an arm.
"""
from __future__ import annotations

import math
import uuid

import numpy as np
import pandas as pd
from django.db.models import Count, F

from studyapp.models import Participant, Study, Trial
from studyapp.selectors.frames import int_matrix
from studyapp.services.errors import ServiceError

# Config key -> what it means, in the order reasons are listed. The keys double as the rule
# names returned by participant_exclusions (one vocabulary for config, export and report).
EXCLUSION_RULES: dict[str, str] = {
    "max_failed_attention_checks": "more failed attention checks than allowed",
    "total_seconds_window": "total time (start to completion) outside the allowed window",
    "straightlining_max_run": "the same answer on more consecutive trials than allowed (straight-lining)",
    "max_comprehension_attempts": "more comprehension-check attempts than allowed (analysis only, not a "
                                  "ground for rejection on Prolific)",
    "min_instructions_seconds": "less time on the instructions than required",
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def exclusion_rules_validate(rules) -> list[str]:
    """Problems with an exclusion-rule dict, as sentences for a researcher (empty when valid)."""
    if rules is None:
        return []
    if not isinstance(rules, dict):
        return [f"exclusion_rules must be an object (dict), got {type(rules).__name__}."]
    problems = []
    for key in rules:
        if key not in EXCLUSION_RULES:
            problems.append(f"Unknown exclusion rule '{key}'; known rules: {', '.join(EXCLUSION_RULES)}.")
    checks = {
        "max_failed_attention_checks": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
        "straightlining_max_run": (lambda v: _is_int(v) and v >= 2, "a whole number >= 2"),
        "max_comprehension_attempts": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
        "min_instructions_seconds": (lambda v: _is_number(v) and v >= 0, "a number of seconds >= 0"),
    }
    for key, (ok, wanted) in checks.items():
        if key in rules and not ok(rules[key]):
            problems.append(f"{key} must be {wanted}, got {rules[key]!r}.")
    if "total_seconds_window" in rules:
        window = rules["total_seconds_window"]
        if not (isinstance(window, (list, tuple)) and len(window) == 2
                and all(v is None or _is_number(v) for v in window)):
            problems.append("total_seconds_window must be [low, high] in seconds (numbers, or null for an "
                            f"open side), got {window!r}.")
        else:
            low, high = window
            if low is None and high is None:
                problems.append("total_seconds_window has neither a low nor a high bound; remove the rule instead.")
            if low is not None and low < 0:
                problems.append(f"total_seconds_window low bound must be >= 0, got {low!r}.")
            if low is not None and high is not None and not low < high:
                problems.append(f"total_seconds_window needs low < high, got [{low!r}, {high!r}].")
    return problems


def study_exclusion_rules(*, study: Study) -> dict:
    """The rules that count: the frozen ones once launched, the current config before."""
    if study.frozen_config is not None:
        config = (study.frozen_config.get("study") or {}).get("config") or {}
    else:
        config = study.config or {}
    return dict(config.get("exclusion_rules") or {})


def _failed_attention_checks(*, study: Study) -> dict[int, int]:
    """participant pk -> number of answered attention checks not answered as instructed (one query)."""
    return dict(Trial.objects.filter(participant__study_id=study.pk, participant__preview=False, task=Trial.Task.ATTENTION_CHECK,
                                     response__isnull=False, expected_answer__isnull=False)
                .exclude(response__answer=F("expected_answer"))
                .values("participant_id").annotate(n=Count("pk")).values_list("participant_id", "n"))


def _longest_runs(*, study: Study) -> dict[int, int]:
    """participant pk -> longest run of identical answers over answered non-attention trials where the
    model's output was hidden, in trial order (one query, read as an int64 matrix)."""
    queryset = (Trial.objects.filter(participant__study_id=study.pk, participant__preview=False, response__isnull=False,
                                     show_model_output=False)
                .exclude(task=Trial.Task.ATTENTION_CHECK)
                .order_by("participant_id", "position").values_list("participant_id", "response__answer"))
    rows = int_matrix(queryset, width=2)  # 16 bytes a trial, never a list of tuples
    return {int(pk): run for pk, run in _runs(rows[:, 0], rows[:, 1]).items()}


def _runs(participants: np.ndarray, answers: np.ndarray) -> dict:
    """participant -> longest run of equal consecutive answers; each participant's rows are
    contiguous and in trial order. Vectorized: a million trials take a fraction of a second."""
    if not len(participants):
        return {}
    starts = np.r_[True, (participants[1:] != participants[:-1]) | (answers[1:] != answers[:-1])]
    lengths = np.bincount(np.cumsum(starts) - 1)
    runs = pd.Series(lengths).groupby(participants[starts]).max()
    return {k: int(v) for k, v in runs.items()}


def longest_runs_of(answers: pd.DataFrame) -> dict[str, int]:
    """The straight-lining runs (as ``_longest_runs``) from trials already loaded, instead of a
    second scan of the database: participant public id text -> longest run.

    ``answers``: answered trials with ``participant_id`` (public id text), ``task``,
    ``show_model_output`` and ``answer``, each participant's rows contiguous and in position order
    (as ``trials_long_frame`` returns them). Only those columns are read, so the rule stays
    blind to arm.
    """
    rows = answers[["participant_id", "task", "show_model_output", "answer"]]
    scored = rows.loc[(rows["task"] != Trial.Task.ATTENTION_CHECK) & ~rows["show_model_output"].astype(bool)
                      & rows["answer"].notna()]
    codes, ids = pd.factorize(scored["participant_id"])
    # The ids as a list first: indexing the (categorical) index one id at a time costs ~10 µs an id.
    names = [str(i) for i in ids.tolist()]
    return {names[k]: run for k, run in _runs(codes, scored["answer"].to_numpy(dtype="int64")).items()}


def participant_exclusions(*, study: Study, rules: dict | None = None,
                           answers: pd.DataFrame | None = None) -> dict[uuid.UUID, list[str]]:
    """Every participant of the study (by public_id) -> names of the rules that exclude them.

    An empty list means no rule excludes the participant. Whether someone is *analysed* also
    needs completion (see :func:`participants_analysed`): not completing is attrition, reported
    in the participant flow, not an exclusion. ``rules`` overrides the study's rules (for an
    exploratory analysis); by default the frozen rules of a launched study are used.

    ``answers``: the study's answered trials already loaded (see :func:`longest_runs_of`); the
    straight-lining rule then reads them instead of the database, and participants without a row
    there have no run. The analysis passes its trial frame: one database scan fewer.

    Blind to arm: nothing below selects ``arm_id``.
    """
    rules = study_exclusion_rules(study=study) if rules is None else rules
    problems = exclusion_rules_validate(rules)
    if problems:
        raise ServiceError(problems)
    people = list(Participant.objects.filter(study=study, preview=False).order_by("id").values_list(
        "id", "public_id", "status", "started_at", "completed_at", "comprehension_attempts", "instructions_ms"))
    failed_checks = _failed_attention_checks(study=study) if "max_failed_attention_checks" in rules else {}
    if "straightlining_max_run" not in rules:
        longest_runs = {}
    elif answers is not None:
        by_public_id = longest_runs_of(answers)
        longest_runs = {pk: by_public_id.get(str(public_id), 0) for pk, public_id, *_ in people}
    else:
        longest_runs = _longest_runs(study=study)
    low, high = rules.get("total_seconds_window") or (None, None)
    result: dict[uuid.UUID, list[str]] = {}
    for pk, public_id, status, started_at, completed_at, attempts, instructions_ms in people:
        reasons = []
        if "max_failed_attention_checks" in rules and failed_checks.get(pk, 0) > rules["max_failed_attention_checks"]:
            reasons.append("max_failed_attention_checks")
        if "total_seconds_window" in rules and status == Participant.Status.COMPLETED and completed_at:
            seconds = (completed_at - started_at).total_seconds()
            if (low is not None and seconds < low) or (high is not None and seconds > high):
                reasons.append("total_seconds_window")
        if "straightlining_max_run" in rules and longest_runs.get(pk, 0) > rules["straightlining_max_run"]:
            reasons.append("straightlining_max_run")
        if "max_comprehension_attempts" in rules and attempts > rules["max_comprehension_attempts"]:
            reasons.append("max_comprehension_attempts")
        if ("min_instructions_seconds" in rules and instructions_ms is not None
                and instructions_ms < 1000 * rules["min_instructions_seconds"]):
            reasons.append("min_instructions_seconds")
        result[public_id] = reasons
    return result


def participants_analysed(*, study: Study, exclusions: dict[uuid.UUID, list[str]] | None = None,
                          rules: dict | None = None) -> set[uuid.UUID]:
    """Public ids of the participants in the analysis: completed and excluded by no rule."""
    if exclusions is None:
        exclusions = participant_exclusions(study=study, rules=rules)
    completed = set(Participant.objects.filter(study=study, preview=False, status=Participant.Status.COMPLETED)
                    .values_list("public_id", flat=True))
    return {pid for pid, reasons in exclusions.items() if pid in completed and not reasons}
