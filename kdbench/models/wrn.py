"""Wide ResNet WRN-d-k with pre-activation blocks (Zagoruyko & Komodakis 2016), dropout 0.

RepDistiller ``models/wrn.py``. Not to be confused with
SimKD's "WRN-d-k", which are post-activation CIFAR ResNets (``simkd/resnet38x2`` etc.).

``mdistiller/wrn_d_k``: the same network as mdistiller's (and MLKD's) released ``models/cifar/wrn.py``
computes it. Its ``forward`` always builds the preact taps by applying three BNs a second time after the
logits (``f1_pre = self.block2.layer[0].bn1(f1)``, ``f2_pre = self.block3.layer[0].bn1(f2)``,
``f3_pre = self.bn1(f3)``, mdistiller/models/cifar/wrn.py:141-143). In train mode the second pass
normalises the same batch with the same statistics, so outputs and gradients are unchanged, but each of
those BNs updates its running statistics twice per forward: running ← (1−m)²·running + (1−(1−m)²)·batch
(an effective momentum of 0.19 at m = 0.1), and ``num_batches_tracked`` counts 2 per forward. Those
running statistics are what the evaluated network uses.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.models._blocks import init_he_fan_out, stack
from kdbench.models.base import Features, KDModel, child
from kdbench.models.registry import register


class WideBlock(nn.Module):
    """BN-ReLU -> 3×3 conv -> BN-ReLU -> 3×3 conv, plus the input (or, when the width changes,
    a 1×1 conv of the BN-ReLU'd input)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_normed(x, self.bn1(x))

    def forward_normed(self, x: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
        """The block given ``normed = self.bn1(x)`` (lets the caller tap that BN output)."""
        act = F.relu(normed)
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.shortcut is None else self.shortcut(act))


def _run_tapping_bn1(stage: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``stage``; also return its first block's ``bn1(x)`` (the previous stage's preact)."""
    first, *rest = stage
    assert isinstance(first, WideBlock)
    normed = first.bn1(x)
    x = first.forward_normed(x, normed)
    for block in rest:
        x = block(x)
    return x, normed


class WideResNet(KDModel):
    """Depth 6n+4: 3×3 stem conv (no BN/ReLU), three stages (strides 1, 2, 2), BN-ReLU head.

    Taps (RepDistiller): ``stages`` = raw stem/stage outputs (residual sums, never ReLU'd);
    ``preact`` replaces f1..f3 by the next BN applied to them (stage-2/3 first block's ``bn1``,
    head BN), taken from the forward pass itself instead of re-applying the BNs as RepDistiller
    does (same values; no second running-statistics update); ``head_map`` = ReLU(head BN(f3)).
    ``reapply_preact_bns``: re-apply them after the logits on every forward, as mdistiller's code does
    (module docstring): the preact taps are the second pass's outputs.
    """

    def __init__(
        self, *, depth: int, widen: int, num_classes: int = 100, reapply_preact_bns: bool = False
    ):
        super().__init__()
        self.reapply_preact_bns = reapply_preact_bns
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = stack(WideBlock, widths[0], widths[1], n, 1)
        self.block2 = stack(WideBlock, widths[1], widths[2], n, 2)
        self.block3 = stack(WideBlock, widths[2], widths[3], n, 2)
        self.bn = nn.BatchNorm2d(widths[3])
        self.classifier = nn.Linear(widths[3], num_classes)
        init_he_fan_out(self)
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: torch.Tensor) -> Features:
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2, f1_pre = _run_tapping_bn1(self.block2, f1)
        f3, f2_pre = _run_tapping_bn1(self.block3, f2)
        f3_pre = self.bn(f3)
        head_map = F.relu(f3_pre)
        pooled = torch.flatten(F.adaptive_avg_pool2d(head_map, 1), 1)
        logits = self.classifier(pooled)
        if self.reapply_preact_bns:  # mdistiller/models/cifar/wrn.py:141-143, after the logits
            f1_pre = child(self.block2, 0, WideBlock).bn1(f1)
            f2_pre = child(self.block3, 0, WideBlock).bn1(f2)
            f3_pre = self.bn(f3)
        return Features(
            stages=[f0, f1, f2, f3],
            preact=[f0, f1_pre, f2_pre, f3_pre],
            head_map=head_map,
            pooled=pooled,
            logits=logits,
        )

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BNs whose outputs are the preact taps f1..f3: stage-2 and stage-3 first blocks'
        ``bn1`` and the head BN (exact; architectures.md §3.2)."""
        return [child(self.block2, 0, WideBlock).bn1, child(self.block3, 0, WideBlock).bn1, self.bn]


# (name, depth, widen, zoo): the ``mdistiller`` zoo's forward re-applies the preact BNs (module docstring).
_VARIANTS: list[tuple[str, int, int, str]] = [
    ("wrn_16_1", 16, 1, "crd"),
    ("wrn_16_2", 16, 2, "crd"),
    ("wrn_40_1", 40, 1, "crd"),
    ("wrn_40_2", 40, 2, "crd"),
    ("mdistiller/wrn_16_1", 16, 1, "mdistiller"),
    ("mdistiller/wrn_16_2", 16, 2, "mdistiller"),
    ("mdistiller/wrn_40_1", 40, 1, "mdistiller"),
    ("mdistiller/wrn_40_2", 40, 2, "mdistiller"),
]
for _name, _depth, _widen, _zoo in _VARIANTS:
    register(_name, zoo=_zoo, family="wrn", paper_label=f"WRN-{_depth}-{_widen}")(
        partial(WideResNet, depth=_depth, widen=_widen, reapply_preact_bns=_zoo == "mdistiller")
    )
