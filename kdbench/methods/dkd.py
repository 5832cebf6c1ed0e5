"""DKD — Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu & Liang, CVPR 2022, Eq. 7).

Total = ce_weight·CE + weight · min(epoch / warmup, 1) · (α·TCKD + β·NCKD) (``losses.dkd``), the
loss of megvii-research/mdistiller's ``DKD.py`` with its 1-indexed epoch warm-up. Defaults are the
mdistiller CIFAR-100 configs (CE 1, α 1, β 8, T 4, warm-up 20 epochs); β is set per pair in those
configs (``configs/cifar100/dkd/``): the ``cifar-beta2`` / ``cifar-beta6`` variants carry the
other two CIFAR values and the ``imagenet-*`` variants the ImageNet configs (T 1, warm-up 1).
The paper and the code agree; ``weight`` (default 1) is kdbench's overall multiplier of the term.
"""

from __future__ import annotations

import torch
from pydantic import Field

from kdbench import losses
from kdbench.methods.base import Distiller, MethodParams, Needs, Step, Variant
from kdbench.methods.registry import register
from kdbench.models.base import Features


class DKDParams(MethodParams):
    ce_weight: float = 1.0
    weight: float = 1.0
    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    warmup: int = Field(20, ge=1)  # epochs of linear warm-up: factor min(epoch / warmup, 1)


def warmup_factor(epoch: int, warmup: int) -> float:
    """mdistiller's logit-loss warm-up, min(epoch / warmup, 1) with a 1-indexed epoch."""
    return min(epoch / warmup, 1.0)


@register
class DKD(Distiller):
    name = "dkd"
    title = "DKD"
    paper = "Zhao et al., Decoupled Knowledge Distillation, CVPR 2022"
    Params = DKDParams
    params: DKDParams
    needs = Needs(teacher=True, teacher_logits_only=True)
    variants = {
        "cifar": Variant(
            "mdistiller CIFAR-100 default: CE 1, α 1, β 8, T 4, warm-up 20",
            {"beta": 8.0, "temperature": 4.0, "warmup": 20},
        ),
        "cifar-beta2": Variant(
            "mdistiller CIFAR-100 β = 2 pairs (resnet56→resnet20, resnet110→resnet32/resnet20)",
            {"beta": 2.0},
        ),
        "cifar-beta6": Variant(
            "mdistiller CIFAR-100 β = 6 pairs (vgg13→vgg8, vgg13→MobileNetV2, wrn_40_2→wrn_16_2/wrn_40_1/MobileNetV2/resnet8x4)",
            {"beta": 6.0},
        ),
        "imagenet-r34-r18": Variant(
            "mdistiller ImageNet ResNet-34→ResNet-18: β 0.5, T 1, warm-up 1",
            {"beta": 0.5, "temperature": 1.0, "warmup": 1},
        ),
        "imagenet-r50-mv1": Variant(
            "mdistiller ImageNet ResNet-50→MobileNet-V1: β 2, T 1, warm-up 1",
            {"beta": 2.0, "temperature": 1.0, "warmup": 1},
        ),
    }

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.params
        assert teacher is not None
        loss = losses.dkd(
            student.logits, teacher.logits, step.targets, p.alpha, p.beta, p.temperature
        )
        return student.logits, {"dkd": p.weight * warmup_factor(step.epoch, p.warmup) * loss}
