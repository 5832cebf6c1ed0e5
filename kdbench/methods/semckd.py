"""SemCKD (Chen, Mei, Zhang, Wang, Wang & Feng, "Cross-Layer Distillation with Semantic
Calibration", AAAI 2021).

As in the released code (SimKD repo ``models/util.py`` SelfA/Proj/MLPEmbed,
``distiller_zoo/SemCKD.py``):

* Taps f1..fk of both networks (``stages[1:]``, post-ReLU): n_s student and n_t teacher taps.
* Each tap, flattened to (B, ·), gives a B×B Gram matrix; a query MLP per student tap and a key
  MLP per teacher tap (Linear(B → B/2) → ReLU → Linear(B/2 → B/4) → L2-normalise) embed its rows;
  attention[b, i, j] = softmax_j(q_i[b]·k_j[b] / soft), soft = 1 (``losses.semckd_attention``).
* Every (student tap i, teacher tap j) pair: the larger map is average-pooled to the smaller
  (square) size and the student map is projected by Proj_ij: 1×1 conv (C_s → 2C_t) BN ReLU →
  3×3 conv (2C_t → 2C_t) BN ReLU → 1×1 conv (2C_t → C_t), no biases.
* Loss = Σ attention · per-sample MSE / (B · n_s) (``losses.semckd``). Defaults: SimKD/SemCKD
  code protocol c = 1, d = 1 (KD, T = 4), β = 400; ``imagenet`` variant β = 50.

Fixed batch size: the MLPs read B-wide rows, so the method is built for the training batch size
(``Needs(fixed_batch=True)``: the loop passes it, and drops an incomplete last batch, as the
reference skips that step). Per GPU (``Needs.batch_dependent_loss``): with ``training.loss_chunk`` the
MLPs are built for the chunk and the whole SemCKD loss is computed per chunk and averaged, as in
SimKD's DDP ImageNet runs, where ``SelfA(opt.batch_size, …)`` is built after ``opt.batch_size`` became
the per-GPU 256 / 4 = 64 (SimKD train_student.py:185, 258) and DDP averages the GPUs' gradients.

The reference's ``MLPEmbed`` also builds a second, never-used ``regressor`` (Linear(B → B/2),
Linear(B/2 → B/4)); it receives no gradient and does not change training, so it is left out:
parameter counts are smaller than the reference's by (B·2d + 2d) + (2d·d + d), d = B/4, per MLP
(2 608 at B = 64).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import losses
from kdbench.errors import KdbenchError
from kdbench.methods.base import Distiller, MethodParams, Needs, Step, Variant, per_chunk
from kdbench.methods.crd import l2_normalize
from kdbench.methods.registry import register
from kdbench.models.base import Features, KDModel


class SemCKDParams(MethodParams):
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    weight: float = 400.0
    soft: float = 1.0
    factor: int = 4


class MLPEmbed(nn.Module):
    """Linear(d_in → 2·d_out) → ReLU → Linear(2·d_out → d_out) → L2 normalisation (biases on)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear1 = nn.Linear(dim_in, 2 * dim_out)
        self.linear2 = nn.Linear(2 * dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.linear2(F.relu(self.linear1(x.reshape(x.shape[0], -1)))))


def proj(c_s: int, c_t: int) -> nn.Sequential:
    """1×1 conv (C_s → 2C_t) BN ReLU → 3×3 conv pad 1 (2C_t → 2C_t) BN ReLU → 1×1 conv (2C_t → C_t), bias-free."""
    mid = 2 * c_t
    return nn.Sequential(
        nn.Conv2d(c_s, mid, 1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, mid, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, c_t, 1, bias=False),
    )


def gram(feat: torch.Tensor) -> torch.Tensor:
    """B×B similarity matrix of a batch of feature maps (flattened per sample)."""
    flat = feat.reshape(feat.shape[0], -1)
    return flat @ flat.t()


def align(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the spatially larger map to the smaller one's (square) size."""
    h_s, h_t = f_s.shape[2], f_t.shape[2]
    if h_s > h_t:
        return F.adaptive_avg_pool2d(f_s, (h_t, h_t)), f_t
    if h_s < h_t:
        return f_s, F.adaptive_avg_pool2d(f_t, (h_s, h_s))
    return f_s, f_t


@register
class SemCKD(Distiller):
    name = "semckd"
    title = "SemCKD"
    paper = "Chen et al., Cross-Layer Distillation with Semantic Calibration, AAAI 2021"
    Params = SemCKDParams
    params: SemCKDParams
    needs = Needs(teacher=True, fixed_batch=True, batch_dependent_loss=True)
    variants = {
        "simkd": Variant(
            "SimKD/SemCKD code protocol (CIFAR): 1·CE + 1·KD (T=4) + 400·SemCKD",
            {"ce_weight": 1.0, "kd_weight": 1.0, "weight": 400.0},
        ),
        "imagenet": Variant(
            "SemCKD README ImageNet command: 1·CE + 1·KD (T=4) + 50·SemCKD",
            {"ce_weight": 1.0, "kd_weight": 1.0, "weight": 50.0},
        ),
    }

    def __init__(
        self,
        student: KDModel,
        teacher: KDModel | None,
        params: SemCKDParams,
        example: torch.Tensor,
        *,
        batch_size: int | None = None,
        **context: Any,
    ):
        super().__init__(student, teacher, params, example, batch_size=batch_size, **context)
        s, t = self.probe(example)
        assert t is not None and batch_size is not None
        self.batch_size = int(
            self.loss_chunk or batch_size
        )  # the batch one attention sees: one (original) GPU's
        if batch_size % self.batch_size:
            raise KdbenchError(
                f"SemCKD: loss_chunk {self.batch_size} must divide the batch size {batch_size}."
            )
        dim = self.batch_size // params.factor
        if dim < 1:
            raise KdbenchError(
                f"SemCKD needs a batch (per loss chunk) of at least {params.factor} (got {self.batch_size})."
            )
        s_taps, t_taps = s.stages[1:], t.stages[1:]
        if not s_taps or not t_taps:
            raise KdbenchError("SemCKD needs at least one stage tap (f1..fk) in both networks.")
        self.query = nn.ModuleList(MLPEmbed(self.batch_size, dim) for _ in s_taps)
        self.key = nn.ModuleList(MLPEmbed(self.batch_size, dim) for _ in t_taps)
        self.proj = nn.ModuleList(
            nn.ModuleList(proj(f_s.shape[1], f_t.shape[1]) for f_t in t_taps) for f_s in s_taps
        )

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert teacher is not None
        size = student.logits.shape[0]
        if size % self.batch_size or (step.loss_chunk is None and size != self.batch_size):
            raise KdbenchError(
                f"SemCKD was built for batch size {self.batch_size} but got a batch of "
                f"{size}: its attention MLPs read batch-wide rows."
            )
        n_s = len(student.stages) - 1
        taps = [*student.stages[1:], *(f.detach() for f in teacher.stages[1:])]
        return student.logits, per_chunk(
            lambda *chunk: self._terms(list(chunk[:n_s]), list(chunk[n_s:])), step.loss_chunk, *taps
        )

    def _terms(
        self, s_taps: list[torch.Tensor], t_taps: list[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """SemCKD's weighted loss on one batch (one GPU's) of student and teacher taps."""
        queries = torch.stack(
            [q(gram(f)) for q, f in zip(self.query, s_taps)], dim=1
        )  # (B, n_s, d)
        keys = torch.stack([k(gram(f)) for k, f in zip(self.key, t_taps)], dim=1)  # (B, n_t, d)
        attention = losses.semckd_attention(queries, keys, self.params.soft)
        projected: list[list[torch.Tensor]] = []
        targets: list[list[torch.Tensor]] = []
        for f_s, row in zip(s_taps, self.proj):
            assert isinstance(row, nn.ModuleList)  # one projector per teacher tap
            projected.append([])
            targets.append([])
            for f_t, p in zip(t_taps, row):
                source, target = align(f_s, f_t)
                projected[-1].append(p(source))
                targets[-1].append(target)
        return {"semckd": self.params.weight * losses.semckd(projected, targets, attention)}
