"""CIFAR ShuffleNetV2 (Ma et al. 2018) as in RepDistiller ``models/ShuffleNetv2.py``.

1×1 stem without max-pool; each stage = one stride-2 down unit + N basic units; 1×1 head conv
to 1024 channels. ``ShuffleV2`` is net size 1; SimKD's ``ShuffleV2_1_5`` is net size 1.5.
PyTorch default init. RepDistiller ``models/ShuffleNetv2.py`` (SimKD's adds ``ShuffleV2_1_5``).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.models._blocks import PreactBlock, StagedNet, channel_shuffle, conv_bn_relu
from kdbench.models.registry import register

_STEM = 24
_UNITS = (3, 7, 3)  # basic units per stage, after the down unit
# net size -> (stage widths, head width)
_CONFIGS: dict[float, tuple[tuple[int, int, int], int]] = {
    1.0: ((116, 232, 464), 1024),
    1.5: ((176, 352, 704), 1024),
}


def _conv_bn(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    """Bias-free conv (same padding) and its BN, as a list to splice into a Sequential."""
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]


def _right_branch(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """1×1 conv-BN-ReLU -> 3×3 depthwise-BN (``stride``) -> 1×1 conv-BN; the caller applies the
    final ReLU (so the basic unit can tap the map before it)."""
    return nn.Sequential(
        *_conv_bn(in_ch, out_ch, 1),
        nn.ReLU(),
        *_conv_bn(out_ch, out_ch, 3, stride, groups=out_ch),
        *_conv_bn(out_ch, out_ch, 1),
    )


class DownUnit(nn.Module):
    """Stride-2 unit: left = 3×3 depthwise-BN -> 1×1 conv-BN-ReLU; right = :func:`_right_branch`;
    concatenate (left first) and shuffle with 2 groups."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        mid = out_ch // 2
        self.left = nn.Sequential(
            *_conv_bn(in_ch, in_ch, 3, 2, groups=in_ch), *_conv_bn(in_ch, mid, 1)
        )
        self.right = _right_branch(in_ch, mid, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([F.relu(self.left(x)), F.relu(self.right(x))], 1)
        return channel_shuffle(out, 2)


class BasicUnit(PreactBlock):
    """Split channels in half; keep the first half, run the second through :func:`_right_branch`;
    concatenate and shuffle. Preact (RepDistiller quirk) = the concatenation with the branch
    before its final ReLU, *before* the shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        self.branch = _right_branch(channels // 2, channels // 2, 1)

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept, x2 = x.chunk(2, dim=1)
        branch = self.branch(x2)
        pre = torch.cat([kept, branch], 1)
        out = channel_shuffle(torch.cat([kept, F.relu(branch)], 1), 2)
        return out, pre


class CifarShuffleNetV2(StagedNet):
    """ShuffleNetV2 of a given net size; ``head_map`` = the 1024-channel map after the head
    1×1 conv-BN-ReLU (4×4 at 32×32 input), ``stages[-1]`` = the last stage output before it."""

    def __init__(self, *, net_size: float, num_classes: int = 100):
        widths, head_ch = _CONFIGS[net_size]
        stages, in_ch = [], _STEM
        for out_ch, n in zip(widths, _UNITS):
            units = [DownUnit(in_ch, out_ch), *(BasicUnit(out_ch) for _ in range(n))]
            stages.append(nn.Sequential(*units))
            in_ch = out_ch
        head = conv_bn_relu(in_ch, head_ch, 1)
        super().__init__(conv_bn_relu(3, _STEM, 1), stages, head, head_ch, num_classes)


register(
    "ShuffleV2",
    zoo="crd",
    family="shufflenetv2",
    paper_label="ShuffleNetV2",
    aliases=("simkd/ShuffleV2",),
)(partial(CifarShuffleNetV2, net_size=1.0))
register("simkd/ShuffleV2_1_5", zoo="simkd", family="shufflenetv2", paper_label="ShuffleNetV2x1.5")(
    partial(CifarShuffleNetV2, net_size=1.5)
)
