"""CIFAR ShuffleNetV1 with groups = 3 (Zhang et al. 2018); RepDistiller ``models/ShuffleNetv1.py``.

1×1 stem without max-pool, stages of 4/8/4 units with widths 240/480/960, each stage starting
with a stride-2 unit. PyTorch default init. RepDistiller ``models/ShuffleNetv1.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.models._blocks import PreactBlock, StagedNet, channel_shuffle, conv_bn_relu, stack
from kdbench.models.registry import register

_GROUPS = 3
_STEM = 24


class ShuffleUnit(PreactBlock):
    """1×1 group conv-BN-ReLU -> shuffle -> 3×3 depthwise-BN-ReLU -> 1×1 group conv-BN, then
    ``relu(branch + x)`` (stride 1) or ``relu(cat[branch, avgpool(x)])`` (stride 2, where the
    branch makes only the ``out - in`` new channels). The very first unit (24-channel input)
    uses an ungrouped first conv."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        branch_ch = out_ch - in_ch if stride == 2 else out_ch
        mid = branch_ch // 4
        self.groups = 1 if in_ch == _STEM else _GROUPS
        self.conv1 = nn.Conv2d(in_ch, mid, 1, groups=self.groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch_ch, 1, groups=_GROUPS, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_ch)
        self.pool = nn.AvgPool2d(3, 2, 1) if stride == 2 else None

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.groups)
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        pre = out + x if self.pool is None else torch.cat([out, self.pool(x)], 1)
        return F.relu(pre), pre


class CifarShuffleNetV1(StagedNet):
    """ShuffleNetV1 (g = 3) for 32×32 inputs; preact = last unit's sum/concat before its ReLU."""

    def __init__(self, *, num_classes: int = 100):
        widths, units = (_STEM, 240, 480, 960), (4, 8, 4)
        stages = [
            stack(ShuffleUnit, c_in, c_out, n, 2)
            for c_in, c_out, n in zip(widths[:-1], widths[1:], units)
        ]
        super().__init__(conv_bn_relu(3, _STEM, 1), stages, nn.Identity(), widths[-1], num_classes)


register(
    "ShuffleV1",
    zoo="crd",
    family="shufflenetv1",
    paper_label="ShuffleNetV1",
    aliases=("simkd/ShuffleV1",),
)(CifarShuffleNetV1)
