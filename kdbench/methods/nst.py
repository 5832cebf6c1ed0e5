"""Neuron selectivity transfer (Huang & Wang, "Like What You Like: Knowledge Distill via Neuron
Selectivity Transfer", 2017).

As benchmarked by RepDistiller/CRD (RepDistiller ``distiller_zoo/NST.py``): taps f1..fk of both
networks (``stages[1:]``, RepDistiller ``feat[1:-1]``), paired front-aligned (``zip`` truncating
at the shorter list); per pair ``losses.nst`` (squared MMD with the polynomial kernel (xᵀy)² over
L2-normalised channel vectors, larger map pooled to the smaller square size, the constant
teacher-teacher term included); the pair losses are **summed**, weight β = 50.

Defaults = CRD protocol (γ = 1, α = 0, β = 50). There is no ``simkd`` variant: NST is not in
the SimKD/SemCKD code bases or tables (weight-preset table §3 has no P-SK entry for it).
"""

from __future__ import annotations

import torch

from kdbench import losses
from kdbench.methods.base import Distiller, MethodParams, Needs, Step, Variant
from kdbench.methods.registry import register
from kdbench.models.base import Features


class NSTParams(MethodParams):
    ce_weight: float = 1.0
    kd_weight: float = 0.0
    weight: float = 50.0


@register
class NST(Distiller):
    name = "nst"
    title = "NST"
    paper = (
        "Huang & Wang, Like What You Like: Knowledge Distill via Neuron Selectivity Transfer, 2017"
    )
    Params = NSTParams
    params: NSTParams
    needs = Needs(teacher=True)
    variants = {
        "crd": Variant(
            "CRD/RepDistiller protocol (= defaults): 1·CE + 50·NST",
            {"ce_weight": 1.0, "kd_weight": 0.0, "weight": 50.0},
        ),
    }

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert teacher is not None
        pairs = zip(
            student.stages[1:], teacher.stages[1:]
        )  # front-aligned, truncated at the shorter list
        loss = sum(losses.nst(f_s, f_t.detach()) for f_s, f_t in pairs)
        assert isinstance(loss, torch.Tensor)  # at least one pair (f1); the loop reads tensors
        return student.logits, {"nst": self.params.weight * loss}
