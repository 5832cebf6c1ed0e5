"""ImageNet ResNet-18/34/50/101/152 (He et al. 2016), torchvision's definition ("v1.5": the stride of a
bottleneck sits on its 3×3 conv), with mdistiller's feature taps (``mdistiller/models/imagenet/resnet.py``).

The module tree and parameter names are torchvision's (``conv1``, ``bn1``, ``layer1``…``layer4``,
``fc``; blocks ``conv1``/``bn1``/…/``downsample``), so an IMAGENET1K_V1 state dict loads strictly and
the logits equal ``torchvision.models.resnetXX``'s on the same weights. mdistiller moves each block's
final ReLU into the next block; the logits are unchanged by that, and the taps it defines are:
``preact`` = [stem after BN, each layer's last block output before its final ReLU], ``stages`` = the
ReLU of each (the stem tap is taken before the max-pool). BN-before-ReLU = the last block's final BN of
layers 2–4 (mdistiller skips layer 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.models._blocks import PreactBlock, init_he_fan_out
from kdbench.models.base import Features, KDModel
from kdbench.models.registry import register

IMAGENET_INPUT_SIZE = 224
IMAGENET_CLASSES = 1000


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    """torchvision's projection shortcut (1×1 conv with the stride + BN) where the shape changes."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock(PreactBlock):
    """3×3 (stride)-BN-ReLU -> 3×3-BN, + identity or projection; the final ReLU is the preact split."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(in_ch, planes, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        pre = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(pre), pre


class Bottleneck(PreactBlock):
    """1×1-BN-ReLU -> 3×3 (stride)-BN-ReLU -> 1×1 (×4)-BN, + identity or projection."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = _downsample(in_ch, planes * 4, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        pre = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(pre), pre


class ImageNetResNet(KDModel):
    """7×7/2 conv-BN-ReLU stem, 3×3/2 max-pool, four layers of widths 64/128/256/512 (×expansion),
    global average pool, ``fc``. Init as torchvision's (``zero_init_residual=False``): convs
    N(0, 2/(k·k·C_out)), BN 1/0, ``fc`` PyTorch's default."""

    # Added by name (``add_module``), as torchvision names them.
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(
        self,
        *,
        block: type[BasicBlock | Bottleneck],
        blocks: tuple[int, int, int, int],
        num_classes: int = IMAGENET_CLASSES,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = 64
        for i, (planes, n, stride) in enumerate(
            zip((64, 128, 256, 512), blocks, (1, 2, 2, 2)), start=1
        ):
            layer = []
            for j in range(n):
                layer.append(block(in_ch, planes, stride if j == 0 else 1))
                in_ch = planes * block.expansion
            self.add_module(f"layer{i}", nn.Sequential(*layer))
        self.fc = nn.Linear(in_ch, num_classes)
        init_he_fan_out(self)

    @property
    def classifier(self) -> nn.Linear:  # type: ignore[override]
        """torchvision calls the classifier ``fc``; kdbench reads it under this name."""
        return self.fc

    @property
    def layers(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_features(self, x: torch.Tensor) -> Features:
        stem = self.bn1(self.conv1(x))
        x = F.relu(stem)
        stages, preact = [x], [stem]
        x = self.maxpool(x)
        for layer in self.layers:
            *body, last = layer
            for blk in body:
                x = blk(x)
            assert isinstance(last, PreactBlock)
            x, pre = last.forward_with_preact(x)
            stages.append(x)
            preact.append(pre)
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return Features(
            stages=stages, preact=preact, head_map=x, pooled=pooled, logits=self.fc(pooled)
        )

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """mdistiller's list: the final BN (``bn2`` / ``bn3``) of the last block of layers 2–4, i.e. of the
        preact taps f2..f4 (the residual is added after it)."""
        return [_last_bn(layer) for layer in self.layers[1:]]


def _last_bn(layer: nn.Sequential) -> nn.BatchNorm2d:
    """The final BN of ``layer``'s last block."""
    block = layer[-1]
    assert isinstance(block, BasicBlock | Bottleneck)
    return block.last_bn


def _register(
    name: str, label: str, block: type[BasicBlock | Bottleneck], blocks: tuple[int, int, int, int]
) -> None:
    def factory(*, num_classes: int = IMAGENET_CLASSES) -> ImageNetResNet:
        return ImageNetResNet(block=block, blocks=blocks, num_classes=num_classes)

    factory.__doc__ = (
        f"torchvision ``{name.removeprefix('imagenet/')}``: {block.__name__} layers {blocks}."
    )
    register(
        name,
        zoo="imagenet",
        family="imagenet_resnet",
        paper_label=label,
        input_size=IMAGENET_INPUT_SIZE,
    )(factory)


for _name, _label, _block, _blocks in (
    ("imagenet/resnet18", "ResNet-18", BasicBlock, (2, 2, 2, 2)),
    ("imagenet/resnet34", "ResNet-34", BasicBlock, (3, 4, 6, 3)),
    ("imagenet/resnet50", "ResNet-50", Bottleneck, (3, 4, 6, 3)),
    ("imagenet/resnet101", "ResNet-101", Bottleneck, (3, 4, 23, 3)),
    ("imagenet/resnet152", "ResNet-152", Bottleneck, (3, 8, 36, 3)),
):
    _register(_name, _label, _block, _blocks)
