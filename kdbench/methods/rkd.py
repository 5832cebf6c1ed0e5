"""Relational knowledge distillation (Park et al., CVPR 2019).

As benchmarked by RepDistiller/CRD (RepDistiller ``distiller_zoo/RKD.py``): the penultimate vectors
(``pooled``, RepDistiller ``feat[-1]``) of both networks; ``losses.rkd`` = 25·distance + 50·angle
(normalised pairwise-distance and triplet-angle matrices, smooth-L1 means, teacher side without
gradient); weight β = 1.

Defaults = CRD protocol (γ = 1, α = 0, β = 1, inner weights 25 / 50); variant ``simkd`` = the
SimKD/SemCKD code protocol (c = d = 1, β = 1; RKD's P-SK weights come from the SemCKD
repository's scripts).
"""

from __future__ import annotations

import torch

from kdbench import losses
from kdbench.methods.base import Distiller, MethodParams, Needs, Step, Variant
from kdbench.methods.registry import register
from kdbench.models.base import Features


class RKDParams(MethodParams):
    ce_weight: float = 1.0
    kd_weight: float = 0.0
    weight: float = 1.0
    w_dist: float = 25.0
    w_angle: float = 50.0


@register
class RKD(Distiller):
    name = "rkd"
    title = "RKD"
    paper = "Park et al., Relational Knowledge Distillation, CVPR 2019"
    Params = RKDParams
    params: RKDParams
    needs = Needs(teacher=True)
    variants = {
        "crd": Variant(
            "CRD/RepDistiller protocol (= defaults): 1·CE + 1·(25·dist + 50·angle)",
            {"ce_weight": 1.0, "kd_weight": 0.0, "weight": 1.0},
        ),
        "simkd": Variant(
            "SimKD/SemCKD code protocol: 1·CE + 1·KD(T=4) + 1·RKD",
            {"ce_weight": 1.0, "kd_weight": 1.0, "weight": 1.0},
        ),
    }

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert teacher is not None
        p = self.params
        loss = losses.rkd(student.pooled, teacher.pooled.detach(), p.w_dist, p.w_angle)
        return student.logits, {"rkd": p.weight * loss}
