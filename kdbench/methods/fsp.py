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
from torch import nn

from kdbench import losses
from kdbench.methods.base import pair_name, probe_features
from kdbench.methods.registry import register
from kdbench.methods.two_stage import StudentFeatureInit, TwoStageParams, crd_variant
from kdbench.models.base import Features, KDModel


class FSPParams(TwoStageParams):
    """FSP's parameters: the two-stage ones only (its loss has no weight of its own)."""


def _mismatch(s: Features, t: Features, pair: str) -> str | None:
    s_c, t_c = [f.shape[1] for f in s.stages], [f.shape[1] for f in t.stages]
    if s_c == t_c:
        return None
    return (
        f"FSP ({pair}) needs the same number of taps f0..fk with equal channel counts in both networks; "
        f"the student's are {s_c} and the teacher's {t_c}."
    )


@register
class FSP(StudentFeatureInit):
    """Main stage: the base class's CE only (RepDistiller's ``loss_kd = 0``, α = 0)."""

    name = "fsp"
    title = "FSP"
    paper = "Yim et al., A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer Learning, CVPR 2017"
    Params = FSPParams
    params: FSPParams
    variants = crd_variant("30 init epochs of FSP loss, then 1·CE (β unused)")

    @classmethod
    def supports(
        cls, student: KDModel, teacher: KDModel | None, example: torch.Tensor | None = None
    ) -> str | None:
        """Why FSP cannot distil ``teacher`` into ``student`` (``None``: it can)."""
        if teacher is None:
            return None
        example = torch.zeros(2, 3, 32, 32) if example is None else example
        s, t = probe_features(student, teacher, example)
        assert t is not None  # probed with a teacher
        return _mismatch(s, t, pair_name(student, teacher))

    def init_parameters(self) -> list[nn.Parameter]:
        return self.student_feature_parameters()

    def forward_init(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        assert self.teacher is not None
        self._init_modes.apply()
        student = self.student.forward_features(images)
        with torch.no_grad():
            teacher = self.teacher.forward_features(images)
        return {"fsp": losses.fsp(student.stages, teacher.stages)}
