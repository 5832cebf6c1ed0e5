"""ImageNet MobileNets: MobileNet-V1 as mdistiller defines it, and torchvision's MobileNetV2
(torchvision ``models/mobilenetv2.py``).

* MobileNet-V1 (Howard et al. 2017; mdistiller ``models/imagenet/mobilenetv1.py``, the ResNet-50 →
  MobileNet student of the DIST / DKD / ReviewKD / OFD tables): 3×3/2 conv-BN-ReLU (32), then 13
  depthwise-separable units (dw 3×3-BN-ReLU, pw 1×1-BN-ReLU), global average pool, ``fc``; 4 231 976
  parameters. Module tree and names as mdistiller's (``model.<i>.<j>``, ``fc``); PyTorch's default
  init (the reference sets none). Taps: f1..f4 = units 3, 5, 11, 13 (128@56, 256@28, 512@14,
  1024@7); ``preact`` = their outputs before the final ReLU, ``stages`` = after it; f0 = the stem
  output (mdistiller has no stem tap; kdbench's methods read f1..fk). BN-before-ReLU = those units'
  pointwise BN.
* ``imagenet/mobilenet_v1_tf_init``: the same network initialised as DIST's code base does
  (hunto/image_classification_sota lib/models/mobilenet_v1.py:5-20, 66-67, "as per Tensorflow Official
  impl"): every conv N(0, √(2 / (k_h·k_w·C_out))) (fan-out, so a depthwise 3×3 over C channels has
  std √(2 / 9C)), BN weight 1 / bias 0, ``fc`` U(±1/√num_classes) (its fan-out) with bias 0.
* MobileNetV2 (Sandler et al. 2018): torchvision's ``mobilenet_v2`` (3 504 872 parameters; dropout 0.2
  before the classifier), module names as torchvision's except its ``classifier.1`` is ``classifier``
  (:func:`from_torchvision_state`). Taps at strides 4/8/16/32: the outputs of ``features`` 3, 6, 13 and
  17 (24@56, 32@28, 96@14, 320@7; linear bottlenecks, so no preact); f0 = the stem (32@112);
  ``head_map`` = the 1280-channel map of ``features.18``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.models._blocks import init_he_fan_out
from kdbench.models.base import Features, KDModel, child
from kdbench.models.imagenet_resnet import IMAGENET_CLASSES, IMAGENET_INPUT_SIZE
from kdbench.models.registry import register

# MobileNet-V1 depthwise-separable units (output width, stride), mdistiller's order.
_V1_UNITS = (
    [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]
    + [(512, 1)] * 5
    + [(1024, 2), (1024, 1)]
)
_V1_TAPS = (3, 5, 11, 13)  # indices in ``model`` (0 = stem) of the units ending f1..f4


def _conv_bn_relu(
    in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(),
    ]


def init_tf_fan_out(model: nn.Module) -> None:
    """DIST's ``_initialize_weight_goog`` (ics lib/models/mobilenet_v1.py:5-20), applied in ``modules()`` order:
    conv N(0, √(2 / (k_h·k_w·C_out))), bias 0; BN 1 / 0; Linear U(±1/√out_features), bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(
                m.weight,
                0.0,
                math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)),
            )
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.weight.shape[0])
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


class MobileNetV1(KDModel):
    """mdistiller's ImageNet MobileNet-V1 (module docstring). ``init``: ``pytorch`` (PyTorch's defaults, as
    mdistiller) or ``tf`` (DIST's code base, :func:`init_tf_fan_out`)."""

    def __init__(
        self, *, num_classes: int = IMAGENET_CLASSES, init: Literal["pytorch", "tf"] = "pytorch"
    ):
        super().__init__()
        units = [nn.Sequential(*_conv_bn_relu(3, 32, 3, 2))]
        in_ch = 32
        for out_ch, stride in _V1_UNITS:
            units.append(
                nn.Sequential(
                    *_conv_bn_relu(in_ch, in_ch, 3, stride, groups=in_ch),
                    *_conv_bn_relu(in_ch, out_ch, 1, 1),
                )
            )
            in_ch = out_ch
        self.model = nn.Sequential(*units)
        self.fc = nn.Linear(in_ch, num_classes)
        if init == "tf":
            init_tf_fan_out(self)
        elif init != "pytorch":
            raise ValueError(f"MobileNetV1 init must be 'pytorch' or 'tf', not {init!r}")

    @property
    def classifier(self) -> nn.Linear:  # type: ignore[override]
        """mdistiller calls the classifier ``fc``; kdbench reads it under this name."""
        return self.fc

    def forward_features(self, x: torch.Tensor) -> Features:
        x = self.model[0](x)
        stages, preact = [x], [x]
        start = 1
        for end in _V1_TAPS:
            x = self.model[start:end](x)
            pre = child(self.model, end, nn.Sequential)[:-1](x)  # the unit without its final ReLU
            x = F.relu(pre)
            stages.append(x)
            preact.append(pre)
            start = end + 1
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return Features(
            stages=stages, preact=preact, head_map=x, pooled=pooled, logits=self.fc(pooled)
        )

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The pointwise BN of units 3, 5, 11, 13: exactly the BN whose output is each preact tap."""
        return [child(child(self.model, i, nn.Sequential), -2, nn.BatchNorm2d) for i in _V1_TAPS]


# torchvision MobileNetV2 inverted-residual settings (expansion t, channels c, blocks n, stride s).
_V2_SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
_V2_TAPS = (
    3,
    6,
    13,
    17,
)  # indices in ``features`` of the blocks ending f1..f4 (strides 4, 8, 16, 32)
_V2_HEAD = 1280


def _conv_bn_relu6(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation`` with ReLU6 (conv ``.0``, BN ``.1``)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(),
    )


class InvertedResidual(nn.Module):
    """[1×1 expand-BN-ReLU6 (t > 1)] -> 3×3 depthwise-BN-ReLU6 -> 1×1 project -> BN; identity residual
    at stride 1 with unchanged width (torchvision's layout: ``conv.<i>``)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = [_conv_bn_relu6(in_ch, hidden, 1)] if expansion != 1 else []
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(KDModel):
    """torchvision's ImageNet MobileNetV2, width 1.0 (module docstring). Init as torchvision's: convs
    N(0, 2/(k·k·C_out)), BN 1/0, classifier N(0, 0.01) and bias 0."""

    def __init__(self, *, num_classes: int = IMAGENET_CLASSES, dropout: float = 0.2):
        super().__init__()
        blocks: list[nn.Module] = [_conv_bn_relu6(3, 32, 3, 2)]
        in_ch = 32
        for t, c, n, s in _V2_SETTINGS:
            for i in range(n):
                blocks.append(InvertedResidual(in_ch, c, s if i == 0 else 1, t))
                in_ch = c
        blocks.append(_conv_bn_relu6(in_ch, _V2_HEAD, 1))
        self.features = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(_V2_HEAD, num_classes)
        init_he_fan_out(self)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: torch.Tensor) -> Features:
        x = self.features[0](x)
        stages = [x]
        start = 1
        for end in _V2_TAPS:
            x = self.features[start : end + 1](x)
            stages.append(x)
            start = end + 1
        head_map = self.features[start:](x)
        pooled = torch.flatten(F.adaptive_avg_pool2d(head_map, 1), 1)
        return Features(
            stages=stages,
            preact=stages,
            head_map=head_map,
            pooled=pooled,
            logits=self.classifier(self.dropout(pooled)),
        )

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The projection BN of the blocks ending f1..f4 (as the CIFAR MobileNetV2 declares it)."""
        return [
            child(child(self.features, i, InvertedResidual).conv, -1, nn.BatchNorm2d)
            for i in _V2_TAPS
        ]

    @staticmethod
    def from_torchvision_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A torchvision ``mobilenet_v2`` state dict under kdbench's names (``classifier.1.*`` -> ``classifier.*``)."""
        return {
            (
                "classifier." + k.removeprefix("classifier.1.")
                if k.startswith("classifier.1.")
                else k
            ): v
            for k, v in state.items()
        }


register(
    "imagenet/mobilenet_v1",
    zoo="imagenet",
    family="imagenet_mobilenet_v1",
    paper_label="MobileNet",
    input_size=IMAGENET_INPUT_SIZE,
)(MobileNetV1)
register(
    "imagenet/mobilenet_v1_tf_init",
    zoo="imagenet",
    family="imagenet_mobilenet_v1",
    paper_label="MobileNet",
    input_size=IMAGENET_INPUT_SIZE,
)(partial(MobileNetV1, init="tf"))
register(
    "imagenet/mobilenet_v2",
    zoo="imagenet",
    family="imagenet_mobilenet_v2",
    paper_label="MobileNetV2",
    input_size=IMAGENET_INPUT_SIZE,
)(MobileNetV2)
