"""FitNet hints (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015), single stage.

As benchmarked by RepDistiller/CRD (RepDistiller ``distiller_zoo/FitNet.py``): the student's hint
tap ``stages[hint_layer]`` (RepDistiller ``feat[hint_layer]``, post-ReLU) goes through a
convolutional regressor (``ConvReg``: conv + BN + ReLU sized from the two tap shapes) and is
matched to the teacher's same tap by element-mean MSE (``losses.fitnet``), weight β = 100. There
is no separate hint pre-training stage (the original paper's stage 1 is not used by the
benchmarks).

Code-base differences (§6 item 3): RepDistiller/mdistiller use hint layer 2 (f2); the SimKD code
defaults to hint layer 1 (f1) and its ``ConvReg`` has a fallback for a student map smaller than
the teacher's (but not half): a 3×3 pad-1 conv, with the teacher map average-pooled to the
student's size (``regressor="simkd"``); RepDistiller raises there (``regressor="repdistiller"``,
a :class:`~kdbench.errors.KdbenchError` at construction). Defaults = CRD protocol
(γ = 1, α = 0, β = 100, f2); variant ``simkd`` = SimKD code (c = d = 1, β = 100, f1, fallback).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdbench import losses
from kdbench.errors import KdbenchError
from kdbench.methods.base import Distiller, MethodParams, Needs, Step, Variant
from kdbench.methods.registry import register
from kdbench.models.base import Features, KDModel


class FitNetParams(MethodParams):
    ce_weight: float = 1.0
    kd_weight: float = 0.0
    weight: float = 100.0
    hint_layer: int = Field(2, ge=0)
    regressor: Literal["repdistiller", "simkd"] = "repdistiller"


class ConvReg(nn.Module):
    """Hint regressor from student tap shape (C_s, H_s, W_s) to teacher tap shape (C_t, H_t, W_t).

    H_s = 2H_t: 3×3 conv stride 2 pad 1; 2H_s = H_t: 4×4 transposed conv stride 2 pad 1;
    H_s ≥ H_t otherwise: valid conv with kernel (1 + H_s − H_t) × (1 + W_s − W_t); all with bias;
    then BN(C_t) and ReLU. Other cases: ``fallback=True`` (SimKD code) uses a 3×3 pad-1 conv and
    the caller pools the teacher map to the student size (``pool_teacher_to``); otherwise error.
    """

    def __init__(
        self, s_shape: tuple[int, ...], t_shape: tuple[int, ...], fallback: bool, pair: str = ""
    ):
        super().__init__()
        _, s_c, s_h, s_w = s_shape
        _, t_c, t_h, t_w = t_shape
        self.pool_teacher_to: int | None = None
        if s_h == 2 * t_h:
            self.conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        elif fallback:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=1, padding=1)
            self.pool_teacher_to = s_h
        else:
            raise KdbenchError(
                f"FitNet{pair}: the student hint map is {s_h}×{s_w} and the teacher's {t_h}×{t_w}; "
                "RepDistiller's regressor only maps a student map that is twice, half, or at least "
                "the teacher's size. Choose another hint_layer, or regressor='simkd' (SimKD code: "
                "3×3 conv and the teacher map pooled to the student size)."
            )
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


@register
class FitNet(Distiller):
    name = "fitnet"
    title = "FitNet"
    paper = "Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015"
    Params = FitNetParams
    params: FitNetParams
    needs = Needs(teacher=True)
    variants = {
        "crd": Variant(
            "CRD/RepDistiller protocol (= defaults): 1·CE + 100·hint, hint tap f2",
            {
                "ce_weight": 1.0,
                "kd_weight": 0.0,
                "weight": 100.0,
                "hint_layer": 2,
                "regressor": "repdistiller",
            },
        ),
        "simkd": Variant(
            "SimKD code protocol: 1·CE + 1·KD(T=4) + 100·hint, hint tap f1 (SimKD default), SimKD ConvReg fallback",
            {
                "ce_weight": 1.0,
                "kd_weight": 1.0,
                "weight": 100.0,
                "hint_layer": 1,
                "regressor": "simkd",
            },
        ),
    }

    def __init__(
        self,
        student: KDModel,
        teacher: KDModel | None,
        params: FitNetParams,
        example: torch.Tensor,
        **context: Any,
    ):
        super().__init__(student, teacher, params, example, **context)
        s, t = self.probe(example)
        assert t is not None
        layer = params.hint_layer
        pair = f" ({type(student).__name__} student, {type(teacher).__name__} teacher)"
        if layer >= len(s.stages) or layer >= len(t.stages):
            raise KdbenchError(
                f"FitNet{pair}: hint_layer {layer} does not exist; the student has taps f0..f{len(s.stages) - 1} "
                f"and the teacher f0..f{len(t.stages) - 1}."
            )
        self.regressor = ConvReg(
            tuple(s.stages[layer].shape),
            tuple(t.stages[layer].shape),
            params.regressor == "simkd",
            pair,
        )

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert teacher is not None
        layer = self.params.hint_layer
        hint_t = teacher.stages[layer].detach()
        if self.regressor.pool_teacher_to is not None:
            size = self.regressor.pool_teacher_to
            hint_t = F.adaptive_avg_pool2d(hint_t, (size, size))
        loss = losses.fitnet(self.regressor(student.stages[layer]), hint_t)
        return student.logits, {"fitnet": self.params.weight * loss}
