"""Load uploaded model weights without running uploaded code.

"Models are programs": ``torch.load`` of a pickle (every ``torch.save`` .pt/.pth/.bin file, raw
pickles, numpy object arrays) can execute anything while it loads. So an uploaded model is
*weights only*, a safetensors state dict, for one of our allowlisted architectures
(``explainers.architectures``); the code that runs is always ours. Nothing in this module calls
``pickle.load``, ``torch.load`` or ``numpy.load(allow_pickle=True)`` on uploaded bytes, and
``sniff_format`` decides what a file is by looking at its bytes (and, for zips, the member
names) without deserializing it.

TorchScript archives are programs too. They are refused unless the deployment opts in
(``MODEL_ALLOW_TORCHSCRIPT``), in which case the caller passes ``allow_torchscript=True``.

Every failure is a ``ModelValidationError`` whose message a researcher reads verbatim.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import numbers
import pickletools
import re
import warnings
import zipfile
from collections.abc import Sequence

import numpy as np
import torch
from numpy.lib import format as npy_format
from safetensors import SafetensorError
from safetensors.torch import load as _safetensors_load
from safetensors.torch import save as _safetensors_save
from torch import nn

from explainers.architectures import ARCHITECTURES, build_model
from explainers.errors import ModelValidationError

__all__ = [
    "load_model",
    "load_state_dict",
    "sniff_format",
    "state_dict_to_bytes",
    "weights_sha256",
]

CONVERT_HINT = (
    'To convert a model you trust, run this where you trained it: '
    '`from safetensors.torch import save_file; save_file(model.state_dict(), "model.safetensors")` '
    'and upload model.safetensors.'
)
PICKLE_MESSAGE = (
    "This file is a Python pickle (for example a torch.save .pt, .pth or .bin file, or a numpy "
    "file holding Python objects). Pickles can run arbitrary code when they are loaded, so we "
    "never load them. Please upload the weights as a safetensors file instead. " + CONVERT_HINT
)
TORCHSCRIPT_MESSAGE = (
    "This file is a TorchScript model. TorchScript files are programs, not just weights, so "
    "they are refused unless the MODEL_ALLOW_TORCHSCRIPT setting is on (ask the platform "
    "administrator). Please upload the weights as a safetensors file for one of the built-in "
    "architectures instead. " + CONVERT_HINT
)

_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit
# Ours, far lower: a header lists each tensor's name, dtype, shape and offsets (about 100 bytes per
# tensor, a few KB for our architectures), and a JSON document of 100 MB costs gigabytes once parsed.
_MAX_HEADER_BYTES = 1024 * 1024
# A safetensors header is {name: {"dtype", "shape": [...], "data_offsets": [...]}}: 3 levels deep.
# json.loads recurses once per level, so 200,000 '[' raise RecursionError (or, with a raised recursion
# limit, overflow the C stack): the depth is checked before parsing, by a scan that cannot recurse.
_MAX_HEADER_DEPTH = 8
_JSON_SPECIAL = re.compile(rb'["\[\]{}]')
_MAX_ZIP_MEMBERS = 10_000  # more than any torch.save / TorchScript file of a state dict holds
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
# Opcodes a protocol 0/1 pickle can start with (protocol 2+ starts with PROTO, 0x80).
_PICKLE_FIRST_OPCODES = frozenset(
    op.code.encode("latin-1") for op in pickletools.opcodes if op.proto <= 1
)
_MAX_LISTED = 8  # keys named in one message before "and N more"
_MAX_INPUT_ELEMENTS = 64 * 1024 * 1024  # a test forward pass must stay cheap


# --------------------------------------------------------------------------------------------
# Format sniffing


def sniff_format(data: bytes) -> str:
    """Say what kind of file ``data`` is without deserializing it.

    Returns one of ``"safetensors"``, ``"pickle"``, ``"torchscript"``, ``"zip"``, ``"unknown"``.
    ``torch.save``'s default zip format and numpy files holding Python objects count as
    ``"pickle"``: loading them means unpickling. Raises ``ModelValidationError`` for a safetensors
    header too large or too deeply nested to parse safely.
    """
    data = bytes(data)
    if _looks_like_safetensors(data):
        return "safetensors"
    if data[:4] in _ZIP_MAGICS or _is_zip(data):
        return _sniff_zip(data)
    if data.startswith(_NPY_MAGIC):
        return "pickle" if _npy_holds_objects(io.BytesIO(data)) else "unknown"
    if _looks_like_pickle(data):
        return "pickle"
    return "unknown"


def _looks_like_safetensors(data: bytes) -> bool:
    # 8-byte little-endian header length, then that many bytes of a JSON object.
    if len(data) < 10:
        return False
    n = int.from_bytes(data[:8], "little")
    if n < 2 or n > min(len(data) - 8, _SAFETENSORS_MAX_HEADER):
        return False
    header = data[8:8 + n]
    if not header.lstrip(b" ").startswith(b"{"):
        return False
    if n > _MAX_HEADER_BYTES:
        raise ModelValidationError(
            f"The safetensors header (the list of tensors at the start of the file) is "
            f"{n / (1024 * 1024):.1f} MB; a model of the built-in architectures needs a few KB, and at "
            f"most {_MAX_HEADER_BYTES // (1024 * 1024)} MB is read. The file is damaged or was not saved "
            f"from a state_dict(). " + CONVERT_HINT)
    depth = _json_depth(header, stop_after=_MAX_HEADER_DEPTH)
    if depth > _MAX_HEADER_DEPTH:
        raise _too_deep()
    try:
        parsed = json.loads(header)  # JSON is data, not code: parsing it is safe
    except RecursionError:  # a backstop: the depth was checked above
        raise _too_deep() from None
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(parsed, dict)


def _json_depth(text: bytes, *, stop_after: int) -> int:
    """How deeply JSON text nests brackets outside strings, counting no further than ``stop_after`` + 1.

    A scan that jumps from one quote or bracket to the next (linear: a regular expression for whole
    strings would backtrack quadratically on an unterminated one full of escaped quotes)."""
    depth = deepest = 0
    position = 0
    while found := _JSON_SPECIAL.search(text, position):
        char, position = found.group(), found.end()
        if char == b'"':
            while True:  # to the closing quote: one preceded by an even number of backslashes
                end = text.find(b'"', position)
                if end < 0:
                    return deepest  # unterminated: not JSON, which json.loads reports
                start = end
                while start > position and text[start - 1] == 0x5C:
                    start -= 1
                position = end + 1
                if (end - start) % 2 == 0:
                    break
        elif char in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > stop_after:
                break
        else:
            depth -= 1
    return deepest


def _too_deep() -> ModelValidationError:
    return ModelValidationError(
        f"The safetensors header (the list of tensors at the start of the file) nests brackets more "
        f"than {_MAX_HEADER_DEPTH} levels deep; a real one is 3 levels deep (tensor name, its "
        f"description, its shape). The file is damaged or crafted, so it was not read. " + CONVERT_HINT)


def _is_zip(data: bytes) -> bool:
    try:
        return zipfile.is_zipfile(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - a malformed file is simply "not a zip"
        return False


def _sniff_zip(data: bytes) -> str:
    # zipfile parses every member header when it opens an archive (a million empty members: seconds and
    # most of a gigabyte). Every member's central-directory record starts with this signature, so its
    # count (at memchr speed) bounds the members; such a file is refused as a zip without being opened.
    if data.count(b"PK\x01\x02") > _MAX_ZIP_MEMBERS:
        return "zip"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()  # names only: nothing inside is unpickled
            has_data_pkl = any(_basename(n) == "data.pkl" for n in names)
            has_code = any(n.startswith("code/") or "/code/" in n for n in names)
            if any(_basename(n) == "constants.pkl" for n in names) or (has_code and has_data_pkl):
                return "torchscript"
            if has_data_pkl or any(n.endswith(".pkl") for n in names):
                return "pickle"
            for name in names:
                if name.endswith(".npy"):
                    with archive.open(name) as member:
                        if _npy_holds_objects(member):
                            return "pickle"
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return "unknown"
    return "zip"


def _basename(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1]


def _npy_holds_objects(stream) -> bool:
    """Read only a .npy header (a Python literal, parsed safely) and check for object dtype."""
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            _, _, dtype = npy_format.read_array_header_1_0(stream)
        else:
            _, _, dtype = npy_format.read_array_header_2_0(stream)
    except Exception:  # noqa: BLE001 - unreadable header: treat as unknown, never as data
        return False
    return bool(dtype.hasobject or dtype == np.dtype(object))


def _looks_like_pickle(data: bytes) -> bool:
    if len(data) >= 2 and data[0] == 0x80 and 1 <= data[1] <= 5:
        return True
    if not data or data[:1] not in _PICKLE_FIRST_OPCODES:
        return False
    # An old-protocol pickle: walk its opcodes (pickletools parses, it never executes) and
    # require a well-formed stream that ends in STOP.
    try:
        for opcode, _arg, _pos in pickletools.genops(data):
            if opcode.name == "STOP":
                return True
    except Exception:  # noqa: BLE001 - any parse failure means "not a pickle"
        return False
    return False


# --------------------------------------------------------------------------------------------
# Loading


def load_state_dict(data: bytes) -> dict[str, torch.Tensor]:
    """Read a safetensors file into a state dict; refuse everything else with a clear message."""
    data = bytes(data)
    if not data:
        raise ModelValidationError("The weights file is empty. Please upload a .safetensors file.")
    kind = sniff_format(data)
    if kind == "pickle":
        raise ModelValidationError(PICKLE_MESSAGE)
    if kind == "torchscript":
        raise ModelValidationError(TORCHSCRIPT_MESSAGE)
    if kind == "zip":
        raise ModelValidationError(
            "This file is a zip archive, not a safetensors file. Please upload the model's "
            "weights as a single .safetensors file. " + CONVERT_HINT)
    if kind != "safetensors":
        raise ModelValidationError(
            "This file is not a safetensors file (its first bytes do not match the format). "
            "Please upload the model's weights as a .safetensors file. " + CONVERT_HINT)
    try:
        state = _safetensors_load(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError) as exc:  # RuntimeError: RecursionError too
        raise ModelValidationError(
            "This file starts like a safetensors file but could not be read "
            f"({exc}). It may be truncated or damaged; please save and upload it again."
        ) from None
    if not state:
        raise ModelValidationError(
            "The safetensors file contains no tensors. Please save the model's state_dict() "
            "into it. " + CONVERT_HINT)
    return state


def load_model(*, architecture: str, weights: bytes, input_shape: Sequence[int],
               class_names: list[str], hyperparameters: dict | None = None,
               allow_torchscript: bool = False) -> nn.Module:
    """Build an allowlisted architecture, load uploaded weights strictly, and check it works.

    Checks, each with its own message: known architecture, input shape (rank, and agreement
    with the first layer), class names, file format, tensor dtypes and finiteness, number of
    classes in the last layer, missing / unexpected keys, tensor shapes, and finally a forward
    pass on zeros that must give (1, number of classes) finite logits. Returns the model in
    eval mode on the CPU.
    """
    arch = _check_architecture(architecture)
    shape = _check_input_shape(architecture, arch.input_rank, input_shape)
    names = _check_class_names(class_names)
    data = bytes(weights)

    if data and sniff_format(data) == "torchscript":
        if not allow_torchscript:
            raise ModelValidationError(TORCHSCRIPT_MESSAGE)
        model = _load_torchscript(data)
        _check_forward(model, shape, len(names), architecture)
        return model

    _check_hyperparameters(architecture, hyperparameters)
    state = load_state_dict(data)
    _check_tensor_values(state)
    reference = _reference_state(architecture, shape, len(names), hyperparameters)
    _check_first_layer(state, reference, architecture, shape)
    _check_num_classes(state, reference, names)
    _check_keys(state, reference, architecture)
    _check_shapes(state, reference, architecture, shape, hyperparameters)

    model = _build(architecture, shape, len(names), hyperparameters)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # every known cause is checked above; keep the safety net
        raise ModelValidationError(f"The weights do not fit architecture '{architecture}': {exc}") from None
    model = model.to("cpu").eval()
    _check_forward(model, shape, len(names), architecture)
    return model


def weights_sha256(data: bytes) -> str:
    """Hex SHA-256 of the uploaded bytes (recorded in provenance manifests)."""
    return hashlib.sha256(bytes(data)).hexdigest()


def state_dict_to_bytes(model: nn.Module) -> bytes:
    """Serialize a model's state dict as safetensors; the same weights give the same bytes."""
    state = {key: tensor.detach().to("cpu").contiguous().clone()
             for key, tensor in sorted(model.state_dict().items())}
    return _safetensors_save(state)


# --------------------------------------------------------------------------------------------
# Checks (each raises ModelValidationError with one specific message)


def _check_architecture(architecture: str):
    if architecture not in ARCHITECTURES:
        allowed = ", ".join(sorted(ARCHITECTURES))
        raise ModelValidationError(
            f"Unknown architecture '{architecture}'. Uploaded weights must be for one of the "
            f"built-in architectures: {allowed}.")
    return ARCHITECTURES[architecture]


def _check_input_shape(architecture: str, rank: int, input_shape) -> tuple[int, ...]:
    expected = "[channels, height, width], e.g. [1, 8, 8]" if rank == 3 else "[number of features], e.g. [6]"
    try:
        shape = tuple(input_shape)
        valid = all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0
                    for s in shape)
    except TypeError:
        shape, valid = (), False
    if not valid or len(shape) != rank:
        raise ModelValidationError(
            f"Architecture '{architecture}' takes one input of shape {expected} "
            f"(without the batch dimension); got {list(shape) if shape else input_shape!r}. "
            "Please give the input shape as a list of positive whole numbers.")
    if rank == 3 and min(shape[1:]) < 4:
        raise ModelValidationError(
            f"Architecture '{architecture}' needs images of at least 4x4 pixels; the input "
            f"shape {list(shape)} is {shape[1]}x{shape[2]}.")
    if math.prod(shape) > _MAX_INPUT_ELEMENTS:
        raise ModelValidationError(
            f"The input shape {list(shape)} is too large ({math.prod(shape):,} values per "
            f"input; the limit is {_MAX_INPUT_ELEMENTS:,}). Please downscale the inputs.")
    return tuple(int(s) for s in shape)


def _check_class_names(class_names) -> list[str]:
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise ModelValidationError(
            "Class names must be a list of names, one per model output, in output order.")
    names = list(class_names)
    if len(names) < 2:
        raise ModelValidationError(
            f"A classifier needs at least 2 class names, one per model output; got {len(names)}.")
    empty = [i for i, n in enumerate(names) if not isinstance(n, str) or not n.strip()]
    if empty:
        raise ModelValidationError(
            f"Class names must be non-empty text; the name(s) at position(s) "
            f"{', '.join(str(i + 1) for i in empty)} are empty or not text.")
    seen: set[str] = set()
    duplicates: list[str] = []
    for name in names:
        key = name.strip()
        if key in seen and key not in duplicates:
            duplicates.append(key)
        seen.add(key)
    if duplicates:
        raise ModelValidationError(
            f"Class names must be unique so participants can tell the answers apart; "
            f"repeated: {', '.join(repr(d) for d in duplicates)}.")
    return names


def _check_hyperparameters(architecture: str, hyperparameters) -> None:
    settable = ARCHITECTURES[architecture].hyperparameters
    if hyperparameters is None:
        return
    if not isinstance(hyperparameters, dict):
        raise ModelValidationError(
            f"Hyperparameters must be a mapping of name to value, such as "
            f"{{'{settable[0]}': 64}}; got {type(hyperparameters).__name__}.")
    unknown = sorted(set(hyperparameters) - set(settable))
    if unknown:
        raise ModelValidationError(
            f"Architecture '{architecture}' has no hyperparameter(s) {', '.join(map(repr, unknown))}. "
            f"Settable hyperparameters: {', '.join(settable)}.")
    for name, value in hyperparameters.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ModelValidationError(
                f"Hyperparameter '{name}' of architecture '{architecture}' must be a positive "
                f"whole number (the layer size used in training); got {value!r}.")


def _check_tensor_values(state: dict[str, torch.Tensor]) -> None:
    not_float = [k for k, t in state.items() if not t.is_floating_point()]
    if not_float:
        details = "; ".join(f"'{k}' is {state[k].dtype}" for k in not_float[:_MAX_LISTED])
        raise ModelValidationError(
            f"Model weights must be floating-point numbers (e.g. float32), but {details}"
            f"{_more(not_float)}. Please save the model's state_dict() from a float model.")
    not_finite = [k for k, t in state.items() if not bool(torch.isfinite(t).all())]
    if not_finite:
        raise ModelValidationError(
            "Some weights are NaN or infinite, so the model cannot give meaningful outputs: "
            f"{_names(not_finite)}. This usually means training diverged; please upload "
            "weights from a healthy checkpoint.")


def _reference_state(architecture, shape, num_classes, hyperparameters) -> dict[str, torch.Tensor]:
    # Built on the meta device: shapes only, no memory, so absurd hyperparameters cost nothing
    # before we have compared them against the uploaded tensors.
    with torch.device("meta"):
        return dict(_build(architecture, shape, num_classes, hyperparameters).state_dict())


def _build(architecture, shape, num_classes, hyperparameters) -> nn.Module:
    try:
        return build_model(architecture, input_shape=shape, num_classes=num_classes,
                           hyperparameters=hyperparameters)
    except (ValueError, TypeError) as exc:
        allowed = ", ".join(ARCHITECTURES[architecture].hyperparameters) or "none"
        raise ModelValidationError(
            f"Cannot build architecture '{architecture}' with hyperparameters "
            f"{dict(hyperparameters or {})}: {exc} Settable hyperparameters: {allowed}.") from None


def _check_first_layer(state, reference, architecture, shape) -> None:
    key = _first_matrix_key(reference)
    if key is None or key not in state or state[key].dim() != reference[key].dim():
        return
    got, expected = int(state[key].shape[1]), int(reference[key].shape[1])
    if got == expected:
        return
    if len(shape) == 3:
        raise ModelValidationError(
            f"The input shape {list(shape)} says images have {shape[0]} channel(s), but the "
            f"first convolution '{key}' was trained on {got} channel(s) (shape "
            f"{list(state[key].shape)}). Set the input shape to [{got}, height, width] or "
            "upload weights trained on the images you describe.")
    raise ModelValidationError(
        f"The input shape {list(shape)} says rows have {shape[0]} feature(s), but the first "
        f"linear layer '{key}' was trained on {got} feature(s) (shape {list(state[key].shape)}). "
        f"Set the input shape to [{got}] or upload weights trained on {shape[0]} feature(s).")


def _check_num_classes(state, reference, names: list[str]) -> None:
    key = _last_matrix_key(reference)
    if key is None or key not in state or state[key].dim() != reference[key].dim():
        return
    outputs = int(state[key].shape[0])
    if outputs != len(names):
        raise ModelValidationError(
            f"The model's last layer '{key}' has {outputs} outputs (classes), but "
            f"{len(names)} class names were given ({', '.join(names)}). Give exactly one class "
            "name per model output, in the order of the outputs.")


def _check_keys(state, reference, architecture) -> None:
    missing = [k for k in reference if k not in state]
    unexpected = [k for k in state if k not in reference]
    hint = _prefix_hint(missing, unexpected)
    if missing:
        extra = (f" The file also has tensors this architecture does not have: {_names(unexpected)}."
                 if unexpected else "")
        raise ModelValidationError(
            f"The weights file is missing {len(missing)} tensor(s) that architecture "
            f"'{architecture}' needs: {_names(missing)}.{extra}{hint} Please check that the "
            f"model was built with the '{architecture}' architecture and save its full state_dict().")
    if unexpected:
        raise ModelValidationError(
            f"The weights file has {len(unexpected)} unexpected tensor(s) that architecture "
            f"'{architecture}' does not have: {_names(unexpected)}.{hint} Was it saved from a "
            f"different model? Please upload weights for the '{architecture}' architecture only.")


def _check_shapes(state, reference, architecture, shape, hyperparameters) -> None:
    wrong = [k for k in reference if tuple(state[k].shape) != tuple(reference[k].shape)]
    if not wrong:
        return
    details = "; ".join(
        f"'{k}': expected shape {list(reference[k].shape)}, got {list(state[k].shape)}"
        for k in wrong[:_MAX_LISTED])
    hp = dict(hyperparameters or {})
    settable = ", ".join(ARCHITECTURES[architecture].hyperparameters)
    raise ModelValidationError(
        f"Some tensors have the wrong shape for architecture '{architecture}' with input shape "
        f"{list(shape)} and hyperparameters {hp or 'left at their defaults'}: {details}"
        f"{_more(wrong)}. If the model was trained with other layer sizes, set the "
        f"hyperparameters ({settable}) to the values used in training.")


def _load_torchscript(data: bytes) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # torch.jit.load is deprecated upstream; the setting exists for legacy uploads.
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure is the upload's problem
        raise ModelValidationError(
            f"This TorchScript file could not be loaded ({type(exc).__name__}: {exc}). It may "
            "be damaged or saved by an incompatible PyTorch version; please upload safetensors "
            "weights instead. " + CONVERT_HINT) from None
    return model.eval()


def _check_forward(model, shape, num_classes: int, architecture: str) -> None:
    try:
        with torch.no_grad():
            out = model(torch.zeros((1, *shape), dtype=torch.float32))
    except Exception as exc:  # noqa: BLE001 - report, don't crash, on a broken model
        raise ModelValidationError(
            f"The model failed on a test input of zeros with shape [1, {', '.join(map(str, shape))}] "
            f"({type(exc).__name__}: {exc}). Please check the input shape and architecture.") from None
    if not isinstance(out, torch.Tensor):
        raise ModelValidationError(
            f"The model must return one tensor of logits; it returned {type(out).__name__}.")
    if tuple(out.shape) != (1, num_classes):
        raise ModelValidationError(
            f"On one test input the model returned shape {list(out.shape)}, but a classifier "
            f"with {num_classes} classes must return [1, {num_classes}] (one score per class).")
    if not bool(torch.isfinite(out).all()):
        hint = (" Check 'features.standardize.std': a standard deviation of 0 divides by zero."
                if architecture == "tabular_mlp" else "")
        raise ModelValidationError(
            "The model produced NaN or infinite outputs on a test input of zeros, so its "
            f"predictions cannot be trusted.{hint}")


# --------------------------------------------------------------------------------------------
# Helpers


def _first_matrix_key(reference) -> str | None:
    # The first weight of rank >= 2 is the first conv / linear layer (state dicts keep module order).
    return next((k for k, t in reference.items() if k.endswith("weight") and t.dim() >= 2), None)


def _last_matrix_key(reference) -> str | None:
    keys = [k for k, t in reference.items() if k.endswith("weight") and t.dim() >= 2]
    return keys[-1] if keys else None


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    if not missing or not unexpected:
        return ""
    for prefix in ("module.", "model.", "net.", "_orig_mod."):
        if {k[len(prefix):] for k in unexpected if k.startswith(prefix)} >= set(missing):
            return (f" The names start with '{prefix}' (added by a wrapper such as DataParallel "
                    f"or torch.compile): save the inner model's state_dict(), or strip the prefix.")
    return ""


def _names(keys: list[str]) -> str:
    return ", ".join(f"'{k}'" for k in keys[:_MAX_LISTED]) + _more(keys)


def _more(keys: list[str]) -> str:
    return f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
