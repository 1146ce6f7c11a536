"""factory_boy factories. Models get real safetensors weights of an allowlisted architecture."""
from __future__ import annotations

import io

import factory
import numpy as np
import torch
from django.core.files.base import ContentFile

from explainers.architectures import build_model
from explainers.safe_loading import state_dict_to_bytes, weights_sha256
from studyapp import models as m

CLASS_NAMES = ["negative", "positive"]
# A small valid design (studyapp.design): 2 learning items with the model's output and the aid,
# 3 test items, one attention check; no reading delay so tests can walk through it.
SMALL_DESIGN = {"blocks": [{"phase": "learning", "n_items": 2, "show_model_output": True, "show_aid": True},
                           {"phase": "test", "n_items": 3}],
                "attention_checks": {"count": 1}, "min_instruction_seconds": 0}
N_FEATURES = 3


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def tabular_weights(seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    return state_dict_to_bytes(build_model("tabular_mlp", input_shape=(N_FEATURES,), num_classes=2))


class DatasetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = m.Dataset

    name = factory.Sequence(lambda n: f"dataset {n}")
    modality = "tabular"
    input_shape = [N_FEATURES]
    class_names = CLASS_NAMES
    feature_names = ["a", "b", "c"]
    content_sha256 = "0" * 64
    value_range = [0.0, 1.0]


class StimulusFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = m.Stimulus

    dataset = factory.SubFactory(DatasetFactory)
    index = factory.Sequence(int)
    label = factory.Sequence(lambda n: n % 2)
    split = "test"
    data = factory.LazyAttribute(lambda o: npy_bytes(np.random.default_rng(o.index).random(N_FEATURES)))


class MLModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = m.MLModel

    name = factory.Sequence(lambda n: f"model {n}")
    architecture = "tabular_mlp"
    dataset = factory.SubFactory(DatasetFactory)
    input_shape = [N_FEATURES]
    class_names = CLASS_NAMES
    weights_sha256 = factory.LazyAttribute(lambda o: weights_sha256(tabular_weights()))
    weights = factory.LazyAttribute(lambda o: ContentFile(tabular_weights(), name="w.safetensors"))


class StudyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = m.Study

    title = factory.Sequence(lambda n: f"Study {n}")
    slug = factory.Sequence(lambda n: f"study-{n}")
    model = factory.SubFactory(MLModelFactory)
    dataset = factory.SelfAttribute("model.dataset")
    consent_text = "Please take part."
    completion_code = "DONE"
    config = factory.LazyFunction(lambda: {**SMALL_DESIGN})
    debrief_text = "Some explanations you saw were altered on purpose."


class ArmFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = m.Arm

    study = factory.SubFactory(StudyFactory)
    name = factory.Sequence(lambda n: f"arm {n}")
    kind = "control"


class ParticipantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = m.Participant

    arm = factory.SubFactory(ArmFactory)
    study = factory.SelfAttribute("arm.study")


class TrialFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = m.Trial

    participant = factory.SubFactory(ParticipantFactory)
    position = factory.Sequence(int)
    phase = "test"
    task = "forward"
    stimulus = factory.SubFactory(StimulusFactory, dataset=factory.SelfAttribute("..participant.study.dataset"))


def study_with_arms(*, methods=("integrated_gradients",), hypothesis: bool = True) -> m.Study:
    """A draft study with 6 test and 4 training stimuli, a control arm and explanation arms, and
    one hypothesis unless told not to (the first explanation arm beats control: a plan needs one
    to launch)."""
    study = StudyFactory()
    StimulusFactory.create_batch(6, dataset=study.dataset, split="test")
    StimulusFactory.create_batch(4, dataset=study.dataset, split="train")
    ArmFactory(study=study, name="control", kind="control", position=0)
    for i, method in enumerate(methods, start=1):
        ArmFactory(study=study, name=method, kind="explanation", method=method, position=i)
    return with_hypothesis(study) if hypothesis else study


def _outcome_for(config: dict) -> str:
    blocks = (config or {}).get("blocks") or []
    if any(b.get("phase") == "pre_test" for b in blocks):
        return "gain"
    if blocks and not any(b.get("phase") == "test" and b.get("task", "forward") == "forward" for b in blocks):
        return "counterfactual_accuracy"
    return "test_accuracy"


def with_hypothesis(study: m.Study) -> m.Study:
    """One hypothesis, H0 (the first non-control arm beats control), unless the study has others;
    its outcome fits the study's current design (call again after changing the design)."""
    arm = study.arms.exclude(kind="control").order_by("position").first()
    others = study.hypotheses.exclude(label="H0")
    if arm is None or others.exists():
        return study
    m.Hypothesis.objects.filter(study=study, label="H0").delete()
    HypothesisFactory(study=study, arm=arm, label="H0", outcome=_outcome_for(study.config))
    return study


class HypothesisFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = m.Hypothesis

    study = factory.SelfAttribute("arm.study")
    arm = factory.SubFactory(ArmFactory, kind="explanation", method="saliency")
    label = factory.Sequence(lambda n: f"H{n + 1}")
    statement = "The arm beats control."


def image_study_with_arms(*, arms: list[dict]) -> m.Study:
    """A draft study on random 1x8x8 images (an untrained image_cnn): 8 test and 80 training items."""
    torch.manual_seed(0)
    weights = state_dict_to_bytes(build_model("image_cnn", input_shape=(1, 8, 8), num_classes=2))
    dataset = DatasetFactory(modality="image", input_shape=[1, 8, 8], feature_names=[])
    model = MLModelFactory(dataset=dataset, architecture="image_cnn", input_shape=[1, 8, 8],
                           weights=ContentFile(weights, name="w.safetensors"), weights_sha256=weights_sha256(weights))
    rng = np.random.default_rng(0)
    for i in range(88):
        StimulusFactory(dataset=dataset, index=i, label=i % 2, split="test" if i < 8 else "train",
                        data=npy_bytes(rng.random((1, 8, 8))))
    study = StudyFactory(model=model)
    ArmFactory(study=study, name="control", kind="control", position=0)
    for i, kwargs in enumerate(arms, start=1):
        ArmFactory(study=study, position=i, **kwargs)
    return with_hypothesis(study)
