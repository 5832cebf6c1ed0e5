"""FSP — flow of solution procedure (Yim et al., "A Gift from Knowledge Distillation: Fast
Optimization, Network Minimization and Transfer Learning", CVPR 2017), two-stage, as benchmarked by
RepDistiller/CRD (RepDistiller ``distiller_zoo/FSP.py`` and ``train_student.py``'s init stage; docs/references.md §Training protocols).

Taps f0..fk of both networks (``stages``, RepDistiller ``feat[:-1]``, stem included). For each
consecutive pair of taps one FSP matrix per network (the larger map pooled to the smaller square
size; G = mean over positions of the outer product, C_top × C_bottom); ``losses.fsp`` sums over the
pairs the element-mean squared difference. It needs **the same number of taps and equal channel
counts at every tap** in both networks — otherwise construction fails with a
:class:`~kdbench.errors.KdbenchError` (why wrn_40_2→wrn_40_1 is "N/A" and FSP is absent from
cross-architecture tables); :meth:`FSP.supports` says so before building.

Init stage (``init_epochs`` = 30, constant base LR, its own SGD): the student's feature modules
(stem + stages; RepDistiller's ``get_feat_modules``, other BN layers in eval mode) are trained with
the FSP loss only. Main stage: CE only (RepDistiller's ``loss_kd = 0`` whatever β is, α = 0).
"""

from __future__ import annotations

import torch
from pydantic import Field

from kdbench import losses
from kdbench.methods.ab import InitModes, feature_parameter_names
from kdbench.methods.base import (
    Distiller,
    InitStage,
    MethodParams,
    Needs,
    Step,
    Variant,
    pair_name,
    probe_features,
)
from kdbench.methods.registry import register
from kdbench.models.base import Features, KDModel


class FSPParams(MethodParams):
    ce_weight: float = 1.0
    kd_weight: float = 0.0
    init_epochs: int = Field(30, ge=0)


def _mismatch(s: Features, t: Features, pair: str) -> str | None:
    s_c, t_c = [f.shape[1] for f in s.stages], [f.shape[1] for f in t.stages]
    if s_c == t_c:
        return None
    return (
        f"FSP ({pair}) needs the same number of taps f0..fk with equal channel counts in both networks; "
        f"the student's are {s_c} and the teacher's {t_c}."
    )


@register
class FSP(Distiller):
    name = "fsp"
    title = "FSP"
    paper = "Yim et al., A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer Learning, CVPR 2017"
    Params = FSPParams
    needs = Needs(teacher=True)
    variants = {
        "crd": Variant(
            "CRD/RepDistiller protocol (= defaults): 30 init epochs of FSP loss, then 1·CE (β unused)",
            {"ce_weight": 1.0, "kd_weight": 0.0, "init_epochs": 30},
        ),
    }

    @classmethod
    def supports(
        cls, student: KDModel, teacher: KDModel | None, example: torch.Tensor | None = None
    ) -> str | None:
        """Why FSP cannot distil ``teacher`` into ``student`` (``None``: it can)."""
        if teacher is None:
            return None
        example = torch.zeros(2, 3, 32, 32) if example is None else example
        s, t = probe_features(student, teacher, example)
        return _mismatch(s, t, pair_name(student, teacher))

    def __init__(
        self,
        student: KDModel,
        teacher: KDModel | None,
        params: FSPParams,
        example: torch.Tensor,
        **context,
    ):
        super().__init__(student, teacher, params, example, **context)
        self._feature_names = feature_parameter_names(student, example)
        self._init_modes = InitModes(student, self._feature_names)

    def init_stage(self) -> InitStage | None:
        if self.params.init_epochs == 0:
            return None
        return InitStage(
            self.params.init_epochs,
            [p for n, p in self.student.named_parameters() if n in self._feature_names],
        )

    def forward_init(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        assert self.teacher is not None
        self._init_modes.apply()
        student = self.student.forward_features(images)
        with torch.no_grad():
            teacher = self.teacher.forward_features(images)
        return {"fsp": losses.fsp(student.stages, teacher.stages)}

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return student.logits, {}  # main stage: CE only (added by the base class)
