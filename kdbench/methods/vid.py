"""Variational information distillation (Ahn et al., CVPR 2019).

As benchmarked by RepDistiller/CRD (RepDistiller ``distiller_zoo/VID.py``): taps f1..fk of both
networks (``stages[1:]``, RepDistiller ``feat[1:-1]``), paired front-aligned (``zip`` truncating
at the shorter list). Per pair: the larger map is pooled to the smaller square size; a regressor
1×1 conv (C_s → C_t) → ReLU → 1×1 (C_t → C_t) → ReLU → 1×1 (C_t → C_t), no biases, predicts the
mean μ from the student map; a per-teacher-channel parameter a_c (initialised so that
softplus(a_c) = init_var − eps, i.e. log(exp(5 − 1e-5) − 1)) gives σ²_c = softplus(a_c) + eps;
``losses.vid`` = mean over (B, C, H, W) of ½((μ − t)²/σ²_c + log σ²_c). Pair losses are
**summed**; weight β = 1.

Code-base difference (§6 item 4): RepDistiller (and SimKD) train a_c with the regressors (in the
optimizer, with weight decay); mdistiller keeps a_c out of the optimizer so the variance stays at
its initial value — variant ``mdistiller`` (``trainable_variance=False``: a_c is a buffer).
Defaults = CRD protocol (γ = 1, α = 0, β = 1, trained a_c); variant ``simkd`` = SimKD code
(c = d = 1, β = 1).

Per GPU (``heads`` > 1): SimKD's DDP runs keep the ``VIDLoss`` modules outside DDP (only in
``trainable_list``, SimKD train_student.py:234-241), so each original GPU had its own regressors and
variances, drawn by its own RNG and trained on its own gradients. ``heads`` sets of regressors emulate
that: batch chunk k (GPU k's samples) goes through set k, the student gets the mean of the sets'
gradients and set k the whole gradient of its own loss (``methods.base.unsynced_copies_loss``). Set 0 is
``regressors``, the others ``replica_regressors.<k-1>``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, cast

import torch
from pydantic import Field
from torch import nn

from kdbench import losses
from kdbench.losses.feature import pool_to_common_size
from kdbench.methods.base import (
    Distiller,
    MethodParams,
    Needs,
    Step,
    Variant,
    scale_gradient,
    unsynced_copies_loss,
)
from kdbench.methods.registry import register
from kdbench.models.base import Features, KDModel


class VIDParams(MethodParams):
    ce_weight: float = 1.0
    kd_weight: float = 0.0
    weight: float = 1.0
    init_var: float = Field(5.0, gt=0.0)
    eps: float = 1e-5
    trainable_variance: bool = True
    # Independent regressor sets, one per GPU of the original run (module docstring); 1: one set.
    heads: int = Field(1, ge=1)


class VIDRegressor(nn.Module):
    """One pair's mean regressor and per-teacher-channel variance parameter ``log_scale`` (a_c)."""

    log_scale: torch.Tensor  # a parameter, or a buffer when the variances are frozen

    def __init__(self, c_s: int, c_t: int, init_var: float, eps: float, trainable_variance: bool):
        super().__init__()
        mid = c_t  # RepDistiller builds VIDLoss(s, t, t): mid channels = teacher channels
        self.regressor = nn.Sequential(
            nn.Conv2d(c_s, mid, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid, mid, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid, c_t, kernel_size=1, bias=False),
        )
        init = torch.full((c_t,), math.log(math.exp(init_var - eps) - 1.0))
        if trainable_variance:
            self.log_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_scale", init)

    def forward(self, feat_s: torch.Tensor) -> torch.Tensor:
        return self.regressor(feat_s)


@register
class VID(Distiller):
    name = "vid"
    title = "VID"
    paper = "Ahn et al., Variational Information Distillation for Knowledge Transfer, CVPR 2019"
    Params = VIDParams
    params: VIDParams
    needs = Needs(teacher=True)
    added_params: ClassVar[dict[str, Any]] = {"heads": 1}
    variants = {
        "crd": Variant(
            "CRD/RepDistiller protocol (= defaults): 1·CE + 1·VID, variances trained",
            {"ce_weight": 1.0, "kd_weight": 0.0, "weight": 1.0, "trainable_variance": True},
        ),
        "simkd": Variant(
            "SimKD code protocol: 1·CE + 1·KD(T=4) + 1·VID, variances trained",
            {"ce_weight": 1.0, "kd_weight": 1.0, "weight": 1.0, "trainable_variance": True},
        ),
        "mdistiller": Variant(
            "mdistiller code: variances frozen at their initial value (a_c not in the optimizer)",
            {"trainable_variance": False},
        ),
    }

    def __init__(
        self,
        student: KDModel,
        teacher: KDModel | None,
        params: VIDParams,
        example: torch.Tensor,
        **context: Any,
    ):
        super().__init__(student, teacher, params, example, **context)
        s, t = self.probe(example)
        assert t is not None

        def regressor_set() -> nn.ModuleList:
            return nn.ModuleList(
                VIDRegressor(
                    f_s.shape[1],
                    f_t.shape[1],
                    params.init_var,
                    params.eps,
                    params.trainable_variance,
                )
                for f_s, f_t in zip(s.stages[1:], t.stages[1:])
            )

        self.regressors = regressor_set()
        # Sets 1.. (none, and no module, for one set: the state is exactly the single set's).
        self.replica_regressors: Sequence[nn.ModuleList] = (
            cast(  # a ModuleList of regressor sets (torch types its items as plain modules)
                "Sequence[nn.ModuleList]",
                nn.ModuleList(regressor_set() for _ in range(params.heads - 1)),
            )
            if params.heads > 1
            else ()
        )

    def _loss(
        self, regressors: nn.ModuleList, s_taps: list[torch.Tensor], t_taps: list[torch.Tensor]
    ) -> torch.Tensor:
        """One regressor set's VID loss: front-aligned pairs f1..fk, truncated at the shorter list, summed."""
        total = []
        for f_s, f_t, reg in zip(s_taps, t_taps, regressors):
            assert isinstance(reg, VIDRegressor)
            f_s, f_t = pool_to_common_size(f_s, f_t.detach())
            total.append(losses.vid(reg(f_s), f_t, reg.log_scale, self.params.eps))
        loss = sum(total)
        assert isinstance(loss, torch.Tensor)  # at least one pair (f1); the loop reads tensors
        return loss

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert teacher is not None
        s_taps, t_taps = student.stages[1:], teacher.stages[1:]
        sets = [self.regressors, *self.replica_regressors]
        if len(sets) == 1:
            return student.logits, {
                "vid": self.params.weight * self._loss(self.regressors, s_taps, t_taps)
            }
        n = len(sets)
        chunks_s = [f.tensor_split(n) for f in s_taps]
        chunks_t = [f.tensor_split(n) for f in t_taps]
        parts = [
            self._loss(
                regs, [scale_gradient(c[k], 1 / n) for c in chunks_s], [c[k] for c in chunks_t]
            )
            for k, regs in enumerate(sets)
        ]
        return student.logits, {"vid": self.params.weight * unsynced_copies_loss(parts)}
