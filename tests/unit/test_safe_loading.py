"""Uploaded models are weights only: pickles never load, mismatches get a clear message."""
from __future__ import annotations

import hashlib
import io
import pickle
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as safetensors_save

from explainers.architectures import build_model
from explainers.errors import ModelValidationError
from explainers.safe_loading import (
    load_model,
    load_state_dict,
    sniff_format,
    state_dict_to_bytes,
    weights_sha256,
)

torch.set_num_threads(1)


TABULAR = {"architecture": "tabular_mlp", "input_shape": [6], "class_names": ["malignant", "benign"]}
IMAGE = {"architecture": "image_cnn", "input_shape": [1, 8, 8],
         "class_names": [str(d) for d in range(10)]}


class FileCreatingPayload:
    """Unpickling this creates ``path``: a stand-in for any code an attacker wants to run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _model(spec: dict, seed: int = 0, **hyperparameters) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(spec["architecture"], input_shape=spec["input_shape"],
                        num_classes=len(spec["class_names"]), hyperparameters=hyperparameters)
    if spec["architecture"] == "tabular_mlp":
        with torch.no_grad():
            model.features.standardize.mean.copy_(torch.linspace(10.0, 20.0, 6))
            model.features.standardize.std.copy_(torch.linspace(1.0, 3.0, 6))
    return model


def _weights(state: dict[str, torch.Tensor]) -> bytes:
    return safetensors_save({k: v.contiguous() for k, v in state.items()})


def _torch_save_bytes(obj, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def _torchscript_bytes(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream; still what people upload
        torch.jit.save(torch.jit.trace(model, example), buffer)
    return buffer.getvalue()


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


@pytest.fixture
def unpickling_forbidden(monkeypatch):
    """Fail the test if anything tries to unpickle or torch.load while it runs."""
    calls: list[str] = []

    def forbidden(name):
        def _raise(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} must never be called on uploaded data")
        return _raise

    for module, name in [(pickle, "load"), (pickle, "loads"), (torch, "load"), (np, "load")]:
        monkeypatch.setattr(module, name, forbidden(f"{module.__name__}.{name}"))
    yield calls
    assert calls == []


# ---------------------------------------------------------------------------- sniff_format


def test_sniff_format_recognizes_safetensors():
    assert sniff_format(state_dict_to_bytes(_model(TABULAR))) == "safetensors"


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_sniff_format_recognizes_raw_pickles_of_every_protocol(protocol):
    assert sniff_format(pickle.dumps({"weight": [1.0, 2.0], "name": "x"}, protocol=protocol)) == "pickle"


def test_sniff_format_calls_torch_save_zip_and_legacy_files_pickles():
    state = _model(TABULAR).state_dict()
    assert sniff_format(_torch_save_bytes(state)) == "pickle"
    assert sniff_format(_torch_save_bytes(state, _use_new_zipfile_serialization=False)) == "pickle"


def test_sniff_format_recognizes_torchscript():
    assert sniff_format(_torchscript_bytes(_model(TABULAR), torch.zeros(1, 6))) == "torchscript"


def test_sniff_format_calls_numpy_object_arrays_pickles_but_not_numeric_arrays():
    assert sniff_format(_npy_bytes(np.array([{"a": 1}], dtype=object))) == "pickle"
    assert sniff_format(_npy_bytes(np.zeros(3, dtype=np.float32))) == "unknown"
    npz = io.BytesIO()
    np.savez(npz, weights=np.array([None, 1], dtype=object))
    assert sniff_format(npz.getvalue()) == "pickle"


def test_sniff_format_calls_other_zips_zip_and_other_bytes_unknown():
    assert sniff_format(_zip_bytes({"readme.txt": b"hello", "weights.csv": b"1,2"})) == "zip"
    assert sniff_format(b"") == "unknown"
    assert sniff_format(b'{"not": "safetensors"}') == "unknown"
    assert sniff_format(bytes(range(256)) * 4) == "unknown"


def test_sniff_format_does_not_unpickle_a_malicious_file(tmp_path, unpickling_forbidden):
    marker = tmp_path / "pwned"
    assert sniff_format(pickle.dumps(FileCreatingPayload(marker))) == "pickle"
    assert sniff_format(_torch_save_bytes({"w": FileCreatingPayload(marker)})) == "pickle"
    assert not marker.exists()


# ---------------------------------------------------------------------------- malicious pickles


def test_the_malicious_payload_really_runs_code_when_unpickled(tmp_path):
    # Proves the refusal tests below guard against something real.
    marker = tmp_path / "proof"
    pickle.loads(pickle.dumps(FileCreatingPayload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("packaging", ["raw pickle", "torch.save zip", "legacy torch.save"])
def test_malicious_pickle_is_refused_with_clear_message_and_never_runs(
        tmp_path, unpickling_forbidden, packaging):
    marker = tmp_path / "pwned"
    payload = {"features.fc1.weight": FileCreatingPayload(marker)}
    data = {
        "raw pickle": lambda: pickle.dumps(payload),
        "torch.save zip": lambda: _torch_save_bytes(payload),
        "legacy torch.save": lambda: _torch_save_bytes(payload, _use_new_zipfile_serialization=False),
    }[packaging]()

    with pytest.raises(ModelValidationError) as from_state_dict:
        load_state_dict(data)
    with pytest.raises(ModelValidationError) as from_model:
        load_model(weights=data, **TABULAR)

    for error in (from_state_dict, from_model):
        message = str(error.value)
        assert "Python pickle" in message
        assert "arbitrary code" in message
        assert "never load them" in message
        assert 'save_file(model.state_dict(), "model.safetensors")' in message
    assert not marker.exists()


def test_benign_torch_save_checkpoint_is_refused_too(unpickling_forbidden):
    with pytest.raises(ModelValidationError, match="Python pickle"):
        load_model(weights=_torch_save_bytes(_model(TABULAR).state_dict()), **TABULAR)


def test_numpy_object_array_is_refused_as_a_pickle(tmp_path, unpickling_forbidden):
    marker = tmp_path / "pwned"
    data = _npy_bytes(np.array([FileCreatingPayload(marker)], dtype=object))
    with pytest.raises(ModelValidationError, match="Python pickle"):
        load_state_dict(data)
    assert not marker.exists()


# ---------------------------------------------------------------------------- TorchScript


def test_torchscript_is_refused_by_default():
    data = _torchscript_bytes(_model(TABULAR), torch.zeros(1, 6))
    with pytest.raises(ModelValidationError) as error:
        load_model(weights=data, **TABULAR)
    message = str(error.value)
    assert "TorchScript files are programs" in message
    assert "refused unless the MODEL_ALLOW_TORCHSCRIPT setting is on" in message
    with pytest.raises(ModelValidationError, match="TorchScript"):
        load_state_dict(data)


def test_torchscript_is_loaded_when_allowed_and_predicts_like_the_original():
    original = _model(TABULAR)
    data = _torchscript_bytes(original, torch.zeros(1, 6))
    loaded = load_model(weights=data, allow_torchscript=True, **TABULAR)
    x = torch.randn(5, 6) * 3 + 15
    with torch.no_grad():
        assert torch.allclose(loaded(x), original(x))
    assert not loaded.training


def test_allowed_torchscript_with_wrong_number_of_outputs_is_refused():
    data = _torchscript_bytes(_model(TABULAR), torch.zeros(1, 6))
    spec = {**TABULAR, "class_names": ["a", "b", "c"]}
    with pytest.raises(ModelValidationError, match=r"returned shape \[1, 2\].*3 classes must return \[1, 3\]"):
        load_model(weights=data, allow_torchscript=True, **spec)


# ---------------------------------------------------------------------------- valid round trip


@pytest.mark.parametrize("spec", [TABULAR, IMAGE], ids=["tabular_mlp", "image_cnn"])
def test_valid_safetensors_round_trips_to_identical_predictions(spec):
    original = _model(spec, seed=3)
    loaded = load_model(weights=state_dict_to_bytes(original), **spec)
    x = torch.rand(4, *spec["input_shape"]) * (20 if spec is TABULAR else 1)
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))
    assert not loaded.training
    assert all(p.device.type == "cpu" for p in loaded.parameters())


def test_state_dict_bytes_are_deterministic_and_hashed_with_sha256():
    first, second = state_dict_to_bytes(_model(IMAGE, seed=1)), state_dict_to_bytes(_model(IMAGE, seed=1))
    assert first == second
    assert weights_sha256(first) == hashlib.sha256(first).hexdigest()
    assert first != state_dict_to_bytes(_model(IMAGE, seed=2))


def test_load_state_dict_returns_the_saved_tensors():
    model = _model(TABULAR)
    state = load_state_dict(state_dict_to_bytes(model))
    assert set(state) == set(model.state_dict())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_non_default_hyperparameters_load_when_declared():
    model = _model(TABULAR, hidden=32)
    loaded = load_model(weights=state_dict_to_bytes(model), hyperparameters={"hidden": 32}, **TABULAR)
    assert loaded.features.fc1.out_features == 32


# ---------------------------------------------------------------------------- clear errors


def _error(weights: bytes | None = None, **overrides) -> str:
    spec = {**TABULAR, **overrides}
    if weights is None:
        weights = state_dict_to_bytes(_model(TABULAR))
    with pytest.raises(ModelValidationError) as error:
        load_model(weights=weights, **spec)
    return str(error.value)


def test_unknown_architecture_lists_the_allowed_ones():
    message = _error(architecture="resnet50")
    assert "Unknown architecture 'resnet50'" in message
    assert "image_cnn, tabular_mlp" in message


def test_input_shape_of_the_wrong_rank_is_refused():
    message = _error(input_shape=[1, 8, 8])
    assert "'tabular_mlp' takes one input of shape [number of features]" in message
    assert "[1, 8, 8]" in message


def test_image_channels_that_disagree_with_the_first_convolution_are_named():
    message = _error(weights=state_dict_to_bytes(_model(IMAGE)), **{**IMAGE, "input_shape": [3, 8, 8]})
    assert "3 channel(s)" in message
    assert "'features.conv1.weight' was trained on 1 channel(s)" in message


def test_feature_count_that_disagrees_with_the_first_linear_layer_is_named():
    message = _error(input_shape=[5])
    assert "5 feature(s)" in message
    assert "'features.fc1.weight' was trained on 6 feature(s)" in message


def test_number_of_classes_that_disagrees_with_class_names_is_named():
    message = _error(class_names=["malignant", "benign", "unsure"])
    assert "'head.fc3.weight' has 2 outputs" in message
    assert "3 class names were given" in message


def test_missing_tensor_is_named():
    state = dict(_model(TABULAR).state_dict())
    del state["head.fc3.bias"]
    message = _error(weights=_weights(state))
    assert "missing 1 tensor(s)" in message
    assert "'head.fc3.bias'" in message


def test_unexpected_tensor_is_named():
    state = dict(_model(TABULAR).state_dict())
    state["head.fc4.weight"] = torch.zeros(2, 2)
    message = _error(weights=_weights(state))
    assert "1 unexpected tensor(s)" in message
    assert "'head.fc4.weight'" in message


def test_wrapper_prefix_on_every_key_gets_a_hint():
    state = {f"module.{k}": v for k, v in _model(TABULAR).state_dict().items()}
    message = _error(weights=_weights(state))
    assert "missing" in message
    assert "start with 'module.'" in message


def test_tensor_shape_mismatch_names_key_expected_and_got_shapes():
    message = _error(weights=state_dict_to_bytes(_model(TABULAR, hidden=32)))
    assert "'features.fc1.weight': expected shape [64, 6], got [32, 6]" in message
    assert "hyperparameters" in message


def test_absurd_hyperparameters_are_refused_without_building_a_huge_model():
    # On the meta device the reference costs no memory; a real build would need ~1.5 TB.
    message = _error(weights=state_dict_to_bytes(_model(IMAGE)), hyperparameters={"channels": 200_000},
                     **IMAGE)
    assert "'features.conv1.weight': expected shape [200000, 1, 3, 3], got [16, 1, 3, 3]" in message


def test_unknown_hyperparameter_is_refused():
    message = _error(hyperparameters={"depth": 3})
    assert "depth" in message
    assert "Settable hyperparameters: hidden" in message


def test_integer_weights_are_refused():
    state = dict(_model(TABULAR).state_dict())
    state["head.fc3.bias"] = torch.tensor([1, 2], dtype=torch.int64)
    message = _error(weights=_weights(state))
    assert "floating-point" in message
    assert "'head.fc3.bias' is torch.int64" in message


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_nan_or_infinite_weights_are_refused(bad_value):
    state = {k: v.clone() for k, v in _model(TABULAR).state_dict().items()}
    state["features.fc1.weight"][0, 0] = bad_value
    message = _error(weights=_weights(state))
    assert "NaN or infinite" in message
    assert "'features.fc1.weight'" in message


@pytest.mark.parametrize("class_names, expected", [
    (["malignant", ""], "position(s) 2 are empty"),
    (["benign", "benign"], "repeated: 'benign'"),
    (["only"], "at least 2 class names"),
])
def test_empty_duplicate_or_too_few_class_names_are_refused(class_names, expected):
    assert expected in _error(class_names=class_names)


def test_model_giving_non_finite_outputs_fails_the_forward_check():
    model = _model(TABULAR)
    with torch.no_grad():
        model.features.standardize.mean.zero_()
        model.features.standardize.std.zero_()  # 0 / 0 on an input of zeros
    message = _error(weights=state_dict_to_bytes(model))
    assert "NaN or infinite outputs" in message
    assert "features.standardize.std" in message


def test_empty_truncated_or_foreign_files_are_refused_clearly():
    good = state_dict_to_bytes(_model(TABULAR))
    assert "empty" in _error(weights=b"")
    assert "could not be read" in _error(weights=good[:-10])
    assert "not a safetensors file" in _error(weights=b"hello, I am a text file")
    assert "zip archive" in _error(weights=_zip_bytes({"weights.csv": b"1,2,3"}))


def test_explainers_loading_and_training_do_not_import_django():
    code = ("import sys, explainers.safe_loading, explainers.training, explainers.demo_data, "
            "explainers.errors; assert not any(m == 'django' or m.startswith('django.') "
            "for m in sys.modules), 'django imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_hyperparameter_that_is_not_a_positive_whole_number_is_refused():
    message = _error(hyperparameters={"hidden": "big"})
    assert "Hyperparameter 'hidden'" in message
    assert "positive whole number" in message
