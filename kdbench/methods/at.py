"""Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017).

As benchmarked by RepDistiller/CRD (RepDistiller ``distiller_zoo/AT.py``): taps f1..fk of both
networks (``stages[1:]``, RepDistiller ``feat[1:-1]``), paired front-aligned (shallowest with
shallowest, ``zip`` truncating at the shorter list); per pair ``losses.at`` (attention vector =
L2-normalised channel-mean of f^p, p = 2; mean over batch × positions of the squared difference,
larger map pooled to the smaller square size); the pair losses are **summed** (not averaged),
weight β = 1000.

Paper vs code: the paper uses the non-squared L2 distance with β/2; the benchmark tables come from
RepDistiller's squared-mean form, used here. Defaults = CRD protocol (γ = 1, α = 0, β = 1000);
variant ``simkd`` = SimKD code (c = d = 1, β = 1000; same loss and taps).
"""

from __future__ import annotations

import torch

from kdbench import losses
from kdbench.methods.base import Distiller, MethodParams, Needs, Step, Variant
from kdbench.methods.registry import register
from kdbench.models.base import Features


class ATParams(MethodParams):
    ce_weight: float = 1.0
    kd_weight: float = 0.0
    weight: float = 1000.0
    p: float = 2.0


@register
class AT(Distiller):
    name = "at"
    title = "AT"
    paper = "Zagoruyko & Komodakis, Paying More Attention to Attention, ICLR 2017"
    Params = ATParams
    params: ATParams
    needs = Needs(teacher=True)
    variants = {
        "crd": Variant(
            "CRD/RepDistiller protocol (= defaults): 1·CE + 1000·AT",
            {"ce_weight": 1.0, "kd_weight": 0.0, "weight": 1000.0},
        ),
        "simkd": Variant(
            "SimKD code protocol: 1·CE + 1·KD(T=4) + 1000·AT",
            {"ce_weight": 1.0, "kd_weight": 1.0, "weight": 1000.0},
        ),
    }

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert teacher is not None
        p = self.params
        pairs = zip(
            student.stages[1:], teacher.stages[1:]
        )  # front-aligned, truncated at the shorter list
        loss = sum(losses.at(f_s, f_t.detach(), p.p) for f_s, f_t in pairs)
        assert isinstance(loss, torch.Tensor)  # at least one pair (f1); the loop reads tensors
        return student.logits, {"at": p.weight * loss}
