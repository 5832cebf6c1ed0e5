"""Similarity-preserving KD (Tung & Mori, ICCV 2019).

As benchmarked by RepDistiller/CRD (RepDistiller's ``distiller_zoo/SP.py``, which is
"verified by the original author"): one tap pair, the last spatial map fk of both networks
(``stages[-1]``, RepDistiller ``feat[-2]``, post-ReLU); ``losses.sp`` = ‖G_t − G_s‖²_F / B² with
row-normalised batch Gram matrices; weight β = 3000. The maps may differ in channels and size.

Defaults = CRD protocol (γ = 1, α = 0, β = 3000); variant ``simkd`` = SimKD code (c = d = 1,
β = 3000; same loss and tap).

The Gram matrices are over the batch (``Needs.batch_dependent_loss``): with ``training.loss_chunk`` the
loss is computed per chunk, as each GPU of a DDP run computed it over its own samples (SimKD's
ImageNet runs: 4 GPUs × 64, train_student.py:185, 294-302) and averaged, as DDP averages gradients.
"""

from __future__ import annotations

import torch

from kdbench import losses
from kdbench.methods.base import Distiller, MethodParams, Needs, Step, Variant, per_chunk
from kdbench.methods.registry import register
from kdbench.models.base import Features


class SPParams(MethodParams):
    ce_weight: float = 1.0
    kd_weight: float = 0.0
    weight: float = 3000.0


@register
class SP(Distiller):
    name = "sp"
    title = "SP"
    paper = "Tung & Mori, Similarity-Preserving Knowledge Distillation, ICCV 2019"
    Params = SPParams
    params: SPParams
    needs = Needs(teacher=True, batch_dependent_loss=True)
    variants = {
        "crd": Variant(
            "CRD/RepDistiller protocol (= defaults): 1·CE + 3000·SP",
            {"ce_weight": 1.0, "kd_weight": 0.0, "weight": 3000.0},
        ),
        "simkd": Variant(
            "SimKD code protocol: 1·CE + 1·KD(T=4) + 3000·SP",
            {"ce_weight": 1.0, "kd_weight": 1.0, "weight": 3000.0},
        ),
    }

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert teacher is not None
        weight = self.params.weight
        terms = per_chunk(
            lambda f_s, f_t: {"sp": weight * losses.sp(f_s, f_t)},
            step.loss_chunk,
            student.stages[-1],
            teacher.stages[-1].detach(),
        )
        return student.logits, terms
