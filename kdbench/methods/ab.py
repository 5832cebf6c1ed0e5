"""Activation boundaries (Heo et al., "Knowledge Transfer via Distillation of Activation Boundaries
Formed by Hidden Neurons", AAAI 2019), two-stage, as benchmarked by RepDistiller/CRD
(RepDistiller ``distiller_zoo/AB.py`` and ``train_student.py``'s init stage; docs/references.md §Training protocols).

Init stage (``init_epochs`` = 30, RepDistiller ``--init_epochs``; constant base LR, its own SGD):
the student's **preact** taps f1..fk (``preact[1:]``) go through one connector per pair —
identity when channels and height match the teacher's tap, else a FitNet-style ``ConvReg``
(conv + BN, **without** the final ReLU) — and are matched to the teacher's preact taps by the AB
loss (``losses.ab``: margin 1, pair weights 2^(i − n + 1), ÷ batch, × 3/1000). Trained: the
connectors and the student's feature modules (stem + stages; not the head conv of ShuffleNet /
MobileNet, the final BN of WRN, nor the classifier — RepDistiller's ``get_feat_modules``), with
the student's other BN layers kept in eval mode as RepDistiller's ``model_s.eval()`` leaves them.

Main stage: CE only (RepDistiller's ``loss_kd = 0`` whatever β is, α = 0): the CRD table's "AB"
row is "AB-initialised student + CE". The connectors are unused there and never receive a
gradient, so SGD never changes them (RepDistiller keeps them out of the main optimizer; they are
listed in ``init_only_modules``).

Choice beyond the code: RepDistiller asserts equal tap counts; here tap lists are paired
front-aligned and truncated at the shorter list (the spec's §5 convention), n = number of pairs.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from kdbench import losses
from kdbench.errors import KdbenchError
from kdbench.methods.base import (
    Distiller,
    InitStage,
    MethodParams,
    Needs,
    Step,
    Variant,
    pair_name,
)
from kdbench.methods.fitnet import ConvReg
from kdbench.methods.registry import register
from kdbench.models.base import Features, KDModel


class ABParams(MethodParams):
    ce_weight: float = 1.0
    kd_weight: float = 0.0
    init_epochs: int = Field(30, ge=0)
    margin: float = Field(1.0, gt=0.0)


def feature_parameter_names(model: KDModel, example: torch.Tensor) -> set[str]:
    """Names of the parameters the stage taps f0..fk depend on: the stem and the stages
    (RepDistiller's ``get_feat_modules``), found by autograd so no family is special-cased. The
    head conv, a final BN after the last stage and the classifier are not among them."""
    was_training = model.training
    model.eval()  # no BN running-statistics update
    try:
        with torch.enable_grad():
            named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            total = sum(f.sum() for f in model.forward_features(example).stages)
            grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
    finally:
        model.train(was_training)
    return {n for (n, _), g in zip(named, grads) if g is not None}


class InitModes:
    """RepDistiller's init-stage modes: ``model_s.eval()`` then the trained modules ``.train()`` —
    so the student's BN layers outside its feature modules (ShuffleNet/MobileNet head BN, WRN's
    final BN) keep their running statistics and normalise with them during the init stage."""

    def __init__(self, student: KDModel, feature_names: set[str]):
        self.frozen_bn: list[nn.Module] = []
        for name, m in student.named_modules():
            own = [f"{name}.{n}" if name else n for n, _ in m.named_parameters(recurse=False)]
            if (
                isinstance(m, nn.modules.batchnorm._BatchNorm)
                and own
                and not set(own) & feature_names
            ):
                self.frozen_bn.append(m)

    def apply(self) -> None:
        for m in self.frozen_bn:
            m.eval()


class ABConnector(ConvReg):
    """RepDistiller's AB ``Connector`` for one pair that differs in channels or height: the FitNet
    ``ConvReg`` conv (3×3 s2 / 4×4 transposed s2 / valid conv, with bias) and BN, no ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def connector(s_shape: tuple[int, ...], t_shape: tuple[int, ...], pair: str, tap: int) -> nn.Module:
    _, s_c, s_h, s_w = s_shape
    _, t_c, t_h, t_w = t_shape
    if s_c == t_c and s_h == t_h:
        return nn.Identity()
    if not (s_h == 2 * t_h or 2 * s_h == t_h or s_h >= t_h):
        raise KdbenchError(
            f"AB ({pair}): at preact tap f{tap} the student map is {s_c}×{s_h}×{s_w} and the teacher's "
            f"{t_c}×{t_h}×{t_w}; RepDistiller's connector only maps a student map that is twice, half, "
            "or at least the teacher's size."
        )
    return ABConnector(s_shape, t_shape, fallback=False)


@register
class AB(Distiller):
    name = "ab"
    title = "AB"
    paper = "Heo et al., Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons, AAAI 2019"
    Params = ABParams
    needs = Needs(teacher=True)
    variants = {
        "crd": Variant(
            "CRD/RepDistiller protocol (= defaults): 30 init epochs of AB loss, then 1·CE (β unused)",
            {"ce_weight": 1.0, "kd_weight": 0.0, "init_epochs": 30, "margin": 1.0},
        ),
    }
    # Extra modules trained only in the init stage; unused (so never updated) in the main stage.
    init_only_modules: ClassVar[tuple[str, ...]] = ("connectors",)

    def __init__(
        self,
        student: KDModel,
        teacher: KDModel | None,
        params: ABParams,
        example: torch.Tensor,
        **context,
    ):
        super().__init__(student, teacher, params, example, **context)
        s, t = self.probe(example)
        assert t is not None
        pair = pair_name(student, teacher)
        self.connectors = nn.ModuleList(
            connector(tuple(f_s.shape), tuple(f_t.shape), pair, i + 1)
            for i, (f_s, f_t) in enumerate(
                zip(s.preact[1:], t.preact[1:])
            )  # front-aligned, truncated
        )
        self._feature_names = feature_parameter_names(student, example)
        self._init_modes = InitModes(student, self._feature_names)

    def init_stage(self) -> InitStage | None:
        if self.params.init_epochs == 0:
            return None
        features = [p for n, p in self.student.named_parameters() if n in self._feature_names]
        return InitStage(self.params.init_epochs, list(self.connectors.parameters()) + features)

    def forward_init(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        assert self.teacher is not None
        self._init_modes.apply()
        student = self.student.forward_features(images)
        with torch.no_grad():
            teacher = self.teacher.forward_features(images)
        n = len(self.connectors)
        connected = [c(f) for c, f in zip(self.connectors, student.preact[1 : 1 + n])]
        return {"ab": losses.ab(connected, teacher.preact[1 : 1 + n], self.params.margin)}

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return student.logits, {}  # main stage: CE only (added by the base class)
