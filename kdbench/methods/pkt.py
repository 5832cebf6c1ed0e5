"""Probabilistic knowledge transfer (Passalis & Tefas, "Learning Deep Representations with
Probabilistic Knowledge Transfer", ECCV 2018).

As benchmarked by RepDistiller/CRD (RepDistiller ``distiller_zoo/PKT.py``, the author's code): the
penultimate vectors (``pooled``, RepDistiller ``feat[-1]``) of both networks; ``losses.pkt`` =
mean over the B² entries of p_t·log((p_t + ε)/(p_s + ε)) on row-normalised (cos + 1)/2
similarity matrices — a mean, not a per-row sum, hence β = 30000.

Defaults = CRD protocol (γ = 1, α = 0, β = 30000); variant ``simkd`` = the SimKD/SemCKD code
protocol (c = d = 1, β = 30000; PKT's P-SK weights come from the SemCKD repository's scripts).
"""

from __future__ import annotations

import torch

from kdbench import losses
from kdbench.methods.base import Distiller, MethodParams, Needs, Step, Variant
from kdbench.methods.registry import register
from kdbench.models.base import Features


class PKTParams(MethodParams):
    ce_weight: float = 1.0
    kd_weight: float = 0.0
    weight: float = 30000.0


@register
class PKT(Distiller):
    name = "pkt"
    title = "PKT"
    paper = "Passalis & Tefas, Learning Deep Representations with Probabilistic Knowledge Transfer, ECCV 2018"
    Params = PKTParams
    params: PKTParams
    needs = Needs(teacher=True)
    variants = {
        "crd": Variant(
            "CRD/RepDistiller protocol (= defaults): 1·CE + 30000·PKT",
            {"ce_weight": 1.0, "kd_weight": 0.0, "weight": 30000.0},
        ),
        "simkd": Variant(
            "SimKD/SemCKD code protocol: 1·CE + 1·KD(T=4) + 30000·PKT",
            {"ce_weight": 1.0, "kd_weight": 1.0, "weight": 30000.0},
        ),
    }

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert teacher is not None
        loss = losses.pkt(student.pooled, teacher.pooled.detach())
        return student.logits, {"pkt": self.params.weight * loss}
