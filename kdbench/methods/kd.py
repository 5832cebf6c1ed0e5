"""Vanilla knowledge distillation (Hinton, Vinyals & Dean, 2015): CE + KL at temperature T.

Defaults are the CRD protocol (0.1·CE + 0.9·KD, T = 4); SimKD's protocol uses 1·CE + 1·KD.
"""

from __future__ import annotations

from kdbench.methods.base import Distiller, MethodParams, Needs, Variant
from kdbench.methods.registry import register


class KDParams(MethodParams):
    ce_weight: float = 0.1
    kd_weight: float = 0.9
    kd_temperature: float = 4.0


@register
class KD(Distiller):
    name = "kd"
    title = "KD"
    paper = "Hinton et al., Distilling the Knowledge in a Neural Network, 2015"
    Params = KDParams
    params: KDParams
    needs = Needs(teacher=True, teacher_logits_only=True)
    variants = {
        "crd": Variant(
            "CRD/RepDistiller protocol: 0.1·CE + 0.9·KD, T=4", {"ce_weight": 0.1, "kd_weight": 0.9}
        ),
        "simkd": Variant(
            "SimKD code protocol: 1·CE + 1·KD, T=4", {"ce_weight": 1.0, "kd_weight": 1.0}
        ),
    }
