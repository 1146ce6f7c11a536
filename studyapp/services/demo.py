"""The embedded demo: built-in data, two deterministically trained models, one live study each.

Idempotent: every step looks for what it would create (by unique name/slug) and reuses it, so
re-running ``make demo`` is safe and fast.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from explainers.safe_loading import state_dict_to_bytes
from explainers.training import train_demo
from studyapp.models import Arm, Dataset, Hypothesis, MLModel, Stimulus, Study
from studyapp.services.datasets import stimuli_arrays
from studyapp.services.mlmodels import mlmodel_register
from studyapp.services.analysis import study_analyze
from studyapp.services.simulation import simulate_participants
from studyapp.services.studies import study_close, study_launch, study_prepare

DEMO_SEED = 0


@dataclass(frozen=True)
class DemoSpec:
    builtin: str
    architecture: str
    model_name: str
    slug: str
    title: str
    arms: tuple[dict, ...]  # besides the control arm; each gets a hypothesis against control
    design: dict = field(default_factory=dict)
    outcome: str = "gain"
    # A pilot is filled with simulated participants at these accuracies, then launched and closed.
    simulated_accuracy: dict | None = None


def _arm(name: str, method: str, manipulation: str = "none", kind: str = "explanation") -> dict:
    return {"name": name, "kind": kind, "method": method, "manipulation": manipulation}


# Real explanations, a manipulated one (the placebo: same method on a randomized model, or a map
# matched to the real one's histogram) and, for images, the natural-exemplar baseline.
COMPREHENSION = {"questions": [
    {"text": "In this study, what do you predict for each example?",
     "options": ["The correct answer", "What the computer model will answer"], "answer": 1},
    {"text": "Will the model always be right?", "options": ["Yes", "No, it makes mistakes"], "answer": 1}],
    "max_attempts": 3}
EXCLUSIONS = {"max_failed_attention_checks": 1, "total_seconds_window": [120, 3600], "straightlining_max_run": 12,
              "max_comprehension_attempts": 3}
# Digits: Hase & Bansal's within-subject design (learning without aid -> pre-test -> learning with
# the arm's aid -> post-test on the same items), then counterfactual predictions with the aid of
# the original image (its output shown).
DIGITS_DESIGN = {
    "design": "within_pre_post",
    "blocks": [{"phase": "learning", "n_items": 8, "show_model_output": True},
               {"phase": "pre_test", "n_items": 10},
               {"phase": "learning", "n_items": 8, "show_model_output": True, "show_aid": True},
               {"phase": "post_test", "n_items": 10},
               {"phase": "test", "task": "counterfactual_predict", "n_items": 6, "show_aid": True}],
    "attention_checks": {"count": 2}, "confidence": "1-7", "comprehension": COMPREHENSION,
    "min_instruction_seconds": 20, "exclusion_rules": EXCLUSIONS}
# Breast cancer: between subjects; aids while learning and in counterfactual trials, never in the
# forward test trials whose answer they would point at.
CANCER_DESIGN = {
    "blocks": [{"phase": "learning", "n_items": 8, "show_model_output": True, "show_aid": True},
               {"phase": "test", "n_items": 12},
               {"phase": "test", "task": "counterfactual_choose", "n_items": 4, "show_aid": True}],
    "attention_checks": {"count": 2}, "comprehension": COMPREHENSION, "min_instruction_seconds": 20,
    "exclusion_rules": EXCLUSIONS}
CANCER_ARMS = (_arm("integrated_gradients", "integrated_gradients"),
               _arm("feature_ablation", "feature_ablation"),
               _arm("integrated_gradients_random_matched", "integrated_gradients", "random_matched"))

# Real explanations, a manipulated one (the placebo: same method on a randomized model, or a map
# matched to the real one's histogram) and, for images, the natural-exemplar baseline.
DEMOS = (
    DemoSpec("digits", "image_cnn", "Demo digits CNN", "demo-digits",
             "How does a computer read handwritten digits?", (
                 _arm("integrated_gradients", "integrated_gradients"),
                 _arm("saliency", "saliency"),
                 _arm("integrated_gradients_randomized_model", "integrated_gradients", "randomized_model"),
                 _arm("exemplars", "exemplars", kind="baseline")), design=DIGITS_DESIGN),
    DemoSpec("breast_cancer", "tabular_mlp", "Demo breast-cancer MLP", "demo-breast-cancer",
             "How does a computer judge cell measurements?", CANCER_ARMS, design=CANCER_DESIGN,
             outcome="test_accuracy"),
    # Closed, with 60 simulated participants, so a newcomer sees a full report and exports at once.
    DemoSpec("breast_cancer", "tabular_mlp", "Demo breast-cancer MLP", "demo-breast-cancer-pilot",
             "Pilot: how does a computer judge cell measurements? (simulated participants)", CANCER_ARMS,
             # Simulated people answer in seconds: no reading time, and no total-time window (it
             # would exclude every one of them).
             design={**CANCER_DESIGN, "min_instruction_seconds": 0,
                     "exclusion_rules": {"max_failed_attention_checks": 1, "straightlining_max_run": 12}},
             outcome="test_accuracy",
             simulated_accuracy={"control": 0.62, "integrated_gradients": 0.8, "feature_ablation": 0.72,
                                 "integrated_gradients_random_matched": 0.62}),
)
DEMO_SIMULATED = 60

DEBRIEF = ("Thank you for taking part. Some participants saw no explanations, some saw real explanations of "
           "the model's answers, and some saw explanations that were deliberately altered (for example computed "
           "from a model with random weights). Comparing these groups tells us whether explanations actually "
           "help people understand the model. If you have questions, contact the researchers.")
INSTRUCTIONS = ("A computer model looks at each example and gives an answer. Your task is to predict what the model "
                "will answer, which is not always the correct answer. First you will see some examples together with "
                "the model's answers, then you will predict the model's answers yourself. Some pages show extra "
                "information that may help you; use it as you see fit.")
CONSENT = ("You will see a series of examples and predict what a computer model answers for each. "
           "The session takes about 15 minutes. Your answers are stored without your name; you may stop at "
           "any time by closing the page. This is a demonstration study of the platform.")


@dataclass
class DemoResult:
    studies: list[Study] = field(default_factory=list)
    admin_username: str = "admin"
    admin_password: str = ""
    created: list[str] = field(default_factory=list)


def _split_arrays(dataset: Dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    rows = list(Stimulus.objects.filter(dataset=dataset, split=split).order_by("index").only("data", "label"))
    return stimuli_arrays(rows, input_shape=dataset.input_shape)


def demo_model(*, spec: DemoSpec, dataset: Dataset, result: DemoResult) -> MLModel:
    existing = MLModel.objects.filter(name=spec.model_name).first()
    if existing is not None:
        return existing
    X_train, y_train = _split_arrays(dataset, Stimulus.Split.TRAIN)
    X_test, y_test = _split_arrays(dataset, Stimulus.Split.TEST)
    # explainers.training.DEMO_SETTINGS: the one statement of how the demo models are trained.
    trained = train_demo(spec.builtin, X=X_train, y=y_train, num_classes=len(dataset.class_names),
                         X_val=X_test, y_val=y_test)
    result.created.append(f"model {spec.model_name} (held-out accuracy {trained.val_accuracy:.3f})")
    return mlmodel_register(
        name=spec.model_name, architecture=spec.architecture, weights=state_dict_to_bytes(trained.model),
        dataset=dataset, hyperparameters=trained.config.get("hyperparameters", {}), training=trained.config,
        metrics={"train_accuracy": trained.train_accuracy, "test_accuracy": trained.val_accuracy,
                 "test_n": int(len(y_test))})


def demo_study(*, spec: DemoSpec, model: MLModel, dataset: Dataset, result: DemoResult, owner=None) -> Study:
    """The demo study of ``spec`` (created once); ``owner`` (make demo's admin) sees it without being
    a superuser. Tests and benchmarks that build one without an owner use it as superusers."""
    study = Study.objects.filter(slug=spec.slug).first()
    if study is not None and study.owner_id is None and owner is not None:
        # A demo made before studies had owners: without one, only superusers would see it.
        Study.objects.filter(pk=study.pk).update(owner=owner)
        study.owner = owner
    if study is None:
        with transaction.atomic():
            study = Study.objects.create(
                title=spec.title, slug=spec.slug, model=model, dataset=dataset, seed=DEMO_SEED, owner=owner,
                description=f"Built-in demo ({spec.builtin}) created by `make demo`.", consent_text=CONSENT, debrief_text=DEBRIEF,
                completion_code="DEMO-COMPLETE", screened_out_code="DEMO-SCREENED",
                failed_checks_code="DEMO-FAILED",
                instructions=INSTRUCTIONS, config=spec.design)
            control = Arm.objects.create(study=study, name="control", kind=Arm.Kind.CONTROL, position=0)
            for position, fields in enumerate(spec.arms, start=1):
                arm = Arm.objects.create(study=study, position=position, **fields)
                Hypothesis.objects.create(
                    study=study, label=f"H{position}", arm=arm, comparator=control,
                    statement=(f"Participants in the '{arm.name}' arm improve more from pre-test to post-test "
                               f"at predicting the model than the control arm." if spec.outcome == "gain" else
                               f"Participants in the '{arm.name}' arm predict the model better in the test "
                               "than the control arm."),
                    outcome=spec.outcome, direction=Hypothesis.Direction.GREATER,
                    planned_n_per_arm=study.target_per_arm)
        result.created.append(f"study {spec.slug}")
    if study.state == Study.State.DRAFT:
        study = study_prepare(study=study)  # in-process in the embedded mode
        study.refresh_from_db()
    if study.state == Study.State.READY and spec.simulated_accuracy is not None:
        # A pilot: simulated participants through the real API while the study is ready.
        simulate_participants(study=study, n=DEMO_SIMULATED, accuracy=spec.simulated_accuracy,
                              rng=np.random.default_rng(DEMO_SEED))
        result.created.append(f"{DEMO_SIMULATED} simulated participants in {spec.slug}")
    if study.state == Study.State.READY:
        # The demo launches whatever the checks found, and says so: the acknowledgement is recorded
        # with the frozen plan and shown on its Launch review page.
        study = study_launch(study=study, acknowledge_sanity_failures=True, acknowledge_spotted_placebos=True,
                             by="make demo")
    if spec.simulated_accuracy is not None and study.state == Study.State.LIVE:
        study = study_close(study=study)
        study_analyze(study=study, seed=DEMO_SEED, simulated=True)
    return study


def demo_admin(*, result: DemoResult):
    """An admin login for the demo (returned: it owns the demo studies); the password is generated
    once and kept in DATA_DIR."""
    password_file = Path(settings.DATA_DIR) / "demo-admin-password.txt"
    User = get_user_model()
    user = User.objects.filter(username=result.admin_username).first()
    if user is not None and password_file.exists():
        result.admin_password = password_file.read_text().strip()
        return user
    password = secrets.token_urlsafe(12)
    password_file.parent.mkdir(parents=True, exist_ok=True)
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    if user is None:
        user = User.objects.create_superuser(result.admin_username, "admin@example.invalid", password)
        result.created.append("admin user")
    else:
        user.set_password(password)
        user.save(update_fields=["password"])
    result.admin_password = password
    return user


def demo_setup() -> DemoResult:
    from studyapp.services.datasets import dataset_import_builtin

    result = DemoResult()
    admin = demo_admin(result=result)
    for spec in DEMOS:
        dataset = dataset_import_builtin(which=spec.builtin)
        model = demo_model(spec=spec, dataset=dataset, result=result)
        result.studies.append(demo_study(spec=spec, model=model, dataset=dataset, result=result, owner=admin))
    return result
