"""A ResNet-18-sized image classifier built to be hook-friendly (benchmarks, large-image tests).

torchvision's ResNet reuses one ``self.relu`` module several times per block, which Captum's
DeepLift and GuidedBackprop reject (they hook each ReLU module once). Here every ReLU use is its
own ``nn.ReLU`` module, and the residual sum is a plain tensor addition, so every gradient
method runs on it. The layer sizes match ResNet-18 (11.7 M parameters, about 1.8 G
multiply-adds per 224x224 image), so speed measured here transfers to the real thing.

This is not an allowlisted upload architecture (see ``architectures.py``); it has no weights of
its own and is used with random weights for speed measurements.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)),
                ("bn", nn.BatchNorm2d(out_channels)),
            ]))
        # A separate module for the ReLU after the residual sum: one module per use.
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.downsample(x))


class ResNet18Like(nn.Module):
    """ResNet-18 layout; ``features.layer4`` is the last convolutional stage (Grad-CAM layer)."""

    default_gradcam_layer = "features.layer4"

    def __init__(self, *, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        widths = (64, 128, 256, 512)
        layers: list[tuple[str, nn.Module]] = [
            ("conv1", nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)),
            ("bn1", nn.BatchNorm2d(64)),
            ("relu1", nn.ReLU()),
            ("maxpool", nn.MaxPool2d(3, stride=2, padding=1)),
        ]
        in_ch = 64
        for i, width in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            layers.append((f"layer{i}", nn.Sequential(
                BasicBlock(in_ch, width, stride), BasicBlock(width, width, 1))))
            in_ch = width
        layers += [("avgpool", nn.AdaptiveAvgPool2d((1, 1))), ("flatten", nn.Flatten())]
        self.features = nn.Sequential(OrderedDict(layers))
        self.head = nn.Sequential(OrderedDict([("fc", nn.Linear(512, num_classes))]))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
