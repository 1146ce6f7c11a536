"""The pre-registered plan after launch: deviations, integrity, confirmatory vs exploratory.

Launch (``studyapp.services.studies.study_launch``) freezes the plan: ``Study.frozen_config``
(canonical JSON), its SHA-256 and the time. From then on:

* the frozen plan never changes. A change of mind is recorded as a dated, explained
  :class:`PreregistrationDeviation` (``hypothesis_update_after_launch``,
  ``study_update_after_launch``); neither the frozen plan nor the Hypothesis rows are touched.
  The plan "as amended" is the frozen plan with the deviations applied in order
  (:func:`plan_amended`); analysing it is exploratory, because it is no longer the plan that was
  registered before the data were seen;
* an analysis request is confirmatory only when it is exactly the frozen plan: the same
  hypotheses (on every field that changes a number or a verdict) and the same exclusion rules.
  Anything else is exploratory and labelled so (:func:`analysis_request_classify`).

Analysis request ("spec") format, shared with ``studyapp.services.analysis.study_analyze``::

    {
      "hypotheses": [{"label": "E1", "comparison": "arm_vs_control", "arm": "<arm name>",
                      "comparator": null, "outcome": "test_accuracy", "likert_item": "",
                      "direction": "greater", "equivalence_margin": null, "test": "welch_t",
                      "alpha": 0.05, "family": "primary", "correction": "holm",
                      "exclusion_rules": {}}, ...],       # default: the frozen hypotheses
      "exclusion_rules": {...},                          # default: the frozen study rules
      "use_amended_plan": false,   # start from the frozen plan with the deviations applied
      "note": "why this analysis was run"
    }

Missing hypothesis fields take the Hypothesis model's defaults.
"""
from __future__ import annotations

import copy
import json
import math

from django.db import transaction

from studyapp.models import Hypothesis, PreregistrationDeviation, Study
from studyapp.services.errors import ServiceError
from studyapp.services.exclusions import exclusion_rules_validate, study_exclusion_rules
from explainers.canonical import canonical_json, canonical_sha256
from studyapp.selectors.plans import plan_control_arm, study_deviations, study_plan_document

LAUNCHED_STATES = (Study.State.LIVE, Study.State.CLOSED)

# Hypothesis fields in the frozen plan that a deviation may concern (the label identifies it).
PLAN_HYPOTHESIS_FIELDS = (
    "statement", "comparison", "arm", "comparator", "outcome", "likert_item", "direction", "equivalence_margin",
    "test", "alpha", "family", "correction", "planned_n_per_arm", "stopping_rule", "exclusion_rules",
)
# The fields that change a number or a verdict: two hypotheses equal on these are the same test.
ANALYSIS_FIELDS = (
    "comparison", "arm", "comparator", "outcome", "likert_item", "direction", "equivalence_margin", "test",
    "alpha", "family", "correction", "exclusion_rules",
)
# Study-level plan entries a deviation may concern.
STUDY_DEVIATION_FIELDS = ("exclusion_rules", "target_per_arm")
# Test names accepted in Hypothesis.test (aliases map to one implementation in the analysis).
# The tests a hypothesis may name (the model's choices) and "welch", an alias accepted in specs.
KNOWN_TESTS = (*Hypothesis.Test.values, "welch")
SPEC_KEYS = ("hypotheses", "exclusion_rules", "use_amended_plan", "note")


# The Hypothesis model's defaults, for requests that leave a field out.
HYPOTHESIS_DEFAULTS = {
    "statement": "", "comparison": "arm_vs_control", "arm": None, "comparator": None, "outcome": "test_accuracy",
    "likert_item": "", "direction": "greater", "equivalence_margin": None, "test": "welch_t", "alpha": 0.05,
    "family": "primary", "correction": "holm", "planned_n_per_arm": 30, "stopping_rule": "", "exclusion_rules": {},
}


def _recorded_by(user) -> str:
    if user is None:
        return ""
    if hasattr(user, "get_username"):
        return user.get_username()[:150]
    return str(user)[:150]


def _require_launched(study: Study, doing: str) -> None:
    if study.state not in LAUNCHED_STATES or study.frozen_config is None:
        raise ServiceError(
            f"The study '{study.title}' is {study.state} and has no frozen plan yet: {doing} only applies after "
            "launch. Before launch, edit the study and its hypotheses directly.")


def _require_reason(reason: str | None) -> str:
    if not reason or not str(reason).strip():
        raise ServiceError("A deviation from the pre-registered plan needs a reason: explain what changed and why.")
    return str(reason).strip()


def _jsonable(value, field: str):
    try:
        return json.loads(canonical_json({"v": value}))["v"]
    except (TypeError, ValueError) as exc:
        raise ServiceError(f"The new value of {field} cannot be stored as JSON ({exc}).") from None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def hypothesis_value_problems(*, field: str, value, arm_names: list[str]) -> list[str]:
    """Why ``value`` is not a valid value of a hypothesis' ``field`` (empty when it is)."""
    choices = {"comparison": Hypothesis.Comparison, "outcome": Hypothesis.Outcome,
               "direction": Hypothesis.Direction, "correction": Hypothesis.Correction}
    if field in choices:
        allowed = list(choices[field].values)
        return [] if value in allowed else [f"{field} must be one of {allowed}, got {value!r}."]
    if field in ("arm", "comparator"):
        if field == "comparator" and value is None:
            return []
        return [] if value in arm_names else [f"{field} must name an arm of the plan ({arm_names}), got {value!r}."]
    if field == "alpha":
        return [] if _number(value) and 0 < value < 1 else [f"alpha must lie strictly between 0 and 1, got {value!r}."]
    if field == "equivalence_margin":
        return [] if value is None or (_number(value) and value > 0) else [
            f"equivalence_margin must be a positive number (or null), got {value!r}."]
    if field == "planned_n_per_arm":
        return [] if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else [
            f"planned_n_per_arm must be a whole number >= 1, got {value!r}."]
    if field == "test":
        return [] if value in KNOWN_TESTS else [f"test must be one of {list(KNOWN_TESTS)}, got {value!r}."]
    if field == "exclusion_rules":
        return exclusion_rules_validate(value)
    if field in ("statement", "likert_item", "family", "stopping_rule"):
        return [] if isinstance(value, str) else [f"{field} must be text, got {value!r}."]
    return [f"Unknown hypothesis field {field!r}."]


def _frozen_hypothesis(study: Study, label: str) -> dict:
    for entry in study.frozen_config.get("hypotheses", []):
        if entry["label"] == label:
            return entry
    raise ServiceError(f"Hypothesis {label} is not in the frozen plan of '{study.title}': it was added after "
                       "launch, so it was never pre-registered (analyse it as exploratory).")


def _current_value(study: Study, *, label: str, field: str, frozen_value):
    """The value as amended so far: the latest deviation's ``after``, else the frozen one."""
    last = (PreregistrationDeviation.objects.filter(study=study, hypothesis_label=label, field=field)
            .order_by("-recorded_at", "-pk").first())
    return last.after if last is not None else frozen_value


def hypothesis_update_after_launch(*, hypothesis: Hypothesis, field: str, value, reason: str,
                                   user=None) -> PreregistrationDeviation:
    """Record a dated, explained change to a pre-registered hypothesis; the frozen plan stays as it was.

    Refused (ServiceError) without a reason, before launch (edit the hypothesis instead), for a
    field that is not part of the plan, for an invalid value, and when nothing would change.
    """
    reason = _require_reason(reason)
    if field not in PLAN_HYPOTHESIS_FIELDS:
        raise ServiceError(f"'{field}' is not a field of a pre-registered hypothesis; choose one of "
                           f"{', '.join(PLAN_HYPOTHESIS_FIELDS)}.")
    with transaction.atomic():
        # Serialise deviations of one study, so "before" is always the value just in force.
        study = Study.objects.select_for_update().get(pk=hypothesis.study_id)
        _require_launched(study, "recording a deviation")
        frozen = _frozen_hypothesis(study, hypothesis.label)
        arm_names = [a["name"] for a in study.frozen_config.get("arms", [])]
        value = _jsonable(value, field)
        problems = hypothesis_value_problems(field=field, value=value, arm_names=arm_names)
        if problems:
            raise ServiceError(problems)
        before = _current_value(study, label=hypothesis.label, field=field, frozen_value=frozen.get(field))
        if before == value:
            raise ServiceError(f"{hypothesis.label}.{field} is already {value!r}; there is no deviation to record.")
        return PreregistrationDeviation.objects.create(
            study=study, hypothesis_label=hypothesis.label, field=field, before=before, after=value,
            reason=reason, recorded_by=_recorded_by(user))


def study_update_after_launch(*, study: Study, field: str, value, reason: str,
                              user=None) -> PreregistrationDeviation:
    """Record a dated, explained change to a study-level part of the plan (exclusion rules, target n)."""
    reason = _require_reason(reason)
    if field not in STUDY_DEVIATION_FIELDS:
        raise ServiceError(f"'{field}' cannot be changed by a study-level deviation; choose one of "
                           f"{', '.join(STUDY_DEVIATION_FIELDS)}.")
    with transaction.atomic():
        study = Study.objects.select_for_update().get(pk=study.pk)
        _require_launched(study, "recording a deviation")
        value = _jsonable(value, field)
        if field == "exclusion_rules":
            problems = exclusion_rules_validate(value)
            frozen_value = study_exclusion_rules(study=study)
        else:
            problems = [] if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else [
                f"target_per_arm must be a whole number >= 1, got {value!r}."]
            frozen_value = study.frozen_config["study"].get("target_per_arm")
        if problems:
            raise ServiceError(problems)
        before = _current_value(study, label="", field=field, frozen_value=frozen_value)
        if before == value:
            raise ServiceError(f"{field} is already {value!r}; there is no deviation to record.")
        return PreregistrationDeviation.objects.create(
            study=study, hypothesis_label="", field=field, before=before, after=value, reason=reason,
            recorded_by=_recorded_by(user))


def preregistration_sha256(plan: dict) -> str:
    return canonical_sha256(plan)


def preregistration_verify(*, study: Study) -> bool:
    """True when the stored frozen plan still hashes to the SHA-256 recorded at launch."""
    if study.frozen_config is None or not study.frozen_sha256:
        return False
    return preregistration_sha256(study.frozen_config) == study.frozen_sha256


def preregistration_drift(*, study: Study) -> list[str]:
    """Top-level entries of the plan whose current rows differ from the frozen plan.

    The admin makes arms and hypotheses read-only after launch, so a non-empty answer means they
    were changed behind its back (shell, SQL); the frozen plan is still the one that counts.
    """
    if study.frozen_config is None:
        return []
    current = study_plan_document(study=study)
    problems = []
    for key in sorted(set(current) | set(study.frozen_config)):
        if canonical_json({"v": current.get(key)}) != canonical_json({"v": study.frozen_config.get(key)}):
            problems.append(f"'{key}' differs from the frozen plan")
    return problems


def plan_amended(*, study: Study) -> dict:
    """The frozen plan with every deviation applied in order (the frozen plan itself is untouched)."""
    _require_launched(study, "the amended plan")
    plan = copy.deepcopy(study.frozen_config)
    for deviation in study_deviations(study=study):
        if deviation.hypothesis_label:
            for entry in plan["hypotheses"]:
                if entry["label"] == deviation.hypothesis_label:
                    entry[deviation.field] = deviation.after
        elif deviation.field == "exclusion_rules":
            plan["study"].setdefault("config", {})["exclusion_rules"] = deviation.after
        else:
            plan["study"][deviation.field] = deviation.after
    return plan


def hypothesis_spec_normalize(entry: dict, *, index: int = 0) -> dict:
    """A hypothesis of a plan or a request with every analysis field filled in (model defaults)."""
    if not isinstance(entry, dict):
        raise ServiceError(f"Each hypothesis of an analysis request must be an object, got {entry!r}.")
    unknown = set(entry) - set(PLAN_HYPOTHESIS_FIELDS) - {"label"}
    if unknown:
        raise ServiceError(f"Unknown hypothesis fields {sorted(unknown)}; known: label, {', '.join(PLAN_HYPOTHESIS_FIELDS)}.")
    spec = {**HYPOTHESIS_DEFAULTS, "label": f"E{index + 1}", **entry}
    if isinstance(spec.get("exclusion_rules"), dict) or spec.get("exclusion_rules") is None:
        spec["exclusion_rules"] = dict(spec.get("exclusion_rules") or {})
    for field in ("alpha", "equivalence_margin"):  # 1 and 1.0 are the same margin; bad values stay for validation
        if _number(spec.get(field)):
            spec[field] = float(spec[field])
    return spec


def _analysis_key(spec: dict, control: str | None = None) -> str:
    """Identity of a test: an arm-vs-control comparison naming the control arm is the same test as
    one leaving the comparator empty, and a comparison against chance has no comparator."""
    key = {field: spec.get(field) for field in ANALYSIS_FIELDS}
    if key["comparison"] == "arm_vs_control":
        key["comparator"] = key["comparator"] or control
    elif key["comparison"] == "arm_vs_chance":
        key["comparator"] = None
    return canonical_json(key)


def plan_hypotheses(*, study: Study, amended: bool = False) -> list[dict]:
    """The frozen (or amended) plan's hypotheses, normalized, ordered by label."""
    _require_launched(study, "the pre-registered hypotheses")
    plan = plan_amended(study=study) if amended else study.frozen_config
    return [hypothesis_spec_normalize(h, index=i) for i, h in enumerate(plan.get("hypotheses", []))]


def hypothesis_matches_plan(*, study: Study, hypothesis: dict) -> bool:
    """Is this hypothesis (a dict in the spec format) one of the frozen plan's, on every analysis field?"""
    if study.frozen_config is None:
        return False
    control = plan_control_arm(study.frozen_config or {})
    key = _analysis_key(hypothesis_spec_normalize(hypothesis), control)
    return any(_analysis_key(h, control) == key for h in plan_hypotheses(study=study))


def analysis_spec_problems(spec: dict) -> list[str]:
    if not isinstance(spec, dict):
        return [f"An analysis request must be an object, got {type(spec).__name__}."]
    problems = [f"Unknown analysis request key '{k}'; known: {', '.join(SPEC_KEYS)}." for k in spec if k not in SPEC_KEYS]
    if "exclusion_rules" in spec:
        problems += exclusion_rules_validate(spec["exclusion_rules"])
    if "hypotheses" in spec and not isinstance(spec["hypotheses"], list):
        problems.append("'hypotheses' must be a list of hypothesis objects.")
    return problems


def analysis_request_resolve(*, study: Study, spec: dict | None) -> tuple[list[dict], dict]:
    """(hypotheses, study exclusion rules) that a request asks for, defaults filled in.

    Defaults come from the frozen plan (or the amended one with ``use_amended_plan``); before
    launch, from the current Hypothesis rows and ``study.config`` (pilot data, exploratory).
    """
    spec = spec or {}
    problems = analysis_spec_problems(spec)
    if problems:
        raise ServiceError(problems)
    launched = study.frozen_config is not None
    amended = bool(spec.get("use_amended_plan")) and launched
    if "hypotheses" in spec:
        hypotheses = [hypothesis_spec_normalize(h, index=i) for i, h in enumerate(spec["hypotheses"])]
    elif launched:
        hypotheses = plan_hypotheses(study=study, amended=amended)
    else:
        draft = study_plan_document(study=study)["hypotheses"]
        hypotheses = [hypothesis_spec_normalize(h, index=i) for i, h in enumerate(draft)]
    if "exclusion_rules" in spec:
        rules = dict(spec["exclusion_rules"] or {})
    elif amended:
        rules = dict(plan_amended(study=study)["study"].get("config", {}).get("exclusion_rules") or {})
    else:
        rules = study_exclusion_rules(study=study)
    return hypotheses, rules


def analysis_request_classify(*, study: Study, spec: dict | None) -> tuple[str, list[str]]:
    """("confirmatory" | "exploratory", reasons it is exploratory).

    ``None`` asks for the frozen plan: confirmatory once launched. A spec is confirmatory only
    when it reproduces the frozen plan exactly: the same hypotheses on ANALYSIS_FIELDS (in any
    order, with any labels) and the same study exclusion rules.
    """
    if study.frozen_config is None:
        if spec is not None:
            analysis_request_resolve(study=study, spec=spec)  # refuse a malformed request all the same
        return "exploratory", ["the study has not been launched: there is no frozen plan to confirm"]
    if spec is None:
        return "confirmatory", []
    requested, rules = analysis_request_resolve(study=study, spec=spec)
    control = plan_control_arm(study.frozen_config or {})
    frozen_keys = {_analysis_key(h, control): h["label"] for h in plan_hypotheses(study=study)}
    requested_keys = {_analysis_key(h, control): h["label"] for h in requested}
    reasons = [f"{label} is not a hypothesis of the frozen plan (as requested)"
               for key, label in requested_keys.items() if key not in frozen_keys]
    reasons += [f"{label} of the frozen plan is left out (this changes its correction family)"
                for key, label in frozen_keys.items() if key not in requested_keys]
    if len(requested) != len(requested_keys):
        reasons.append("a hypothesis is requested twice")
    if rules != study_exclusion_rules(study=study):
        reasons.append("the exclusion rules differ from the frozen ones")
    return ("exploratory" if reasons else "confirmatory"), reasons


def analysis_request_check(*, study: Study, seed, spec: dict | None) -> tuple[str, list[str], bool]:
    """Refuse, with a message for the researcher, a request that cannot run; else return
    (kind, reasons it is exploratory, whether the frozen plan matches its hash). Cheap (no
    trial is read): the report page checks a request before it queues it."""
    if spec is None and study.frozen_config is None:
        raise ServiceError(f"The study '{study.title}' was never launched, so it has no frozen plan: a confirmatory "
                           "analysis is impossible. Run an exploratory analysis (pass exploratory_spec) instead.")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ServiceError(f"The seed must be a whole number >= 0, got {seed!r}.")
    kind, reasons = analysis_request_classify(study=study, spec=spec)
    verified = preregistration_verify(study=study)
    if kind == "confirmatory" and not verified:
        raise ServiceError(f"The frozen plan of '{study.title}' no longer matches the SHA-256 recorded at launch; "
                           "no confirmatory analysis can be run on it.")
    return kind, reasons, verified


def analysis_request_kind(*, study: Study, spec: dict | None) -> str:
    return analysis_request_classify(study=study, spec=spec)[0]
