"""CIFAR VGG with BatchNorm (Simonyan & Zisserman 2015 configs "S"/A/B/D/E), no hidden FC layers.

RepDistiller ``models/vgg.py`` (SimKD's ``vgg8``/``vgg13`` are the same). Five conv blocks; 2×2 max-pools after blocks 0-2 (RepDistiller's
extra pool after block 3 only fires for 64×64 inputs, so it does not exist in this CIFAR zoo).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.models._blocks import PreactBlock, StagedNet, init_he_fan_out
from kdbench.models.base import child
from kdbench.models.registry import register


def _convs(in_ch: int, widths: list[int]) -> list[nn.Module]:
    """3×3 conv (with bias) -> BN -> ReLU per width, without the final ReLU."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_ch, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU()]
        in_ch = width
    return layers[:-1]


class VGGBlock(PreactBlock):
    """One VGG block; its preact is the output of the block's last BN."""

    def __init__(self, in_ch: int, widths: list[int]):
        super().__init__()
        self.layers = nn.Sequential(*_convs(in_ch, widths))

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = self.layers(x)
        return F.relu(pre), pre


class CifarVGG(StagedNet):
    """``cfg`` = channel list of each of the five blocks; taps are taken before each max-pool.

    Init (reference): conv ~ N(0, 2/(k·k·C_out)), bias 0; BN 1/0; Linear ~ N(0, 0.01), bias 0.
    """

    def __init__(self, *, cfg: list[list[int]], num_classes: int = 100):
        stem = nn.Sequential(*_convs(3, cfg[0]), nn.ReLU())
        stages = []
        for i in range(1, 5):
            pool = [nn.MaxPool2d(2, 2)] if i < 4 else []  # after blocks 0-2 only (CIFAR)
            stages.append(nn.Sequential(*pool, VGGBlock(cfg[i - 1][-1], cfg[i])))
        super().__init__(stem, stages, nn.Identity(), cfg[-1][-1], num_classes)
        init_he_fan_out(self)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The last BN of blocks 1-4, whose outputs are the preact taps (exact; architectures.md §3.3)."""
        return [
            child(child(stage, -1, VGGBlock).layers, -1, nn.BatchNorm2d) for stage in self.stages
        ]


# name -> (channel list of each block, aliases)
_CFGS: dict[str, tuple[list[list[int]], tuple[str, ...]]] = {
    "vgg8": ([[64], [128], [256], [512], [512]], ("simkd/vgg8",)),
    "vgg11": ([[64], [128], [256, 256], [512, 512], [512, 512]], ()),
    "vgg13": ([[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]], ("simkd/vgg13",)),
    "vgg16": ([[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3], ()),
    "vgg19": ([[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4], ()),
}
for _name, (_cfg, _aliases) in _CFGS.items():
    register(_name, zoo="crd", family="vgg", paper_label=f"VGG-{_name[3:]}", aliases=_aliases)(
        partial(CifarVGG, cfg=_cfg)
    )
