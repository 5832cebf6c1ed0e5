"""OFD (Heo, Kim, Yun, Park, Kwak & Choi, "A Comprehensive Overhaul of Feature Distillation",
ICCV 2019), as mdistiller's ``mdistiller/distillers/OFD.py`` runs it on CIFAR-100 (its teacher in train
mode; docs/references.md §Training protocols).

* Taps: the **preact** maps f1..fk of both networks, paired back-aligned (the last min(n_s, n_t)
  of each list, mdistiller's ``_align_list``); the teacher map is adaptive-average-pooled to the
  student's spatial size inside the loss.
* Connector per pair (trained): 1×1 conv C_s → C_t without bias (init N(0, 2/(k·k·C_t))) + BN(C_t).
* Margins: per teacher channel, from the (γ, β) of the teacher's BN-before-ReLU at that
  tap (``KDModel.bn_before_relu``), computed once at construction (``losses.ofd_margins``). Where
  the list covers only the deepest taps (mdistiller's ImageNet ResNets: layers 2–4), only those
  taps are distilled: ResNet-50 → MobileNet-V1 pairs f2..f4, as mdistiller's ``_align_list`` does.
* Loss: ``losses.ofd`` — partial L2 summed over C·H·W, averaged over the batch, pair i of
  n weighted 1/2^(n−i−1); total = 1·CE + ``weight``·OFD with ``weight`` 1e-3 on CIFAR (the original
  code's "÷ batch ÷ 1000") and 1e-4 on ImageNet; no KD.

Released-code quirk kept (§6 item 5): both clovaai/overhaul-distillation and mdistiller leave the
teacher in **train mode** while distilling, so its BNs normalise with the batch's statistics.
``teacher_bn = "batch"`` (default) reproduces that for the teacher's forward pass of each training
step; the teacher's running statistics are *not* updated (the references update them, but nothing
in OFD ever reads them: training uses batch statistics, evaluation uses the student alone, and the
margins use γ and β only), so the teacher stays frozen. ``teacher_bn = "running"`` (variant
``teacher-eval``) uses the conventional eval-mode teacher instead.

Choices beyond the code: mdistiller indexes its margin list from the front while pairing taps from
the back, which breaks (channel mismatch) when the teacher has more taps than the student; here
the margins are back-aligned with their taps. MobileNetV2 students are accepted (their taps are
linear-bottleneck outputs, already pre-activation; mdistiller's copy lacks a preact key).
ShuffleNet teachers are refused (no BN-before-ReLU list): see :meth:`OFD.supports`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from kdbench import losses
from kdbench.errors import KdbenchError
from kdbench.methods.base import Distiller, MethodParams, Needs, Step, Variant, pair_name
from kdbench.methods.registry import register
from kdbench.models.base import Features, KDModel


class OFDParams(MethodParams):
    ce_weight: float = 1.0
    kd_weight: float = 0.0
    weight: float = Field(1e-3, ge=0.0)  # CIFAR; ImageNet 1e-4
    # "batch": the teacher's BNs use batch statistics during training steps (released code);
    # "running": eval-mode teacher.
    teacher_bn: Literal["batch", "running"] = "batch"


def connector(c_s: int, c_t: int) -> nn.Sequential:
    """mdistiller's ``ConnectorConvBN`` entry (kernel 1): bias-free 1×1 conv + BN, conv weights
    ~ N(0, 2/(1·1·C_t)), BN γ = 1, β = 0."""
    conv = nn.Conv2d(c_s, c_t, kernel_size=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # = N(0, 2/(k·k·out))
    bn = nn.BatchNorm2d(c_t)
    return nn.Sequential(conv, bn)


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model``'s BN layers normalise with the batch's statistics (as in train
    mode) without updating their running statistics or batch counters; modes restored after."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in bns]
    for m in bns:
        m.training, m.track_running_stats = True, False
    try:
        yield
    finally:
        for m, (training, track) in zip(bns, saved):
            m.training, m.track_running_stats = training, track


@register
class OFD(Distiller):
    name = "ofd"
    title = "OFD"
    paper = "Heo et al., A Comprehensive Overhaul of Feature Distillation, ICCV 2019"
    Params = OFDParams
    params: OFDParams
    needs = Needs(teacher=True)
    variants = {
        "cifar": Variant(
            "mdistiller CIFAR-100 (= defaults): 1·CE + 1e-3·OFD, teacher BN on batch statistics",
            {"weight": 1e-3},
        ),
        "imagenet": Variant("mdistiller / clovaai ImageNet: 1·CE + 1e-4·OFD", {"weight": 1e-4}),
        "teacher-eval": Variant(
            "teacher in eval mode (running BN statistics) instead of the released code's train mode",
            {"teacher_bn": "running"},
        ),
    }

    @classmethod
    def supports(
        cls, student: KDModel, teacher: KDModel | None, example: torch.Tensor | None = None
    ) -> str | None:
        """Why OFD cannot distil ``teacher`` into ``student`` (``None``: it can): the teacher must
        define its BN-before-ReLU layers (not ShuffleNets; architectures.md §3.5, §3.6)."""
        if teacher is None:
            return None
        try:
            teacher.bn_before_relu()
        except KdbenchError as err:
            return f"OFD ({pair_name(student, teacher)}): {err}"
        return None

    def __init__(
        self,
        student: KDModel,
        teacher: KDModel | None,
        params: OFDParams,
        example: torch.Tensor,
        **context: Any,
    ):
        super().__init__(student, teacher, params, example, **context)
        assert teacher is not None
        bns = teacher.bn_before_relu()
        s, t = self.probe(example)
        assert t is not None
        s_taps, t_taps = s.preact[1:], t.preact[1:]
        # The list covers the deepest taps (all of them, or f2..f4 for mdistiller's ImageNet ResNets).
        covered = t_taps[len(t_taps) - len(bns) :] if len(bns) <= len(t_taps) else []
        if len(covered) != len(bns) or any(
            bn.num_features != f.shape[1] for bn, f in zip(bns, covered)
        ):
            raise KdbenchError(
                f"OFD ({pair_name(student, teacher)}): the teacher's BN-before-ReLU layers "
                f"({[bn.num_features for bn in bns]} channels) do not match its deepest preact taps "
                f"({[f.shape[1] for f in t_taps]} channels)"
            )
        n = min(len(s_taps), len(t_taps), len(bns))
        s_taps, t_taps, bns = s_taps[-n:], t_taps[-n:], bns[-n:]  # back-aligned (mdistiller)
        self.n_pairs = n
        self.connectors = nn.ModuleList(
            connector(f_s.shape[1], f_t.shape[1]) for f_s, f_t in zip(s_taps, t_taps)
        )
        for i, bn in enumerate(bns):
            # Constants of the frozen teacher: moved with the distiller, not saved in checkpoints.
            self.register_buffer(
                f"margin{i}", losses.ofd_margins(bn.weight, bn.bias), persistent=False
            )

    def margins(self) -> list[torch.Tensor]:
        return [getattr(self, f"margin{i}") for i in range(self.n_pairs)]

    def forward_train(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        epoch: int,
        indices: torch.Tensor | None = None,
        strong: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        args = (images, targets, epoch, indices, strong, teacher_logits)
        if self.training and self.params.teacher_bn == "batch" and self.teacher is not None:
            with batch_statistics(self.teacher):
                return super().forward_train(*args)
        return super().forward_train(*args)

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert teacher is not None
        n = self.n_pairs
        connected = [c(f) for c, f in zip(self.connectors, student.preact[1:][-n:])]
        loss = losses.ofd(connected, teacher.preact[1:][-n:], self.margins())
        return student.logits, {"ofd": self.params.weight * loss}
