"""RLD — Knowledge Distillation with Refined Logits (Sun, Chen, Lyu, Chen, Chen & Wang, arXiv 2408.07703).

Total = ce_weight·CE + weight · min(epoch / warmup, 1) · (α·SCD + β·MCD) (``losses.rld``), the loss
of zju-SWJ/RLD's ``mdistiller/distillers/RLD.py`` (docs/references.md §RLD). Defaults: CE 1, α 1, β 8, τ 4, warm-up 20.

Paper vs code: the code's config default is τ_a = 1 for SCD, but the README trains with
``--same-t`` (τ_a = τ) and the supplement grid-searches one temperature; kdbench's default is
``alpha_temperature = None`` = the same temperature as MCD (variant ``same-t``); ``cfg-default``
gives the config's τ_a = 1. The per-pair CIFAR β/τ of the published runs are [UNKNOWN] (grid
β ∈ {2,4,8,16}, τ ∈ {2,3,4,5}); DKD's per-pair β (``cifar-beta2``/``cifar-beta6``) is the spec's
unconfirmed fallback. ``safe`` computes SCD's binary log-probabilities in log space (not in the code).
"""

from __future__ import annotations

import torch
from pydantic import Field

from kdbench import losses
from kdbench.methods.base import Distiller, MethodParams, Needs, Step, Variant
from kdbench.methods.dkd import warmup_factor
from kdbench.methods.registry import register
from kdbench.models.base import Features


class RLDParams(MethodParams):
    ce_weight: float = 1.0
    weight: float = 1.0
    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0  # τ (MCD)
    alpha_temperature: float | None = None  # τ_a (SCD); None = same as ``temperature`` (--same-t)
    warmup: int = Field(20, ge=1)
    logit_stand: bool = False  # the code's --logit-stand (off for the RLD tables)
    safe: bool = False  # log-space SCD (kdbench addition, not in the released code)


@register
class RLD(Distiller):
    name = "rld"
    title = "RLD"
    paper = "Sun et al., Knowledge Distillation with Refined Logits, arXiv 2408.07703 (ICCV 2025)"
    Params = RLDParams
    params: RLDParams
    needs = Needs(teacher=True, teacher_logits_only=True)
    variants = {
        "same-t": Variant(
            "README runs (--same-t): one temperature τ_a = τ for SCD and MCD",
            {"alpha_temperature": None},
        ),
        "cfg-default": Variant(
            "released config default without --same-t: τ_a = 1 for SCD", {"alpha_temperature": 1.0}
        ),
        "cifar-beta2": Variant(
            "[UNKNOWN] per-pair β; DKD's β = 2 pairs as fallback (resnet56→resnet20, resnet110→resnet32/20)",
            {"beta": 2.0},
        ),
        "cifar-beta6": Variant(
            "[UNKNOWN] per-pair β; DKD's β = 6 pairs as fallback (vgg13→vgg8, wrn_40_2→wrn_16_2/wrn_40_1, ...)",
            {"beta": 6.0},
        ),
        "imagenet-r34-r18": Variant(
            "RLD ImageNet ResNet-34→ResNet-18 config: β 0.5, τ = τ_a = 1, warm-up 1",
            {"beta": 0.5, "temperature": 1.0, "alpha_temperature": 1.0, "warmup": 1},
        ),
        "imagenet-r50-mv1": Variant(
            "RLD ImageNet ResNet-50→MobileNet-V1 config: β 2, τ = τ_a = 1, warm-up 1",
            {"beta": 2.0, "temperature": 1.0, "alpha_temperature": 1.0, "warmup": 1},
        ),
        "logit-stand": Variant(
            "with the code's --logit-stand (z-scored logits)", {"logit_stand": True}
        ),
    }

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.params
        assert teacher is not None
        alpha_t = p.temperature if p.alpha_temperature is None else p.alpha_temperature
        loss = losses.rld(
            student.logits,
            teacher.logits,
            step.targets,
            p.alpha,
            p.beta,
            p.temperature,
            alpha_t,
            logit_stand=p.logit_stand,
            safe=p.safe,
        )
        return student.logits, {"rld": p.weight * warmup_factor(step.epoch, p.warmup) * loss}
