"""SimKD's sequential training (Chen et al., CVPR 2022, §4.2 and Table 4).

After SimKD has aligned the student's features (a recipe row with ``after: SimKD``: the run starts
from that SimKD run's final student and projector), the encoder is frozen — weights and BatchNorm
statistics, the linear-evaluation protocol the paper cites — and a new, randomly initialised linear
classifier is trained with cross-entropy under the regular recipe. ``reads`` chooses what the new
classifier sees: the projector output (default, the natural reading) or the student's own pooled
feature; the paper does not say which [UNKNOWN; docs/references.md §SimKD].
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.methods.base import InferenceSize, Needs, Step, Variant, parameter_count
from kdbench.methods.registry import register
from kdbench.methods.simkd import SimKD, SimKDParams
from kdbench.models.base import Features, KDModel


class SequentialParams(SimKDParams):
    ce_weight: float = 1.0  # the new classifier's cross-entropy
    weight: float = 0.0  # no feature alignment: the encoder is frozen
    reads: Literal["projector", "student"] = "projector"


@register
class SimKDSequential(SimKD):
    name = "simkd-sequential"
    title = "SimKD, sequential (new classifier)"
    paper = "Chen et al., Knowledge Distillation with the Reused Teacher Classifier, CVPR 2022 (Table 4)"
    Params = SequentialParams
    params: SequentialParams
    needs = Needs(teacher=True)
    frozen_modules = ("student", "projector")  # only the new classifier trains
    prediction_head = "new_classifier"
    variants = {
        "student-feature": Variant(
            "the new classifier reads the student's pooled feature", {"reads": "student"}
        ),
    }

    def __init__(
        self,
        student: KDModel,
        teacher: KDModel | None,
        params: SequentialParams,
        example: torch.Tensor,
        **context: Any,
    ):
        super().__init__(student, teacher, params, example, **context)
        assert teacher is not None
        inputs = (
            teacher.classifier.in_features
            if params.reads == "projector"
            else student.classifier.in_features
        )
        self.new_classifier = nn.Linear(inputs, teacher.classifier.out_features)
        self.train()  # freezes the encoder (frozen_modules): eval mode, no gradients

    def _features(self, student: Features) -> torch.Tensor:
        if self.params.reads == "student":
            return student.pooled
        projected = self.projector(self._align(self._student_map(student)))
        return torch.flatten(F.adaptive_avg_pool2d(projected, 1), 1)

    def prediction(self, student: Features) -> torch.Tensor:
        return self.new_classifier(self._features(student))

    def inference_size(self) -> InferenceSize:
        """Student encoder + the new classifier (+ the projector when the classifier reads it)."""
        added = parameter_count(self.new_classifier) + (
            parameter_count(self.projector) if self.params.reads == "projector" else 0
        )
        return InferenceSize(
            student=parameter_count(self.student) - parameter_count(self.student.classifier),
            added=added,
        )

    def extra_heads(self, student: Features) -> dict[str, torch.Tensor]:
        return {"teacher_classifier": super().prediction(student)}

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():
            features = self._features(student)
        logits = self.new_classifier(features)
        return logits, {
            "ce_new_classifier": self.params.ce_weight * self.cross_entropy(logits, step.targets)
        }

    def forward_train(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        epoch: int,
        indices: torch.Tensor | None = None,
        strong: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Only the new classifier's loss: no teacher pass (``teacher_logits`` is not read), no CE on the
        frozen student classifier."""
        with torch.no_grad():
            student = self.student.forward_features(images)
        return self.distill(student, None, Step(targets, epoch, indices, strong))
