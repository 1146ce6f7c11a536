"""The one declarative description of every exported column.

The CSV writers format each value by its column's declared ``type`` and the codebook is rendered
from the same ``Column`` objects, so the files and their documentation cannot disagree (a column
that is written but not described is impossible: the header *is* ``[c.name for c in columns]``).

Value conventions (tidy data): booleans as 0/1, missing as an empty cell, timestamps ISO-8601 in
UTC with a ``Z`` suffix, numbers in Python's shortest round-trip form.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import repeat
from typing import Any

from django.db.models import TextChoices

from studyapp.models import Arm, Hypothesis, Participant, Study, Trial
from studyapp.selectors import TRIAL_COLUMNS

TYPES = {
    "string": "Free text.",
    "categorical": "One of the listed allowed values.",
    "integer": "Whole number.",
    "number": "Decimal number (shortest round-trip representation).",
    "boolean": "1 = true, 0 = false.",
    "datetime": "ISO-8601 timestamp in UTC, e.g. 2025-01-31T14:05:09.123456Z.",
    "uuid": "Opaque identifier (UUID, 36 characters).",
    "json": "A JSON document (manifest only).",
}
MISSING = "Empty cell = missing / not applicable."


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    meaning: str
    unit: str = ""
    allowed: tuple[str, ...] = ()
    # Allowed values that are not an enumeration, e.g. "1-7" or "0-1".
    range: str = ""

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"column {self.name!r}: unknown type {self.type!r}")

    @property
    def allowed_values(self) -> str:
        if self.allowed:
            return "|".join(self.allowed)
        return self.range


def _choices(choices: type[TextChoices]) -> tuple[str, ...]:
    return tuple(str(v) for v in choices.values)


# -- value formatting, chosen by type ----------------------------------------------------------
# Applied a column at a time (a block of rows transposed), so the common cases run at C speed.

_BOOL01 = {True: 1, False: 0, None: None}  # 1 == True and 0 == False hash alike: 0/1 ints pass too
_ODD = object()


def _boolean(value: Any) -> int | None:
    return None if value is None else int(bool(value))


def booleans01(values: Sequence) -> Iterable:
    out = list(map(_BOOL01.get, values, repeat(_ODD)))
    return out if _ODD not in out else [_boolean(v) for v in values]


def iso_utc(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):  # str: already ISO-8601 UTC (see cursors.py)
        return value
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# csv.writer already writes None as "" and str() for ints, strings and UUIDs: those need nothing.
COLUMN_FORMATTERS: dict[str, Callable[[Sequence], Iterable]] = {
    "boolean": booleans01,
    "datetime": lambda values: map(iso_utc, values),
    "number": lambda values: map(_number, values),
}


# -- responses.csv (long: one row per planned trial) --------------------------------------------

_TRIAL_SPEC = {
    "study": Column("study", "string", "Study slug."),
    "participant": Column("participant", "uuid", "Participant's opaque id (Participant.public_id)."),
    "participant_status": Column("participant_status", "categorical", "Participant's status at export time.",
                                 allowed=_choices(Participant.Status)),
    "simulated": Column("simulated", "boolean", "1 = a simulated participant (pilot, demo or load test): never "
                        "counted toward targets, never in a confirmatory analysis."),
    "arm": Column("arm", "string", "Name of the arm (condition) the participant was assigned to."),
    "arm_kind": Column("arm_kind", "categorical", "Kind of the arm.", allowed=_choices(Arm.Kind)),
    "position": Column("position", "integer", "Position of the trial in the participant's sequence (0-based)."),
    "phase": Column("phase", "categorical", "Phase of the trial.", allowed=_choices(Trial.Phase)),
    "task": Column("task", "categorical", "Trial type.", allowed=_choices(Trial.Task)),
    "stimulus": Column("stimulus", "integer", "Stimulus id (database key; stable within this installation)."),
    "stimulus_index": Column("stimulus_index", "integer", "Index of the stimulus within its dataset."),
    "edit": Column("edit", "integer", "Position of the counterfactual edit shown; empty when none."),
    "truth": Column("truth", "integer", "Ground-truth class index of the stimulus (dataset label)."),
    "model_output": Column("model_output", "integer",
                           "Model's predicted class index on what the trial showed (the edit when there is one)."),
    "expected_answer": Column("expected_answer", "integer",
                              "Answer scored as correct (model output for prediction tasks, instructed option "
                              "for attention checks)."),
    "n_options": Column("n_options", "integer", "Number of options the participant chose from (classes or "
                        "candidate edits); sets the chance level."),
    "show_explanation": Column("show_explanation", "boolean", "Whether the trial showed the arm's aid."),
    "show_model_output": Column("show_model_output", "boolean", "Whether the trial showed the model's output."),
    "response": Column("response", "integer", "Participant's answer (class index or edit position); empty = "
                       "not answered."),
    "correct": Column("correct", "boolean", "Whether the answer equals expected_answer; empty = not answered or "
                      "not scored."),
    "confidence": Column("confidence", "integer", "Self-reported confidence.", unit="Likert points", range="1-7"),
    "client_rt_ms": Column("client_rt_ms", "integer", "Response time measured in the browser.", unit="ms"),
    "server_rt_ms": Column("server_rt_ms", "integer", "Time between serving the trial and receiving the answer.",
                           unit="ms"),
    "client_sent_at": Column("client_sent_at", "datetime", "Browser clock when the answer was sent.", unit="UTC"),
    "received_at": Column("received_at", "datetime", "Server clock when the answer was stored.", unit="UTC"),
    "idempotency_key": Column("idempotency_key", "uuid", "Browser-generated key of the stored answer."),
    "focus_losses": Column("focus_losses", "integer", "Times the participant left the trial while it was on screen "
                           "(browser window lost focus or the tab was hidden); empty = not answered."),
    "device": Column("device", "categorical", "Device class of the browser that answered (touch screen with a "
                     "short side under 600 px = phone); empty = not answered or not reported.",
                     allowed=("phone", "tablet", "desktop")),
}
EXCLUSION_COLUMNS = (
    Column("exclusion_rules", "string", "Names of the pre-registered exclusion rules the participant met, joined "
           "by ';'. Empty = none met (see excluded) or not evaluated."),
    Column("excluded", "boolean", "1 = the participant is excluded from the confirmatory analysis; empty = "
           "exclusions not evaluated."),
)
RESPONSE_COLUMNS: tuple[Column, ...] = (
    *(_TRIAL_SPEC[name] for name in TRIAL_COLUMNS),
    Column("attention_check", "boolean", "1 = this trial is an attention (catch) check."),
    *EXCLUSION_COLUMNS,
)

# -- participants.csv (wide: one row per participant) ------------------------------------------

PHASES = _choices(Trial.Phase)
LIKERT_PREFIX = "likert_"


def likert_column_name(item: str) -> str:
    return LIKERT_PREFIX + (re.sub(r"[^0-9a-z]+", "_", item.lower()).strip("_") or "item")


def likert_column(item: str) -> Column:
    return Column(likert_column_name(item), "integer", f"Questionnaire answer to the item {item!r}.",
                  unit="Likert points", range="1-7")


PARTICIPANT_BASE_COLUMNS: tuple[Column, ...] = (
    _TRIAL_SPEC["study"],
    _TRIAL_SPEC["participant"],
    _TRIAL_SPEC["arm"],
    _TRIAL_SPEC["arm_kind"],
    Column("status", "categorical", "Participant's status at export time.", allowed=_choices(Participant.Status)),
    Column("source", "categorical", "Recruitment channel.", allowed=_choices(Participant.Source)),
    Column("source_id", "string", "The participant's id in the imported file (source = external only, to match "
           "rows with your own data); empty for participants who took part here: their recruitment ids "
           "(e.g. Prolific's) identify people across studies and are never exported."),
    _TRIAL_SPEC["simulated"],
    Column("started_at", "datetime", "Enrollment time.", unit="UTC"),
    Column("consented_at", "datetime", "Consent time.", unit="UTC"),
    Column("consent_version", "string", "Version of the consent text agreed to (first 12 hex digits of the text's "
           "SHA-256, shown under the text on the consent page)."),
    Column("completed_at", "datetime", "Completion time; empty = not completed.", unit="UTC"),
    Column("last_seen_at", "datetime", "Last request from the participant.", unit="UTC"),
    Column("duration_s", "number", "completed_at minus started_at; empty for imported participants (their "
           "times are the import's, not the session's).", unit="s"),
    Column("comprehension_attempts", "integer", "Attempts needed for the comprehension check."),
    Column("instructions_ms", "integer", "Time spent on the instructions.", unit="ms"),
    Column("device", "categorical", "Device class of the browser at the participant's first answer (touch screen "
           "with a short side under 600 px = phone); empty = no answer.", allowed=("phone", "tablet", "desktop")),
    Column("n_trials", "integer", "Planned trials."),
    Column("n_answered", "integer", "Answered trials (all phases and tasks)."),
    Column("n_attention_checks", "integer", "Answered attention-check trials."),
    Column("n_attention_failed", "integer", "Answered attention-check trials answered wrongly."),
    *(col for phase in PHASES for col in (
        Column(f"n_{phase}", "integer", f"Scored answers in the {phase} phase (attention checks not counted)."),
        Column(f"accuracy_{phase}", "number", f"Proportion correct in the {phase} phase (attention checks not "
               "counted); empty = no scored answer.", unit="proportion", range="0-1"),
    )),
    Column("gain", "number", "accuracy_post_test minus accuracy_pre_test; empty when either is missing.",
           unit="proportion", range="-1-1"),
)


def participant_columns(*, likert_items: Sequence[str]) -> tuple[Column, ...]:
    return (*PARTICIPANT_BASE_COLUMNS, *(likert_column(i) for i in likert_items), *EXCLUSION_COLUMNS)


# -- items.csv (the study's item sample, one row per item) -------------------------------------

ITEM_COLUMNS: tuple[Column, ...] = (
    _TRIAL_SPEC["study"],
    Column("role", "categorical", "Which part of the sample: learning (and practice), test (pre- and post-test), "
           "or a counterfactual task.", allowed=("learning", "test", "counterfactual_predict",
                                                 "counterfactual_choose")),
    Column("position", "integer", "Order within the role, as drawn (0-based)."),
    _TRIAL_SPEC["stimulus"],
    _TRIAL_SPEC["stimulus_index"],
    Column("stratum", "string", "Sampling stratum: the model's predicted class and whether the model is right."),
    _TRIAL_SPEC["truth"],
    Column("model_output", "integer", "The model's predicted class on the item."),
    Column("edits", "string", "Counterfactual items: ids of the edits shown, in order, joined by ';'."),
    Column("answer_position", "integer", "counterfactual_choose: position of the edit that changes the output."),
)


# -- hypotheses.csv (the frozen plan + the latest analysis) ------------------------------------

VERDICTS = ("supported", "not_supported", "equivalent", "inconclusive")
HYPOTHESIS_COLUMNS: tuple[Column, ...] = (
    _TRIAL_SPEC["study"],
    Column("label", "string", "Hypothesis label (e.g. H1)."),
    Column("analysis", "categorical", "confirmatory = pre-registered in the frozen plan and analysed by a "
           "confirmatory run of that plan; exploratory = anything else.", allowed=("confirmatory", "exploratory")),
    Column("preregistered", "boolean", "1 = a hypothesis with this label is in the study's frozen plan (launch); "
           "an exploratory row may re-test it differently."),
    Column("statement", "string", "The claim in words."),
    Column("comparison", "categorical", "What is compared.", allowed=_choices(Hypothesis.Comparison)),
    Column("arm", "string", "Arm the hypothesis is about."),
    Column("comparator", "string", "Arm it is compared with (the control arm for arm_vs_control unless one is "
           "named); empty for arm_vs_chance."),
    Column("outcome", "categorical", "Participant-level outcome.", allowed=_choices(Hypothesis.Outcome)),
    Column("likert_item", "string", "Questionnaire item, for Likert outcomes."),
    Column("direction", "categorical", "Direction of the claim.", allowed=_choices(Hypothesis.Direction)),
    Column("equivalence_margin", "number", "Equivalence margin (TOST).", unit="outcome units"),
    Column("test", "string", "Pre-registered statistical test."),
    Column("alpha", "number", "Significance level.", range="0-1"),
    Column("family", "string", "Correction family."),
    Column("correction", "categorical", "Multiple-comparison correction.", allowed=_choices(Hypothesis.Correction)),
    Column("planned_n_per_arm", "integer", "Planned participants per arm."),
    Column("analysis_run", "integer", "Id of the AnalysisRun the results come from; empty = not analysed."),
    Column("analysis_run_kind", "categorical", "Kind of that run.", allowed=("confirmatory", "exploratory")),
    Column("analysis_run_at", "datetime", "When that run was made.", unit="UTC"),
    Column("analysis_seed", "integer", "Seed of that run (resampling methods)."),
    Column("plan_matches", "boolean", "1 = the run's plan hash equals the study's frozen pre-registration hash."),
    Column("test_method", "string", "Test actually computed for the difference (library method name)."),
    Column("n_arm", "integer", "Analysed participants in the arm."),
    Column("n_comparator", "integer", "Analysed participants in the comparator arm."),
    Column("mean_arm", "number", "Mean outcome in the arm.", unit="outcome units"),
    Column("mean_comparator", "number", "Mean outcome in the comparator arm.", unit="outcome units"),
    Column("statistic", "number", "Statistic of the difference test."),
    Column("df", "number", "Degrees of freedom of the difference test, when it has them."),
    Column("p_value", "number", "Unadjusted p-value of the pre-registered test (TOST for equivalence claims).",
           range="0-1"),
    Column("p_adjusted", "number", "p_value adjusted over the correction family.", range="0-1"),
    Column("p_equivalence", "number", "Unadjusted TOST p-value, when a margin is registered.", range="0-1"),
    Column("p_equivalence_adjusted", "number", "p_equivalence adjusted over the family.", range="0-1"),
    Column("decision", "categorical", "Verdict after correction.", allowed=VERDICTS),
    Column("decision_reason", "string", "Why that verdict."),
    Column("effect_name", "string", "Effect measure of the difference test."),
    Column("effect_estimate", "number", "Its estimate.", unit="outcome units"),
    Column("effect_ci_low", "number", "Lower bound of its confidence interval."),
    Column("effect_ci_high", "number", "Upper bound of its confidence interval."),
    Column("cohens_d", "number", "Cohen's d (standardised mean difference), for two-arm comparisons."),
    Column("error", "string", "Why the hypothesis could not be tested; empty when it was."),
)

# -- codebook.csv itself and manifest.json ------------------------------------------------------

CODEBOOK_COLUMNS: tuple[Column, ...] = (
    Column("file", "string", "Export file the column belongs to."),
    Column("column", "string", "Column (or, for manifest.json, top-level key) name."),
    Column("type", "categorical", "Value type.", allowed=tuple(TYPES)),
    Column("unit", "string", "Unit of measurement, when there is one."),
    Column("meaning", "string", "What the value means."),
    Column("allowed_values", "string", "Enumerated values joined by '|', or a range."),
)

MANIFEST_KEYS: tuple[Column, ...] = (
    Column("manifest_version", "integer", "Version of this manifest's layout."),
    Column("exported_at", "datetime", "When this manifest was generated.", unit="UTC"),
    Column("study", "json", "Study id, slug, state, seed, configuration, target per arm."),
    Column("preregistration", "json", "Frozen-plan SHA-256, launch/close times, whether the stored plan still "
           "hashes to it (frozen_sha256_verified), drift of the current rows from it, and the frozen plan itself."),
    Column("models", "json", "The study's model and models derived from it: architecture, weights SHA-256, "
           "hyperparameters, training."),
    Column("dataset", "json", "Dataset name, content SHA-256, split_info, size."),
    Column("arms", "json", "Per arm: method, method_config (+ SHA-256), manipulation, and the explanation "
           "config hashes and seeds actually stored."),
    Column("stimuli", "json", "The stimulus sample used in trials (dataset indices, splits) and the seeds."),
    Column("item_sample", "json", "How the study's items were drawn: seed, pool size, model-error share, counts "
           "per role and stratum, strata that ran short (the items themselves: items.csv)."),
    Column("software", "json", "Versions of python, django, torch, captum, numpy, scipy, statsmodels, pandas ..."),
    Column("deviations", "json", "Recorded deviations from the pre-registration."),
    Column("analysis_runs", "json", "Analysis runs: kind, plan hash, seed, software, time."),
    Column("exclusions", "json", "Whether exclusions were evaluated, and counts per rule."),
    Column("exports", "json", "The export files and their columns."),
)


@dataclass(frozen=True)
class ExportSpec:
    kind: str
    suffix: str
    description: str
    # Other downloads of the same document, (kind, file suffix): not files of their own in the codebook.
    renderings: tuple[tuple[str, str], ...] = ()


# Every export kind, in download order (files.FILES adds each one's renderings after it).
EXPORTS: dict[str, ExportSpec] = {
    "responses": ExportSpec("responses", "responses.csv", "Long format: one row per planned trial."),
    "participants": ExportSpec("participants", "participants.csv", "Wide format: one row per participant."),
    "hypotheses": ExportSpec("hypotheses", "hypotheses.csv",
                             "Pre-registered hypotheses and analysis results, confirmatory or exploratory."),
    "items": ExportSpec("items", "items.csv", "The study's item sample (drawn and recorded by preparation)."),
    "codebook": ExportSpec("codebook", "codebook.csv", "This codebook.",
                           renderings=(("codebook_json", "codebook.json"), ("codebook_html", "codebook.html"))),
    "manifest": ExportSpec("manifest", "manifest.json", "Provenance manifest."),
}


def export_columns(*, study: Study | None, likert_items: Sequence[str] | None = None) -> dict[str, tuple[Column, ...]]:
    """Columns of every export, by file suffix. Participants' Likert columns depend on the study."""
    if likert_items is None:
        from studyapp.exports.rows import likert_items as _items

        likert_items = _items(study=study) if study is not None else ()
    return {
        EXPORTS["responses"].suffix: RESPONSE_COLUMNS,
        EXPORTS["participants"].suffix: participant_columns(likert_items=likert_items),
        EXPORTS["hypotheses"].suffix: HYPOTHESIS_COLUMNS,
        EXPORTS["items"].suffix: ITEM_COLUMNS,
        EXPORTS["codebook"].suffix: CODEBOOK_COLUMNS,
        EXPORTS["manifest"].suffix: MANIFEST_KEYS,
    }
