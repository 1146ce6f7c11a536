"""Shared setup for the participant API tests: live studies and API calls as a browser makes them."""
from __future__ import annotations

import functools
import json
import uuid

import numpy as np
from django.core.files.base import ContentFile

from explainers.safe_loading import state_dict_to_bytes, weights_sha256
from explainers.training import train_classifier
from studyapp.models import Study
from studyapp.services.datasets.store import _png_bytes
from studyapp.services.studies import study_launch
from tests.factories import (ArmFactory, DatasetFactory, MLModelFactory, StimulusFactory, StudyFactory, npy_bytes,
                             study_with_arms, with_hypothesis)

# Within-subject pre/post with a counterfactual block of each kind (8 test images in the pool:
# 1 learning + 2 pre/post items, then counterfactual items from the rest).
WITHIN_DESIGN = {
    "design": "within_pre_post",
    "blocks": [{"phase": "learning", "n_items": 1, "show_model_output": True},
               {"phase": "pre_test", "n_items": 2},
               {"phase": "learning", "n_items": 1, "show_model_output": True, "show_aid": True,
                "feedback": "correctness"},
               {"phase": "post_test", "n_items": 2},
               {"phase": "test", "task": "counterfactual_predict", "n_items": 1, "show_aid": True},
               {"phase": "test", "task": "counterfactual_choose", "n_items": 1, "show_aid": True}],
    "counterfactual_options": 2, "attention_checks": {"count": 1}, "confidence": "1-7",
    "comprehension": {"questions": [{"text": "What do you predict?", "options": ["The truth", "The model"],
                                     "answer": 1}], "max_attempts": 2},
    "min_instruction_seconds": 0, "edits": {"grid": [2, 2]},
}


def live(study: Study, prepare, config: dict | None = None) -> Study:
    if config is not None:
        Study.objects.filter(pk=study.pk).update(config=config)
        study.refresh_from_db()
    with_hypothesis(study)  # its outcome follows the design
    study = prepare(study)
    assert study.state == Study.State.READY, study.preparation
    # Participation tests are not about the placebos' realism (tests/test_admin.py is).
    return study_launch(study=study, acknowledge_spotted_placebos=True)


def live_tabular(prepare, **fields) -> Study:
    study = study_with_arms()
    if fields:
        Study.objects.filter(pk=study.pk).update(**fields)
        study.refresh_from_db()
    return live(study, prepare)


@functools.lru_cache(maxsize=1)
def quadrant_images() -> tuple[np.ndarray, np.ndarray, bytes]:
    """120 random 1x8x8 images labelled by whether the top-left quadrant is brighter than the
    rest, and an image_cnn trained on the first 80: occluding that quadrant changes its answer,
    so counterfactual items exist (a random untrained model hardly ever changes its answer)."""
    rng = np.random.default_rng(0)
    X = rng.random((120, 1, 8, 8)).astype(np.float32)
    X[::2, :, :4, :4] += 0.35
    X = np.clip(X, 0, 1)
    y = (X[:, 0, :4, :4].mean(axis=(1, 2)) > X[:, 0].mean(axis=(1, 2)) + 0.05).astype(np.int64)
    model = train_classifier(architecture="image_cnn", X=X[40:], y=y[40:], num_classes=2, seed=0, epochs=30).model
    return X, y, state_dict_to_bytes(model)


def image_study(*, arms: list[dict]) -> Study:
    """A draft study on quadrant_images(): 40 test and 80 training items."""
    X, y, weights = quadrant_images()
    dataset = DatasetFactory(modality="image", input_shape=[1, 8, 8], feature_names=[])
    model = MLModelFactory(dataset=dataset, architecture="image_cnn", input_shape=[1, 8, 8],
                           weights=ContentFile(weights, name="w.safetensors"), weights_sha256=weights_sha256(weights))
    for i in range(len(X)):
        StimulusFactory(dataset=dataset, index=i, label=int(y[i]), split="test" if i < 40 else "train",
                        data=npy_bytes(X[i]), image=ContentFile(_png_bytes(X[i]), name="stimulus.png"))
    study = StudyFactory(model=model)
    ArmFactory(study=study, name="control", kind="control", position=0)
    for i, kwargs in enumerate(arms, start=1):
        ArmFactory(study=study, position=i, **kwargs)
    return with_hypothesis(study)


def live_images(prepare, config: dict = WITHIN_DESIGN) -> Study:
    study = image_study(arms=[{"name": "ig", "kind": "explanation", "method": "saliency"}])
    return live(study, prepare, config)


def api(study: Study, op: str) -> str:
    return f"/api/participate/{study.public_id}/{op}"


def post(client, url: str, payload: dict | None = None):
    token = client.cookies.get("csrftoken")
    headers = {"HTTP_X_CSRFTOKEN": token.value} if token else {}
    return client.post(url, data=json.dumps(payload or {}), content_type="application/json", **headers)


def enroll(client, study: Study, params: dict | None = None):
    client.get(f"/s/{study.public_id}/")
    return post(client, api(study, "consent"), {"agree": True, "params": params or {}})


def to_trials(client, study: Study) -> dict:
    """Enroll and walk to the first trial; returns the state."""
    assert enroll(client, study).status_code == 201
    state = post(client, api(study, "instructions")).json()
    if state["step"] == "comprehension":
        state = post(client, api(study, "comprehension"), {"answers": [1]}).json()["state"]
    assert state["step"] == "trials", state
    return state


def answer_body(answer: int = 0, **extra) -> dict:
    return {"idempotency_key": str(uuid.uuid4()), "answer": answer, "client_rt_ms": 1234, **extra}
