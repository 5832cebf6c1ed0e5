"""``plugin/tinynet``: a two-stage CNN (an example plugin network), registered when kdbench calls
:func:`register_models` (entry point ``kdbench.models: tinynet``)."""

from __future__ import annotations

import torch
from kdbench.models import Features, KDModel, register
from torch import nn


class TinyNet(KDModel):
    """conv(3→c) → BN → ReLU, then a stride-2 conv(c→2c) → BN → ReLU, global average pooling, linear."""

    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        )
        self.stage = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward_features(self, x: torch.Tensor) -> Features:
        pre0 = self.stem(x)
        f0 = torch.relu(pre0)
        pre1 = self.stage(f0)
        f1 = torch.relu(pre1)
        pooled = f1.mean(dim=(2, 3))
        return Features(
            stages=[f0, f1],
            preact=[pre0, pre1],
            head_map=f1,
            pooled=pooled,
            logits=self.classifier(pooled),
        )


def register_models() -> None:
    """Register the plugin's networks (called once by kdbench's plugin loader)."""

    @register("plugin/tinynet", zoo="plugin", family="tinynet", paper_label="TinyNet")
    def tinynet(*, num_classes: int) -> KDModel:
        return TinyNet(num_classes)

    @register("plugin/tinynet-wide", zoo="plugin", family="tinynet", paper_label="TinyNet-W")
    def tinynet_wide(*, num_classes: int) -> KDModel:
        return TinyNet(num_classes, width=16)
