"""ReviewKD (Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021), as
mdistiller's ``mdistiller/distillers/ReviewKD.py`` runs it on CIFAR-100 (``configs/cifar100/reviewkd/``;
docs/references.md §Training protocols).

* Levels (shallow → deep): student ``[f1, …, fk, pool as a 1×1 map]`` (post-ReLU stage taps;
  ``student_preact`` takes the preact taps, mdistiller's ImageNet ``STU_PREACT``), teacher
  ``[f1_pre, …, fk_pre, pool as a 1×1 map]``; level i of the student is matched to level i of the
  teacher, so both must have the same number of stages (true of every pair the released scripts
  configure; :meth:`ReviewKD.supports` says why otherwise).
* One ABF per level (trained, sized with ``probe`` — the released configs' IN/OUT_CHANNELS and
  SHAPES/OUT_SHAPES are exactly the probed tap sizes): conv1 1×1 (C_s → mid, no bias) + BN; conv2
  3×3 pad 1 (mid → C_t, no bias) + BN; all levels but the deepest fuse with the residual from the
  deeper level through a 1×1 conv (2·mid → 2, bias) + sigmoid giving two per-pixel weights.
  mid = min(``max_mid_channels`` = 512, channels of the student's pooled vector), mdistiller's
  ``min(512, in_channels[-1])`` (mdistiller/distillers/ReviewKD.py:45, which ignores its config's
  MAX_MID_CHANNEL). ReviewKD's own ImageNet code fixes mid = 512 for ResNet-18 and 256 for MobileNet
  (ImageNet/models/reviewkd.py:74-83): ``max_mid_channels: 256``, variant ``imagenet-r50-mv1-rv``. conv1/conv2
  weights Kaiming-uniform (a = 1), the rest PyTorch defaults.
* Review path, deepest level first: x = conv1(tap); fuse with the residual (nearest-upsampled to
  this level's size); resize x to the teacher tap's size (nearest) when it differs; output =
  conv2(x); the residual passed on = x.
* Loss: ``losses.reviewkd`` (HCL, summed over levels); total = 1·CE +
  ``weight``·min(e / ``warmup``, 1)·HCL, e the 1-indexed epoch (mdistiller). ReviewKD's own code
  counts epochs from 0 (first epoch weight 0): variant ``rv-code``. No KD term.

Weights: β is set per pair in the released scripts (RV ``script/reviewKD.sh``; mdistiller's
resnet32x4→resnet8x4 config uses 5.0). The default 5.0 is the value of 5 of the 8 scripted CIFAR
pairs (wrn_40_2→wrn_16_2 / wrn_40_1 / ShuffleV1, resnet32x4→resnet8x4 / ShuffleV1); the
``cifar-w8`` (resnet32x4→ShuffleV2), ``cifar-w1`` (resnet110→resnet32) and ``cifar-w0.6``
(resnet56→resnet20) variants carry the others. vgg / MobileNetV2 pairs have no scripted value.

Building block of the ``reviewkd+mlkd`` / ``reviewkd+ipwd`` combinations (methods/combined.py):
everything the method does happens in ``__init__`` and :meth:`ReviewKD.distill`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdbench import losses
from kdbench.methods.base import (
    Distiller,
    MethodParams,
    Needs,
    Step,
    Variant,
    pair_name,
    probe_features,
)
from kdbench.methods.registry import register
from kdbench.models.base import Features, KDModel, child


class ReviewKDParams(MethodParams):
    ce_weight: float = 1.0
    kd_weight: float = 0.0
    weight: float = Field(5.0, ge=0.0)  # per pair in the released scripts (see module docstring)
    warmup: int = Field(20, ge=0)  # epochs of linear warm-up of the HCL weight; 0: none
    # Index the released code gives the first epoch in min(epoch / warmup, 1): 1 = mdistiller,
    # 0 = ReviewKD's own code (its first epoch has weight 0).
    warmup_first_epoch: int = Field(1, ge=0, le=1)
    student_preact: bool = False  # mdistiller STU_PREACT (its ImageNet configs)
    max_mid_channels: int = Field(512, ge=1)


class ABF(nn.Module):
    """Attention-based fusion (ABF) module of one level."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels)
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.att_conv = (
            nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        )
        nn.init.kaiming_uniform_(child(self.conv1, 0, nn.Conv2d).weight, a=1)
        nn.init.kaiming_uniform_(child(self.conv2, 0, nn.Conv2d).weight, a=1)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, out_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(conv2 output at out_size, the fused map passed to the next shallower level)``."""
        n, _, h, w = x.shape
        x = self.conv1(x)
        if self.att_conv is not None:
            assert residual is not None
            residual = F.interpolate(residual, (h, w), mode="nearest")
            z = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * z[:, 0].view(n, 1, h, w) + residual * z[:, 1].view(n, 1, h, w)
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


def _as_map(pooled: torch.Tensor) -> torch.Tensor:
    return pooled.reshape(*pooled.shape, 1, 1)


def _mismatch(s: Features, t: Features, pair: str) -> str | None:
    if len(s.stages) != len(t.stages):
        return (
            f"ReviewKD ({pair}): the student has {len(s.stages) - 1} stages and the teacher "
            f"{len(t.stages) - 1}; ReviewKD matches every student level to the teacher level at the "
            "same depth, so both need the same number of stages"
        )
    return None


@register
class ReviewKD(Distiller):
    name = "reviewkd"
    title = "ReviewKD"
    paper = "Chen et al., Distilling Knowledge via Knowledge Review, CVPR 2021"
    Params = ReviewKDParams
    params: ReviewKDParams
    needs = Needs(teacher=True)
    variants = {
        "cifar-w5": Variant(
            "RV script / mdistiller weight 5 (= default): wrn_40_2→wrn_16_2/wrn_40_1/ShuffleV1, resnet32x4→resnet8x4/ShuffleV1",
            {"weight": 5.0},
        ),
        "cifar-w8": Variant("RV script weight 8: resnet32x4→ShuffleV2", {"weight": 8.0}),
        "cifar-w1": Variant("RV script weight 1: resnet110→resnet32", {"weight": 1.0}),
        "cifar-w0.6": Variant("RV script weight 0.6: resnet56→resnet20", {"weight": 0.6}),
        "rv-code": Variant(
            "ReviewKD's own CIFAR code: warm-up counts epochs from 0 (first epoch weight 0)",
            {"warmup_first_epoch": 0},
        ),
        "imagenet-r34-r18": Variant(
            "mdistiller ImageNet ResNet-34→ResNet-18: weight 1, warm-up 1 epoch, student preact taps",
            {"weight": 1.0, "warmup": 1, "student_preact": True},
        ),
        "imagenet-r50-mv1": Variant(
            "mdistiller ImageNet ResNet-50→MobileNet-V1: weight 8, warm-up 1 epoch, student preact taps",
            {"weight": 8.0, "warmup": 1, "student_preact": True},
        ),
        "imagenet-r50-mv1-rv": Variant(
            "imagenet-r50-mv1 with ReviewKD's own ABF width for MobileNet: 256 mid-channels (its ImageNet/models/reviewkd.py:83)",
            {"weight": 8.0, "warmup": 1, "student_preact": True, "max_mid_channels": 256},
        ),
    }

    @classmethod
    def supports(
        cls, student: KDModel, teacher: KDModel | None, example: torch.Tensor | None = None
    ) -> str | None:
        """Why ReviewKD cannot distil ``teacher`` into ``student`` (``None``: it can)."""
        if teacher is None or example is None:
            return None
        s, t = probe_features(student, teacher, example)
        assert t is not None  # probed with a teacher
        return _mismatch(s, t, pair_name(student, teacher))

    def __init__(
        self,
        student: KDModel,
        teacher: KDModel | None,
        params: ReviewKDParams,
        example: torch.Tensor,
        **context: Any,
    ):
        super().__init__(student, teacher, params, example, **context)
        s, t = self.probe(example)
        assert t is not None
        s_levels, t_levels = self._student_levels(s), self._teacher_levels(t)
        mid = min(params.max_mid_channels, s_levels[-1].shape[1])
        n = len(s_levels)
        # abfs[i] serves level i (shallow → deep); built shallow first, as the references do.
        self.abfs = nn.ModuleList(
            ABF(f_s.shape[1], mid, f_t.shape[1], fuse=i < n - 1)
            for i, (f_s, f_t) in enumerate(zip(s_levels, t_levels))
        )
        self.out_sizes = [tuple(f.shape[-2:]) for f in t_levels]

    def _student_levels(self, student: Features) -> list[torch.Tensor]:
        taps = student.preact if self.params.student_preact else student.stages
        return [*taps[1:], _as_map(student.pooled)]

    @staticmethod
    def _teacher_levels(teacher: Features) -> list[torch.Tensor]:
        return [*teacher.preact[1:], _as_map(teacher.pooled)]

    def review(self, student: Features) -> list[torch.Tensor]:
        """The ABF outputs of every level (shallow → deep), computed deepest level first."""
        levels = self._student_levels(student)
        n = len(levels)
        outputs: list[torch.Tensor] = [None] * n  # type: ignore[list-item]
        residual = None
        for i in reversed(range(n)):
            outputs[i], residual = self.abfs[i](levels[i], residual, self.out_sizes[i])
        return outputs

    def warmup_factor(self, epoch: int) -> float:
        """min(e / warmup, 1) with e the epoch as the released code counts it."""
        p = self.params
        if p.warmup == 0:
            return 1.0
        return min((epoch - 1 + p.warmup_first_epoch) / p.warmup, 1.0)

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert teacher is not None
        loss = losses.reviewkd(self.review(student), self._teacher_levels(teacher))
        return student.logits, {
            "reviewkd": self.params.weight * self.warmup_factor(step.epoch) * loss
        }
