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
gradient, so SGD never changes them (RepDistiller keeps them out of the main optimizer).

Choice beyond the code: RepDistiller asserts equal tap counts; here tap lists are paired
front-aligned and truncated at the shorter list (the spec's §5 convention), n = number of pairs.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from kdbench import losses
from kdbench.errors import KdbenchError
from kdbench.methods.base import pair_name
from kdbench.methods.fitnet import ConvReg
from kdbench.methods.registry import register
from kdbench.methods.two_stage import StudentFeatureInit, TwoStageParams, crd_variant
from kdbench.models.base import KDModel


class ABParams(TwoStageParams):
    margin: float = Field(1.0, gt=0.0)


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
class AB(StudentFeatureInit):
    """Main stage: the base class's CE only (RepDistiller's ``loss_kd = 0``, α = 0)."""

    name = "ab"
    title = "AB"
    paper = "Heo et al., Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons, AAAI 2019"
    Params = ABParams
    params: ABParams
    variants = crd_variant("30 init epochs of AB loss, then 1·CE (β unused)", margin=1.0)

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

    def init_parameters(self) -> list[nn.Parameter]:
        return list(self.connectors.parameters()) + self.student_feature_parameters()

    def forward_init(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        assert self.teacher is not None
        self._init_modes.apply()
        student = self.student.forward_features(images)
        with torch.no_grad():
            teacher = self.teacher.forward_features(images)
        n = len(self.connectors)
        connected = [c(f) for c, f in zip(self.connectors, student.preact[1 : 1 + n])]
        return {"ab": losses.ab(connected, teacher.preact[1 : 1 + n], self.params.margin)}
