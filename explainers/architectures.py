"""Built-in, allowlisted model architectures.

Uploaded models are *weights only* (safetensors state dicts) for one of these architectures: the
code that runs is always ours ("models are programs": a pickled module can execute anything).

Every ReLU is its own ``nn.ReLU`` module, used once, so Captum's DeepLift and GuidedBackprop can
hook them (a reused ``self.relu`` raises there). Layers carry stable names (``features.conv1``,
``head.fc2``...) because manipulations (cascading randomization) and Grad-CAM address layers by
name, and those names are recorded in every explanation's configuration.

Inputs are raw model inputs: images as float tensors (N, C, H, W) scaled to [0, 1]; tabular rows
as raw feature values (N, F). The tabular MLP standardizes inside the model (buffers saved with
the weights), so attributions are in the units a researcher uploaded.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


class Standardize(nn.Module):
    """(x - mean) / std with mean and std as buffers, saved in the state dict."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ImageCNN(nn.Module):
    """Small CNN for small images (the demo uses 1x8x8 digits).

    ``features`` ends in the penultimate representation (used for exemplars and OOD scores);
    ``head`` maps it to logits. ``features.relu2`` is the last convolutional block's output after
    its ReLU: Grad-CAM's default layer, as in the original (Selvaraju et al.: the last convolutional
    layer's rectified feature maps), not ``features.conv2`` before the ReLU.
    """

    def __init__(self, *, input_shape: tuple[int, int, int], num_classes: int,
                 channels: int = 16, hidden: int = 64) -> None:
        super().__init__()
        c, h, w = input_shape
        if h < 4 or w < 4:
            raise ValueError(f"image_cnn needs images of at least 4x4 pixels, got {h}x{w}")
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(c, channels, kernel_size=3, padding=1)),
            ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1)),
            ("relu2", nn.ReLU()),
            ("pool", nn.AdaptiveAvgPool2d((4, 4))),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(2 * channels * 16, hidden)),
            ("relu3", nn.ReLU()),
        ]))
        self.head = nn.Sequential(OrderedDict([("fc2", nn.Linear(hidden, num_classes))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TabularMLP(nn.Module):
    """MLP for tabular rows, standardizing raw features inside the model."""

    def __init__(self, *, input_shape: tuple[int], num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        (f,) = input_shape
        self.features = nn.Sequential(OrderedDict([
            ("standardize", Standardize(f)),
            ("fc1", nn.Linear(f, hidden)),
            ("relu1", nn.ReLU()),
            ("fc2", nn.Linear(hidden, hidden // 2)),
            ("relu2", nn.ReLU()),
        ]))
        self.head = nn.Sequential(OrderedDict([("fc3", nn.Linear(hidden // 2, num_classes))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class Architecture:
    name: str
    modality: str  # "image" or "tabular"
    input_rank: int  # 3 for (C, H, W), 1 for (F,)
    builder: Callable[..., nn.Module]
    hyperparameters: tuple[str, ...]  # keyword arguments a researcher may set
    gradcam_layer: str | None  # default Grad-CAM layer by module name: last conv block, after its ReLU
    description: str


ARCHITECTURES: dict[str, Architecture] = {
    "image_cnn": Architecture(
        name="image_cnn", modality="image", input_rank=3, builder=ImageCNN,
        hyperparameters=("channels", "hidden"), gradcam_layer="features.relu2",
        description="Two 3x3 convolutions, adaptive pooling to 4x4, two linear layers.",
    ),
    "tabular_mlp": Architecture(
        name="tabular_mlp", modality="tabular", input_rank=1, builder=TabularMLP,
        hyperparameters=("hidden",), gradcam_layer=None,
        description="Standardization, two ReLU hidden layers, linear output.",
    ),
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"Unknown architecture '{name}'. Allowed architectures: {known}.") from None


def build_model(name: str, *, input_shape: tuple[int, ...] | list[int], num_classes: int,
                hyperparameters: dict | None = None) -> nn.Module:
    """Instantiate an allowlisted architecture (random weights) in eval mode."""
    arch = get_architecture(name)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != arch.input_rank or any(s <= 0 for s in shape):
        expected = "(channels, height, width)" if arch.input_rank == 3 else "(features,)"
        raise ValueError(f"Architecture '{name}' takes inputs of shape {expected}; got {list(shape)}.")
    if num_classes < 2:
        raise ValueError(f"A classifier needs at least 2 classes; got {num_classes}.")
    hp = dict(hyperparameters or {})
    unknown = set(hp) - set(arch.hyperparameters)
    if unknown:
        raise ValueError(f"Unknown hyperparameters for '{name}': {sorted(unknown)}; "
                         f"allowed: {list(arch.hyperparameters)}.")
    model = arch.builder(input_shape=shape, num_classes=num_classes, **hp)
    return model.eval()
