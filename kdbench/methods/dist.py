"""DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022).

Total = ce_weight·CE + weight·τ²·(β·inter + γ·intra) (``losses.dist``). The released code uses
CE weight 1 and DIST weight 2 (= the paper's α = 1, β = γ = 2). The paper has no temperature
(τ = 1, also the released ImageNet setting); the released CIFAR code uses τ = 4.
The intra-class term correlates over the batch, and the released ImageNet runs computed it on each
GPU's 32 (B1) or 96 (B2) samples; ``TrainSpec.loss_chunk`` emulates that on fewer GPUs (§4.1).
"""

from __future__ import annotations

from typing import Literal

import torch

from kdbench import losses
from kdbench.methods.base import (
    Distiller,
    MethodParams,
    Needs,
    Step,
    Variant,
    per_chunk,
)
from kdbench.methods.registry import register
from kdbench.models.base import Features


class DISTParams(MethodParams):
    ce_weight: float = 1.0
    weight: float = 2.0
    beta: float = 1.0
    gamma: float = 1.0
    temperature: float = 1.0
    # Pearson correlation (paper Eq. 7, the released code) or cosine similarity (appendix A.3, Table 10).
    relation: Literal["pearson", "cosine"] = "pearson"


@register
class DIST(Distiller):
    name = "dist"
    title = "DIST"
    paper = "Huang et al., Knowledge Distillation from A Stronger Teacher, NeurIPS 2022"
    Params = DISTParams
    params: DISTParams
    needs = Needs(teacher=True, teacher_logits_only=True, batch_dependent_loss=True)
    variants = {
        "paper": Variant("paper Eq. 10 and released ImageNet code: τ = 1", {"temperature": 1.0}),
        "released-cifar": Variant(
            "released CIFAR code (dist_t4, added after publication): τ = 4", {"temperature": 4.0}
        ),
    }

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.params
        assert teacher is not None
        return student.logits, per_chunk(
            lambda s, t: {
                "dist": p.weight * losses.dist(s, t, p.beta, p.gamma, p.temperature, p.relation)
            },
            step.loss_chunk,
            student.logits,
            teacher.logits,
        )
