"""CIFAR ResNet-50: bottleneck ResNet (He et al. 2016) with a 3×3 stride-1 stem and no max-pool.

RepDistiller ``models/resnetv2.py`` (kuangliu style; stride on the 3×3 conv).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.models._blocks import PreactBlock, StagedNet, conv_bn_relu, init_he_fan_out, stack
from kdbench.models.base import child
from kdbench.models.registry import register

_EXPANSION = 4


class Bottleneck(PreactBlock):
    """1×1-BN-ReLU -> 3×3 (stride)-BN-ReLU -> 1×1 (×4)-BN, + identity or 1×1 conv-BN, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        mid = out_ch // _EXPANSION
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        pre = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(pre), pre


class CifarBottleneckResNet(StagedNet):
    """64-channel stem, bottleneck stages of planes 64/128/256/512 (×4 out), strides 1/2/2/2."""

    def __init__(self, *, blocks: tuple[int, int, int, int], num_classes: int = 100):
        in_ch, stages = 64, []
        for planes, n, stride in zip((64, 128, 256, 512), blocks, (1, 2, 2, 2)):
            stages.append(stack(Bottleneck, in_ch, planes * _EXPANSION, n, stride))
            in_ch = planes * _EXPANSION
        super().__init__(conv_bn_relu(3, 64, 3), stages, nn.Identity(), in_ch, num_classes)
        init_he_fan_out(self)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """``bn3`` of each stage's last block (before the residual add; architectures.md §3.7)."""
        return [child(stage, -1, Bottleneck).bn3 for stage in self.stages]


@register("ResNet50", zoo="crd", family="resnet_bottleneck", paper_label="ResNet-50")
def resnet50(*, num_classes: int = 100) -> CifarBottleneckResNet:
    """RepDistiller's CIFAR ``ResNet50``: blocks (3, 4, 6, 3)."""
    return CifarBottleneckResNet(blocks=(3, 4, 6, 3), num_classes=num_classes)
