"""Cross-entropy training: teacher pretraining and the papers' "Student" (no distillation) row."""

from __future__ import annotations

from kdbench.methods.base import Distiller, MethodParams, Needs
from kdbench.methods.registry import register


class CEParams(MethodParams):
    ce_weight: float = 1.0
    kd_weight: float = 0.0


@register
class CrossEntropy(Distiller):
    name = "ce"
    title = "Cross-entropy (no teacher)"
    paper = "standard supervised training"
    Params = CEParams
    params: CEParams
    needs = Needs(teacher=False)
