"""``logit-l2``: the student's logits regressed onto the teacher's with a mean squared error (an example
plugin method; "Do Deep Nets Really Need to be Deep?", Ba & Caruana, NeurIPS 2014, regress logits this way).

    total = ce_weight·CE + kd_weight·KD_T + weight·mean((z_s − z_t)²)

Importing this module registers the method (entry point ``kdbench.methods: logit-l2``).
"""

from __future__ import annotations

import torch
from kdbench.methods import Distiller, MethodParams, Needs, Step, register
from kdbench.models import Features
from pydantic import Field


def logit_l2(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over batch × classes of the squared logit difference."""
    return (student_logits - teacher_logits).pow(2).mean()


class LogitL2Params(MethodParams):
    weight: float = Field(default=0.5, ge=0)


@register
class LogitL2(Distiller):
    name = "logit-l2"
    title = "Logit L2"
    paper = "Ba & Caruana, NeurIPS 2014 (example plugin: tests/plugin_example)"
    Params = LogitL2Params
    needs = Needs(teacher=True, teacher_logits_only=True)

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert teacher is not None
        return student.logits, {
            "logit_l2": self.params.weight * logit_l2(student.logits, teacher.logits)
        }
