"""CIFAR ResNet-d / ResNet-dxk: post-activation basic blocks (He et al. 2016, §4.2).

As ported by Wei Yang and used by RepDistiller ``models/resnet.py``; SimKD ``models/resnet.py`` is
the same network (its ``resnet38*``/``resnet14*`` are what SimKD's paper calls "WRN-d-k").
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.models._blocks import PreactBlock, StagedNet, conv_bn_relu, init_he_fan_out, stack
from kdbench.models.base import child
from kdbench.models.registry import register


class BasicBlock(PreactBlock):
    """3×3 conv-BN-ReLU -> 3×3 conv-BN, plus identity or 1×1 conv-BN projection, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        pre = out + self.shortcut(x)
        return F.relu(pre), pre


class CifarResNet(StagedNet):
    """Depth 6n+2; stem width ``widths[0]``, then three stages of n blocks (strides 1, 2, 2)."""

    def __init__(self, *, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100):
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        channels = list(zip(widths[:-1], widths[1:]))
        stages = [
            stack(BasicBlock, c_in, c_out, n, stride)
            for (c_in, c_out), stride in zip(channels, (1, 2, 2))
        ]
        stem = conv_bn_relu(3, widths[0], 3)
        super().__init__(stem, stages, nn.Identity(), widths[-1], num_classes)
        init_he_fan_out(self)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """``bn2`` of each stage's last block (before the residual add, so OFD's margin is an
        approximation for ResNets; architectures.md §3.1)."""
        return [child(stage, -1, BasicBlock).bn2 for stage in self.stages]


_X1 = (16, 16, 32, 64)
_X2 = (16, 32, 64, 128)  # SimKD's ×2 networks keep the 16-channel stem
_X4 = (32, 64, 128, 256)  # RepDistiller's ×4 networks only double the stem

# (name, depth, widths, zoo, paper label, aliases)
_VARIANTS: list[tuple[str, int, tuple[int, int, int, int], str, str, tuple[str, ...]]] = [
    ("resnet8", 8, _X1, "crd", "ResNet-8", ()),
    ("resnet14", 14, _X1, "crd", "ResNet-14", ()),
    ("resnet20", 20, _X1, "crd", "ResNet-20", ()),
    ("resnet32", 32, _X1, "crd", "ResNet-32", ()),
    ("resnet44", 44, _X1, "crd", "ResNet-44", ()),
    ("resnet56", 56, _X1, "crd", "ResNet-56", ()),
    ("resnet110", 110, _X1, "crd", "ResNet-110", ("simkd/resnet110",)),
    ("resnet8x4", 8, _X4, "crd", "ResNet-8x4", ("simkd/resnet8x4",)),
    ("resnet32x4", 32, _X4, "crd", "ResNet-32x4", ("simkd/resnet32x4",)),
    ("simkd/resnet38", 38, _X1, "simkd", "WRN-40-1", ()),
    ("simkd/resnet116", 116, _X1, "simkd", "ResNet-116", ()),
    ("simkd/resnet14x2", 14, _X2, "simkd", "WRN-16-2", ()),
    ("simkd/resnet38x2", 38, _X2, "simkd", "WRN-40-2", ()),
    ("simkd/resnet110x2", 110, _X2, "simkd", "ResNet-110x2", ()),
    ("simkd/resnet14x4", 14, _X4, "simkd", "WRN-16-4", ()),
    ("simkd/resnet38x4", 38, _X4, "simkd", "WRN-40-4", ()),
    ("simkd/resnet110x4", 110, _X4, "simkd", "ResNet-110x4", ()),
]

for _name, _depth, _widths, _zoo, _label, _aliases in _VARIANTS:
    register(_name, zoo=_zoo, family="resnet", paper_label=_label, aliases=_aliases)(
        partial(CifarResNet, depth=_depth, widths=_widths)
    )
