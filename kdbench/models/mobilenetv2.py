"""CIFAR MobileNetV2 (Sandler et al. 2018) as in RCO / RepDistiller ``models/mobilenetv2.py``.

Expansion T = 6, stride-2 stem, second group at stride 1, and an expansion conv in every block
(also for t = 1). ``MobileNetV2`` is width 0.5 ("mobile_half"); SimKD's ``MobileNetV2_1_0`` is
width 1.0 (registered as ``simkd/MobileNetV2x2``). RepDistiller / SimKD ``models/mobilenetv2.py``.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from kdbench.models._blocks import StagedNet, conv_bn_relu, init_he_fan_out, stack
from kdbench.models.base import child
from kdbench.models.registry import register

# (expansion t, channels c, blocks n, stride s) per group, before the width multiplier.
_GROUPS = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
# Groups ending at each tap f1..f4 (after groups 2, 3, 5, 7).
_STAGE_GROUPS = [(0, 2), (2, 3), (3, 5), (5, 7)]


class InvertedResidual(nn.Module):
    """1×1 expand-BN-ReLU -> 3×3 depthwise-BN-ReLU -> 1×1 project-BN (linear); identity residual
    when the stride is 1 and the width is unchanged."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(StagedNet):
    """Width-``width`` MobileNetV2: taps f1..f4 are linear-bottleneck outputs, so no preact;
    ``head_map`` = the 1280-channel map after the head 1×1 conv-BN-ReLU (2×2 at 32×32 input).

    Init (reference): conv ~ N(0, 2/(k·k·C_out)); BN 1/0; Linear ~ N(0, 0.01), bias 0.
    """

    def __init__(self, *, width: float, num_classes: int = 100):
        in_ch = int(32 * width)
        stem = conv_bn_relu(3, in_ch, 3, stride=2)
        groups: list[nn.Sequential] = []
        for t, c, n, s in _GROUPS:
            out_ch = int(c * width)
            groups.append(stack(partial(InvertedResidual, expansion=t), in_ch, out_ch, n, s))
            in_ch = out_ch
        stages = [nn.Sequential(*groups[a:b]) for a, b in _STAGE_GROUPS]
        head_ch = int(1280 * width) if width > 1.0 else 1280
        head = conv_bn_relu(in_ch, head_ch, 1)
        super().__init__(stem, stages, head, head_ch, num_classes, has_preact=False)
        init_he_fan_out(self)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The last (projection) BN of groups 2, 3, 5 and 7, i.e. of the block ending each tap
        f1..f4 (declared for OFD, architectures.md §3.4; a residual is added after it when the
        block has one)."""
        last_blocks = [
            child(child(stage, -1, nn.Sequential), -1, InvertedResidual) for stage in self.stages
        ]
        return [child(block.conv, -1, nn.BatchNorm2d) for block in last_blocks]


register(
    "MobileNetV2",
    zoo="crd",
    family="mobilenetv2",
    paper_label="MobileNetV2",
    aliases=("simkd/MobileNetV2",),
)(partial(CifarMobileNetV2, width=0.5))
register("simkd/MobileNetV2x2", zoo="simkd", family="mobilenetv2", paper_label="MobileNetV2x2")(
    partial(CifarMobileNetV2, width=1.0)
)
