"""Registering and loading models: allowlisted architecture + safetensors weights, validated.

PyTorch (through explainers.safe_loading) is imported inside the functions that need it, so that
importing this module (the admin does) does not load it into every web process.
"""
from __future__ import annotations

import functools
import json

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from explainers.errors import ModelValidationError
from studyapp.models import Dataset, MLModel, Stimulus
from studyapp.services.errors import ServiceError


def _validate_against_dataset(*, dataset: Dataset, input_shape: list[int], class_names: list[str]) -> list[str]:
    problems = []
    if list(input_shape) != list(dataset.input_shape):
        problems.append(f"The input shape {list(input_shape)} does not match the dataset '{dataset.name}', "
                        f"whose items have shape {list(dataset.input_shape)}.")
    if list(class_names) != list(dataset.class_names):
        missing = [c for c in dataset.class_names if c not in class_names]
        extra = [c for c in class_names if c not in dataset.class_names]
        if missing or extra:
            detail = "; ".join(filter(None, [
                f"missing from the model: {', '.join(missing)}" if missing else "",
                f"not in the dataset: {', '.join(extra)}" if extra else ""]))
            problems.append(f"The class names do not match the dataset '{dataset.name}' ({detail}).")
        else:
            problems.append(f"The class names are in a different order from the dataset's "
                            f"({', '.join(dataset.class_names)}); the model's output index i must mean "
                            f"the dataset's class i.")
    return problems


def mlmodel_register(*, name: str, architecture: str, weights: bytes, dataset: Dataset,
                     input_shape: list[int] | None = None, class_names: list[str] | None = None,
                     hyperparameters: dict | None = None, role: str = MLModel.Role.TRAINED,
                     derived_from: MLModel | None = None, training: dict | None = None,
                     metrics: dict | None = None) -> MLModel:
    """Validate uploaded weights against the architecture and the dataset, then store them.

    The bytes are only ever parsed as safetensors (or TorchScript when explicitly allowed):
    pickles are refused without being loaded.
    """
    from explainers.safe_loading import load_model, sniff_format, weights_sha256

    input_shape = list(dataset.input_shape if input_shape is None else input_shape)
    class_names = list(dataset.class_names if class_names is None else class_names)
    problems = _validate_against_dataset(dataset=dataset, input_shape=input_shape, class_names=class_names)
    if problems:
        raise ServiceError(problems)
    if MLModel.objects.filter(name=name).exists():
        raise ServiceError(f"A model named '{name}' already exists; choose another name.")
    try:
        model = load_model(architecture=architecture, weights=weights, input_shape=input_shape,
                           class_names=class_names, hyperparameters=hyperparameters,
                           allow_torchscript=settings.MODEL_ALLOW_TORCHSCRIPT)
    except ModelValidationError as exc:
        raise ServiceError(str(exc)) from None
    except RecursionError:
        # safe_loading bounds the nesting it parses; should a parser still recurse too deep, the
        # researcher gets a sentence, not a 500 and a traceback.
        raise ServiceError("The weights file is nested too deeply to be read (a damaged or crafted file). "
                           "Save the model's state_dict() with safetensors' save_file and upload it again.") from None
    fmt = MLModel.Format.TORCHSCRIPT if sniff_format(weights) == "torchscript" else MLModel.Format.SAFETENSORS
    if metrics is None:
        metrics = _test_accuracy(model=model, dataset=dataset)
    with transaction.atomic():
        record = MLModel(name=name, architecture=architecture, dataset=dataset, input_shape=input_shape,
                         class_names=class_names, hyperparameters=hyperparameters or {},
                         weights_sha256=weights_sha256(weights), format=fmt, role=role,
                         derived_from=derived_from, training=training or {}, metrics=metrics)
        record.weights.save(f"{architecture}.{fmt}", ContentFile(weights), save=False)
        record.save()
    return record


def _test_accuracy(*, model, dataset: Dataset) -> dict:
    """Held-out accuracy on the dataset's test split, recorded as the model's metrics."""
    from explainers.methods import predict

    from studyapp.services.datasets import stimuli_arrays

    rows = list(Stimulus.objects.filter(dataset=dataset, split=Stimulus.Split.TEST).only("data", "label"))
    if not rows:
        return {}
    inputs, labels = stimuli_arrays(rows, input_shape=dataset.input_shape)
    predicted, _ = predict(model, inputs, device="cpu")
    return {"test_accuracy": float((np.asarray(predicted) == labels).mean()), "test_n": len(rows)}


@functools.lru_cache(maxsize=8)
def _load_cached(weights_sha: str, name: str, architecture: str, input_shape: tuple, class_names: tuple,
                 hyperparameters_json: str):
    from explainers.safe_loading import load_model, weights_sha256

    # Through the storage, not a file path: the media may live in object storage (MEDIA_S3_BUCKET).
    with default_storage.open(name, "rb") as handle:
        data = handle.read()
    if weights_sha256(data) != weights_sha:
        # The stored file changed after registration: never run weights we did not validate.
        raise ServiceError(f"The weights file of this model no longer matches its recorded SHA-256 ({weights_sha}).")
    return load_model(architecture=architecture, weights=data, input_shape=list(input_shape),
                      class_names=list(class_names), hyperparameters=json.loads(hyperparameters_json),
                      allow_torchscript=settings.MODEL_ALLOW_TORCHSCRIPT)


def mlmodel_load(*, mlmodel: MLModel):
    """The validated torch module for a registered model (cached per process by weight hash)."""
    return _load_cached(mlmodel.weights_sha256, mlmodel.weights.name, mlmodel.architecture,
                        tuple(mlmodel.input_shape), tuple(mlmodel.class_names),
                        json.dumps(mlmodel.hyperparameters, sort_keys=True))
