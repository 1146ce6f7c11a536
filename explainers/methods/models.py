"""Model plumbing shared by explain() and predict(): devices, input checks, private copies.

The caller's model is never mutated: we work on a deep copy moved to the device, in eval mode,
with parameters frozen (attributions need gradients w.r.t. inputs only, which also saves the
weight-gradient work). Captum's hooks (DeepLift, GuidedBackprop, Grad-CAM) land on the copy.
explain() keeps its copies between calls (frozen.py); predict() and the aids take a fresh one.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from explainers.architectures import ImageCNN, TabularMLP, get_architecture

# Rough bytes of activations kept for the backward pass, per input element of one row. Errs
# high for small CNNs (cheap anyway) and is about right for ResNet-18 at 224 px.
_ACTIVATION_BYTES_PER_INPUT_ELEMENT = 4 * 100
_CPU_BUDGET_BYTES = 1 << 30
# Beyond a few thousand rows a CPU pass no longer gets faster per row (caches), and a GPU is
# saturated long before this many rows of any image we show people.
_MAX_ROWS = {"cpu": 2048, "cuda": 32768}
_NHWC_MIN_CHANNELS = 64  # see attribution_layout


@dataclass(frozen=True)
class ModelInfo:
    modality: str  # "image" or "tabular"
    channels_or_features: int
    num_classes: int


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"Unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available here.")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"Unsupported device type '{dev.type}'; use 'cpu' or 'cuda'.")
    return dev


def private_copy(model: nn.Module, device: torch.device) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    net = copy.deepcopy(model).to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def attribution_layout(net: nn.Module, device: torch.device) -> torch.memory_format:
    """Memory layout of the private copy and of image inputs in attribution passes.

    NHWC (channels-last) pays off for wide convolutions: measured on one CPU thread,
    forward+backward of a ResNet-18-sized model at 224 px ran about 6% faster in NHWC, and the
    image_cnn with 64 channels at 64 px about 6%; narrow ones lose: the demo image_cnn (16 and
    32 channels) was about 10% slower in NHWC on 8x8 digits and 30% on 32x32 images. So on the
    CPU a model is run channels-last only when a convolution has at least
    _NHWC_MIN_CHANNELS output channels. On CUDA it stays channels-last (cuDNN's preferred
    layout for convolutions; not re-measured here). The function computed is the same; only
    float rounding in the last bits differs, as between any two convolution algorithms."""
    widths = [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]
    if widths and (device.type == "cuda" or max(widths) >= _NHWC_MIN_CHANNELS):
        return torch.channels_last
    return torch.contiguous_format


def as_float_tensor(inputs: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(inputs, torch.Tensor):
        x = inputs.detach().to("cpu", torch.float32)
    else:
        try:
            x = torch.from_numpy(np.ascontiguousarray(np.asarray(inputs, dtype=np.float32)))
        except (TypeError, ValueError):
            raise ValueError("inputs must be a numeric numpy array or torch tensor.") from None
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"inputs must hold at least one stimulus along the first (batch) "
                         f"dimension; got shape {list(x.shape)}.")
    if not torch.isfinite(x).all():
        raise ValueError("inputs contain NaN or infinite values.")
    return x


def _first_layer(model: nn.Module) -> nn.Module | None:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return m
    return None


def inspect_model(net: nn.Module, x: torch.Tensor) -> ModelInfo:
    """Modality and expected input of ``net``; raises ValueError when ``x`` does not fit."""
    first = _first_layer(net)
    if isinstance(net, ImageCNN) or isinstance(first, nn.Conv2d):
        modality, size = "image", first.in_channels
        want = f"(N, {size}, H, W) images"
        fits = x.ndim == 4 and x.shape[1] == size
    elif isinstance(net, TabularMLP) or isinstance(first, nn.Linear):
        modality, size = "tabular", first.in_features
        want = f"(N, {size}) rows of {size} features"
        fits = x.ndim == 2 and x.shape[1] == size
    else:
        raise ValueError("Cannot tell whether the model takes images or tabular rows: it has no "
                         "Conv2d or Linear layer.")
    if not fits:
        hint = " (add a batch dimension for a single stimulus)" if x.ndim in (1, 3) else ""
        raise ValueError(f"The model takes inputs of shape {want}; got shape {list(x.shape)}{hint}.")
    try:
        with torch.no_grad():
            out = net(x[:1].to(next(net.parameters()).device))
    except RuntimeError as exc:
        raise ValueError(f"Inputs of shape {list(x.shape)} do not fit the model: {exc}") from None
    if out.ndim != 2 or out.shape[1] < 2:
        raise ValueError(f"The model must return class scores of shape (N, classes); "
                         f"got {list(out.shape)}.")
    return ModelInfo(modality, size, int(out.shape[1]))


def gradcam_layer_name(net: nn.Module) -> str | None:
    if isinstance(net, ImageCNN):
        return get_architecture("image_cnn").gradcam_layer
    return getattr(net, "default_gradcam_layer", None)


def default_max_batch(x: torch.Tensor, device: torch.device) -> int:
    """Rows per forward/backward pass that fit in memory (a heuristic; pass max_batch to set)."""
    row_bytes = max(1, x[0].numel() * _ACTIVATION_BYTES_PER_INPUT_ELEMENT)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        budget = free // 2
    else:
        budget = _CPU_BUDGET_BYTES
    return int(max(1, min(_MAX_ROWS[device.type], budget // row_bytes)))


def check_targets(targets, n: int, num_classes: int) -> torch.Tensor:
    t = np.asarray(targets)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"targets must hold one class index per stimulus ({n}); got shape {list(t.shape)}.")
    if t.size and not np.issubdtype(t.dtype, np.integer):
        if not np.all(np.equal(np.mod(t, 1), 0)):
            raise ValueError("targets must be integer class indices.")
    t = t.astype(np.int64)
    bad = t[(t < 0) | (t >= num_classes)]
    if bad.size:
        raise ValueError(f"Target {int(bad[0])} is out of range: the model has {num_classes} "
                         f"classes (0 to {num_classes - 1}).")
    return torch.from_numpy(t)


def predict_tensor(net: nn.Module, x: torch.Tensor, device: torch.device,
                   batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    probs = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            logits = net(x[i:i + batch_size].to(device))
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
    p = torch.cat(probs).numpy().astype(np.float32)
    return p.argmax(axis=1).astype(np.int64), p


def predict(model: nn.Module, inputs: np.ndarray | torch.Tensor, *, device: str | None = None,
            batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Predicted classes (int64, N) and softmax probabilities (float32, N x classes), batched."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    dev = resolve_device(device)
    x = as_float_tensor(inputs)
    net = private_copy(model, dev)
    inspect_model(net, x)
    return predict_tensor(net, x, dev, batch_size)
