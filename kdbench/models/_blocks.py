"""Building blocks shared by the CIFAR families (RepDistiller ``models/``; ``docs/references.md`` §Model zoos and feature taps).

Every family except WRN has the same outline: stem -> stages -> optional head conv -> global
average pool -> linear classifier (:class:`StagedNet`). A stage's preact tap is its last block's
output before the final ReLU, so blocks that define one subclass :class:`PreactBlock`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.models.base import Features, KDModel


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Bias-free ``kernel``×``kernel`` conv (same padding) -> BN -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(),
    )


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: view as (groups, C/groups), transpose, flatten back."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def init_he_fan_out(model: nn.Module) -> None:
    """Reference init of ResNet/WRN/VGG/MobileNetV2: conv ~ N(0, 2/(k·k·C_out)), bias 0; BN 1/0.

    ``kaiming_normal_(fan_out, relu)`` draws from exactly that distribution (also for depthwise
    convs, whose fan-out is k·k·C_out too), so one helper covers all four reference spellings.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


BlockFactory = Callable[[int, int, int], nn.Module]


def stack(block: BlockFactory, in_ch: int, out_ch: int, n: int, stride: int) -> nn.Sequential:
    """``n`` blocks ``block(in, out, stride)``; the first carries the stride and width change."""
    return nn.Sequential(
        *(block(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1) for i in range(n))
    )


class PreactBlock(nn.Module):
    """A block that also exposes the input of its final ReLU (the stage's preact tap)."""

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(output, output before the block's final ReLU)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_preact(x)[0]


class StagedNet(KDModel):
    """stem -> stages -> head -> global average pool -> ``classifier`` (RepDistiller tap order).

    ``stages`` taps are [stem output, each stage's output]. With ``has_preact`` every stage must
    end in a :class:`PreactBlock` and ``preact`` = [stem output, each last block's preact];
    otherwise ``preact`` is the ``stages`` list itself. ``head`` maps the last stage output to the
    map that is pooled (``nn.Identity`` for families without a head conv).
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: Sequence[nn.Sequential],
        head: nn.Module,
        num_features: int,
        num_classes: int,
        *,
        has_preact: bool = True,
    ):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head = head
        self.classifier = nn.Linear(num_features, num_classes)
        self.has_preact = has_preact

    def forward_features(self, x: torch.Tensor) -> Features:
        x = self.stem(x)
        stages, preact = [x], [x]
        for stage in self.stages:
            if self.has_preact:
                assert isinstance(stage, nn.Sequential)
                *body, last = stage
                for block in body:
                    x = block(x)
                assert isinstance(last, PreactBlock)  # every stage ends in one (class docstring)
                x, pre = last.forward_with_preact(x)
                preact.append(pre)
            else:
                x = stage(x)
            stages.append(x)
        head_map = self.head(x)
        pooled = torch.flatten(F.adaptive_avg_pool2d(head_map, 1), 1)
        return Features(
            stages=stages,
            preact=preact if self.has_preact else stages,
            head_map=head_map,
            pooled=pooled,
            logits=self.classifier(pooled),
        )
