"""The typed study design: one pydantic schema, the single source of truth for ``Study.config``.

It is validated at Prepare (with messages a researcher understands), frozen at launch with the
rest of the plan, read by the trial planner and the participant API, and yields a JSON Schema
(``design_json_schema``) for the admin form. Unknown keys are refused (a misspelt
``trial_per_phase`` must not be frozen silently). Django-free: plain data in, typed objects out.

Where aids may appear (Hase & Bansal 2020; FIELD-NOTES, Protocol): an aid computed for the
model's predicted class gives the answer away in a forward trial whose output is hidden, so such
blocks are refused unless the researcher acknowledges the leak (``acknowledge_aid_leak``, for
studies of AI-assisted decisions), which is recorded with the frozen plan.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Phase = Literal["practice", "learning", "pre_test", "post_test", "test"]
Task = Literal["forward", "counterfactual_predict", "counterfactual_choose"]
Feedback = Literal["none", "correctness", "model_output"]
TEST_PHASES = ("pre_test", "post_test", "test")
LEARNING_PHASES = ("practice", "learning")
# Keys of the old free-form config that nothing ever read; refused with the way forward.
RETIRED_KEYS = {
    "phases": "replaced by 'blocks' (a list of {phase, task, n_items, show_model_output, show_aid, feedback})",
    "trials_per_phase": "replaced by 'n_items' on each block",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Block(Strict):
    """One run of trials of one phase and task."""

    phase: Phase = Field(description="practice, learning (model output shown), pre_test, post_test or test.")
    task: Task = Field("forward", description="What the participant predicts or chooses.")
    n_items: int = Field(ge=1, le=400, description="How many items (the same items for every arm).")
    show_model_output: bool = Field(False, description="Show the model's answer on the item (learning).")
    show_aid: bool = Field(False, description="Show the arm's aid (explanation, exemplars, warning).")
    feedback: Feedback = Field("none", description="After answering: nothing, right/wrong, or the model's answer. "
                                                   "Learning and practice only.")
    repeat_until_correct: int = Field(0, ge=0, le=5, description="Practice only: a wrong answer brings the same "
                                      "item back at once, at most this many extra times (0: never).")

    @model_validator(mode="after")
    def _feedback_only_while_learning(self) -> Block:
        if self.feedback != "none" and self.phase in TEST_PHASES:
            raise ValueError(f"a {self.phase} block gives no feedback (feedback would teach the answers "
                             "that the test measures); use feedback in learning or practice blocks only")
        if self.repeat_until_correct and self.phase != "practice":
            raise ValueError("only practice blocks repeat an item until it is answered correctly (a repeated "
                             f"{self.phase} item would be counted twice)")
        if self.repeat_until_correct and self.feedback == "none":
            raise ValueError("a practice block that repeats wrong answers must give feedback (set feedback), or "
                             "the repeat comes without saying why")
        if self.show_model_output and self.phase in TEST_PHASES and self.task == "forward":
            raise ValueError(f"a forward {self.phase} block asks for the model's output, so it cannot show it")
        return self


class LikertItem(Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="Column name in exports, e.g. trust.")
    text: str = Field(min_length=1, max_length=500)
    anchors: tuple[str, str] = ("Strongly disagree", "Strongly agree")


class ComprehensionQuestion(Strict):
    text: str = Field(min_length=1, max_length=500)
    options: list[str] = Field(min_length=2, max_length=8)
    answer: int = Field(ge=0, description="Index of the right option.")

    @model_validator(mode="after")
    def _answer_is_an_option(self) -> ComprehensionQuestion:
        if self.answer >= len(self.options):
            raise ValueError(f"the answer {self.answer} is not one of the {len(self.options)} options "
                             "(options are counted from 0)")
        return self


class Comprehension(Strict):
    questions: list[ComprehensionQuestion] = Field(default_factory=list, max_length=20)
    max_attempts: int = Field(3, ge=1, le=10, description="Then the participant is screened out (and paid).")


class AttentionChecks(Strict):
    count: int = Field(2, ge=0, le=20, description="Instructed-response items spread through the test phases.")
    fail_threshold: int = Field(2, ge=1, le=20, description="Failed checks that end with the failed-checks "
                                                            "code (Prolific: at least two).")


class Crowd(Strict):
    source: Literal["direct", "prolific", "sona", "generic"] = "direct"
    id_parameter: str = Field("", max_length=40, pattern=r"^[A-Za-z0-9_]*$",
                              description="URL parameter with the participant's id (generic and SONA).")
    sona_completion_url: str = Field("", max_length=500, description="SONA's completion URL with %SURVEY_CODE%.")
    same_id_elsewhere: Literal["resume", "refuse"] = Field(
        "resume", description="The same external id in another browser: resume its session, or refuse.")

    @model_validator(mode="after")
    def _source_settings(self) -> Crowd:
        if self.source == "sona" and "%SURVEY_CODE%" not in self.sona_completion_url:
            raise ValueError("a SONA study needs sona_completion_url containing %SURVEY_CODE% "
                             "(copy it from the study's page on SONA)")
        if self.source in ("generic", "sona") and not self.id_parameter:
            raise ValueError(f"a {self.source} study needs id_parameter, the URL parameter that carries the "
                             "participant's id")
        return self


DEFAULT_QUESTIONNAIRE = (
    LikertItem(id="trust", text="I trusted the model's answers."),
    LikertItem(id="helpfulness", text="The information shown with each example helped me predict the model."),
    LikertItem(id="understanding", text="I understand how the model makes its decisions."),
)


class ExclusionRules(Strict):
    """Pre-registered exclusion rules (applied blind to arm by studyapp/services/exclusions.py,
    which also checks their values together); an empty rule is not applied."""

    max_failed_attention_checks: int | None = Field(None, ge=0, description="Exclude a participant with more "
                                                                            "failed attention checks than this.")
    total_seconds_window: list[float | None] | None = Field(
        None, min_length=2, max_length=2, description="[low, high] seconds from start to completion; outside it the "
                                                      "participant is excluded (null for an open side).")
    straightlining_max_run: int | None = Field(None, ge=2, description="Exclude the same answer on more consecutive "
                                                                       "trials than this.")
    max_comprehension_attempts: int | None = Field(None, ge=1, description="Exclude from the analysis a participant "
                                                                           "who needed more quiz attempts than this.")
    min_instructions_seconds: float | None = Field(None, ge=0, description="Exclude less time on the instructions "
                                                                           "than this.")


class EditSettings(Strict):
    """How counterfactual edits are made (studyapp/selectors edit_settings; defaults per modality)."""

    grid: list[int] | None = Field(None, min_length=2, max_length=2, description="Images: occlusion grid [rows, "
                                                                                 "columns] (default [4, 4]).")
    fill: Literal["mean", "zero"] | float | None = Field(None, description="Images: what fills an occluded cell: "
                                                                           "mean, zero or a number (default mean).")
    quantiles: list[float] | None = Field(None, min_length=1, max_length=9, description="Tabular: the training "
                                          "quantiles a feature is moved to (default [0.1, 0.5, 0.9]).")


class StudyDesign(Strict):
    design: Literal["between", "within_pre_post"] = Field(
        "between", description="between: one arm, its aid where blocks allow; within_pre_post: learning without "
                               "aid -> pre-test -> learning with the arm's aid -> post-test on the same items.")
    blocks: list[Block] = Field(min_length=1, max_length=20)
    model_error_share: float = Field(0.5, ge=0.0, le=1.0, description="Share of sampled items the model gets "
                                                                     "wrong, so 'answer the truth' cannot win.")
    counterfactual_options: int = Field(4, ge=2, le=8, description="K edits offered in a choose trial.")
    attention_checks: AttentionChecks = AttentionChecks()
    confidence: Literal["off", "1-7"] = "off"
    questionnaire: list[LikertItem] = Field(default_factory=lambda: list(DEFAULT_QUESTIONNAIRE), max_length=30)
    demographics: bool = Field(True, description="Ask age band and machine-learning experience.")
    comprehension: Comprehension = Comprehension()
    min_instruction_seconds: int = Field(20, ge=0, le=1800)
    abandonment_minutes: int = Field(60, ge=5, le=24 * 60, description="Inactive this long: slot released.")
    crowd: Crowd = Crowd()
    acknowledge_aid_leak: bool = Field(False, description="Allow an aid computed for the model's answer in forward "
                                                          "trials that hide it (AI-assisted decision studies).")
    exclusion_rules: ExclusionRules = ExclusionRules()
    edits: EditSettings = EditSettings()

    @model_validator(mode="after")
    def _shape(self) -> StudyDesign:
        phases = [b.phase for b in self.blocks]
        if self.design == "within_pre_post":
            pre = [b for b in self.blocks if b.phase == "pre_test"]
            post = [b for b in self.blocks if b.phase == "post_test"]
            if len(pre) != 1 or len(post) != 1 or phases.index("pre_test") > phases.index("post_test"):
                raise ValueError("a within_pre_post design has one pre_test block followed later by one post_test "
                                 "block")
            if pre[0].n_items != post[0].n_items or pre[0].task != post[0].task:
                raise ValueError("the post-test repeats the pre-test's items: give both the same task and n_items")
            if pre[0].show_aid:
                raise ValueError("the pre-test measures people before they see the aid: set show_aid false")
        elif "pre_test" in phases or "post_test" in phases:
            raise ValueError("pre_test and post_test blocks belong to the within_pre_post design; a between "
                             "design uses test blocks")
        if not any(b.phase in TEST_PHASES for b in self.blocks):
            raise ValueError("add at least one test block: without one nothing is measured")
        if len({q.id for q in self.questionnaire}) != len(self.questionnaire):
            raise ValueError("questionnaire item ids must be unique")
        return self

    def items_needed(self) -> dict[str, int]:
        """Items the sample must hold per role (every participant sees all of them)."""
        need = {"learning": 0, "test": 0, "counterfactual_predict": 0, "counterfactual_choose": 0}
        for block in self.blocks:
            if block.phase == "post_test":
                continue  # the pre-test's items again
            need[item_role(block)] += block.n_items
        return need


def item_role(block: Block) -> str:
    """Which part of the item sample a block draws from: learning items are disjoint from test items."""
    if block.task != "forward":
        return block.task
    return "learning" if block.phase in LEARNING_PHASES else "test"


class DesignError(ValueError):
    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def _where(loc: tuple) -> str:
    parts = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"#{part + 1}")
        elif part not in ("function-after", "tagged-union"):
            parts.append(str(part))
    return " ".join(parts)


def design_parse(config: dict | None) -> StudyDesign:
    """The study's design, or DesignError listing every problem in words."""
    config = dict(config or {})
    problems = [f"'{key}' is no longer used: {why}." for key, why in RETIRED_KEYS.items() if key in config]
    for key in RETIRED_KEYS:
        config.pop(key, None)
    try:
        design = StudyDesign.model_validate(config)
    except ValidationError as exc:
        raise DesignError(problems + validation_problems(exc, StudyDesign, "Design")) from None
    if problems:
        raise DesignError(problems)
    return design


def validation_problems(exc: ValidationError, model: type[BaseModel], subject: str) -> list[str]:
    """pydantic's errors as sentences a researcher reads: where, what, and for an unknown key the
    valid keys at that place (used for the design and for the arms' settings)."""
    problems = []
    valid = ", ".join(model.model_fields) or "none"
    for error in exc.errors():
        where = _where(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown setting (valid settings here: {_valid_keys(error['loc'], valid, model)})"
        problems.append(f"{subject}, {where}: {message}." if where else f"{subject}: {message}.")
    return problems


def _valid_keys(loc: tuple, top: str, root: type[BaseModel]) -> str:
    model: type[BaseModel] = root
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            continue
        annotation = field.annotation
        inner = getattr(annotation, "__args__", (annotation,))
        model = next((t for t in inner if isinstance(t, type) and issubclass(t, BaseModel)), model)
    return ", ".join(model.model_fields) if model is not root else top


def design_json_schema() -> dict:
    return StudyDesign.model_json_schema()


def design_form_schema() -> dict:
    """The JSON Schema as the admin's form generator (django-jsonform) shows it best: an optional
    setting ("X or null") becomes a plain X field left empty, and each description is shown as
    help text under its field. The design itself is still validated by ``design_parse``."""
    def simplify(node):
        if isinstance(node, list):
            return [simplify(n) for n in node]
        if not isinstance(node, dict):
            return node
        node = {k: simplify(v) for k, v in node.items()}
        options = node.get("anyOf")
        if options and sum(o != {"type": "null"} for o in options) == 1 and {"type": "null"} in options:
            inner = next(o for o in options if o != {"type": "null"})
            node = {**{k: v for k, v in node.items() if k not in ("anyOf", "default")}, **inner}
        if "description" in node and "type" in node:
            node["help_text"] = node["description"]
        if node.get("type") == "array":
            node.pop("minItems", None)  # the form would start with empty items; Prepare checks the count
            prefix = node.pop("prefixItems", None)
            if prefix:  # a fixed-length tuple (Likert anchors): a list of the same kind in the form
                node["items"] = prefix[0]
        return node
    return simplify(design_json_schema())


def trial_asks_confidence(design: StudyDesign, *, task: str, show_model_output: bool) -> bool:
    """Confidence (1-7) is asked with every answer that is a judgement: not on attention checks
    (their answer is given) and not on forward trials that show the model's output (learning:
    the participant looks and continues)."""
    if design.confidence == "off" or task == "attention_check":
        return False
    return not (task == "forward" and show_model_output)


OPTIONAL_GROUPS = ("exclusion_rules", "edits")


def _blank(value) -> bool:
    return value is None or value == "" or (isinstance(value, list) and all(_blank(v) for v in value))


def without_empty_settings(value, *, optional: bool = False):
    """The design as stored: settings left empty in the admin form (null) are dropped, so they
    take their defaults instead of overriding them with null. Inside the optional groups
    (exclusion rules, edit settings) an empty list or text is also "not set"; elsewhere an empty
    list is a choice (no questionnaire) and kept."""
    if isinstance(value, dict):
        return {k: without_empty_settings(v, optional=optional or k in OPTIONAL_GROUPS) for k, v in value.items()
                if not (v is None or (optional and _blank(v)))}
    if isinstance(value, list):
        return [without_empty_settings(v, optional=optional) for v in value]
    return value
