"""SRRL (Yang, Martinez, Bulat & Tzimiropoulos, "Knowledge Distillation via Softmax Regression
Representation Learning", ICLR 2021).

SimKD's released CIFAR version (SimKD ``models/util.py`` and ``train_student.py``), which produced the SimKD
tables: the student's ``pooled`` vector, viewed as a 1×1 map, goes through a connector
(1×1 conv C_s → C_t without bias, BN, ReLU) to h; loss = MSE(h, teacher ``pooled``) +
MSE(W_t·h + b_t, teacher logits), where the teacher's classifier is frozen but passes gradients
to h (``losses.srrl``). Defaults are SimKD's protocol (c = 1, d = 1 (KD, T = 4), β = 1); the
method predicts with the student's own classifier.

Paper vs code: the authors' own (ImageNet) code applies the connector to the student's last
feature map before pooling and pools its output (``connector_input="map"``, variant
``official``: no KD term); the SimKD CIFAR code applies it to the pooled vector
(``connector_input="pooled"``, the default).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from kdbench import losses
from kdbench.methods.base import Distiller, MethodParams, Needs, Step, Variant
from kdbench.methods.registry import register
from kdbench.models.base import Features, KDModel


class SRRLParams(MethodParams):
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    weight: float = 1.0
    connector_input: Literal["pooled", "map"] = "pooled"


@register
class SRRL(Distiller):
    name = "srrl"
    title = "SRRL"
    paper = "Yang et al., Knowledge Distillation via Softmax Regression Representation Learning, ICLR 2021"
    Params = SRRLParams
    params: SRRLParams
    needs = Needs(teacher=True)
    variants = {
        "simkd": Variant(
            "SimKD code protocol: 1·CE + 1·KD (T=4) + 1·SRRL, connector on the pooled vector",
            {"ce_weight": 1.0, "kd_weight": 1.0, "weight": 1.0, "connector_input": "pooled"},
        ),
        "official": Variant(
            "authors' ImageNet code: 1·CE + 1·SRRL, no KD, connector on the last feature map",
            {"ce_weight": 1.0, "kd_weight": 0.0, "weight": 1.0, "connector_input": "map"},
        ),
    }

    def __init__(
        self,
        student: KDModel,
        teacher: KDModel | None,
        params: SRRLParams,
        example: torch.Tensor,
        **context: Any,
    ):
        super().__init__(student, teacher, params, example, **context)
        s, t = self.probe(example)
        assert t is not None
        c_s = s.pooled.shape[1] if params.connector_input == "pooled" else s.head_map.shape[1]
        c_t = t.pooled.shape[1]
        self.connector = nn.Sequential(
            nn.Conv2d(c_s, c_t, kernel_size=1, bias=False),
            nn.BatchNorm2d(c_t),
            nn.ReLU(inplace=True),
        )

    def transfer(self, student: Features) -> torch.Tensor:
        """h: the connector's output for the student, (B, C_t)."""
        if self.params.connector_input == "pooled":
            return self.connector(student.pooled[:, :, None, None]).flatten(1)
        return self.connector(student.head_map).mean(dim=(2, 3))

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert teacher is not None and self.teacher is not None
        h = self.transfer(student)
        pred = self.teacher.classifier(h)
        return student.logits, {
            "srrl": self.params.weight * losses.srrl(h, teacher.pooled, pred, teacher.logits)
        }
