"""SimKD (Chen et al., "Knowledge Distillation with the Reused Teacher Classifier", CVPR 2022).

The student's last feature map goes through a projector P to the teacher's last feature map
(Eq. 3, element-mean MSE in the released code); predictions reuse the frozen teacher classifier:
logits = W_t · GAP(P(f_s)) + b_t, in training and at test time.

Paper vs released code (SimKD ``models/util.py`` and ``train_student.py``; docs/references.md §SimKD): the code taps
the student's last *stage* map; the paper's projector sizes imply the head-conv map for
MobileNetV2/ShuffleNetV2 students. ``student_tap`` selects: "stage" (code, default) or "head"
(paper). ``projector`` selects one of Table 5's designs ("1x1-dw3x3-1x1" is the paper's ImageNet one).

Loss (Table S.7): ``alignment`` "input" = ‖f_t − P(f_s)‖² on the maps (Eq. 3, default); "output" =
‖W_t f_t − W_t P(f_s)‖² on the pooled features, i.e. between the teacher's logits and the reused-classifier
logits (the bias cancels; element mean, like the released code's MSE); "input+output" = their sum. The
appendix describes these variants without code.

Joint training (§4.2, Fig. 4): L = (1 − α)·(CE + KD_4) + α·L_SimKD on the student's own classifier is
``ce_weight = kd_weight = 1 − α, weight = α``; both classifiers are evaluated every epoch
(``test_top1`` = reused teacher classifier, ``test_top1_student_classifier`` = the student's).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import losses
from kdbench.methods.base import (
    Distiller,
    InferenceSize,
    MethodParams,
    Needs,
    Step,
    Variant,
    parameter_count,
)
from kdbench.methods.registry import register
from kdbench.models.base import Features, KDModel

Projector = Literal["1x1-3x3-1x1", "1x1-dw3x3-1x1", "1x1-1x1", "1x1"]
Alignment = Literal["input", "output", "input+output"]


class SimKDParams(MethodParams):
    ce_weight: float = 0.0
    kd_weight: float = 0.0
    weight: float = 1.0
    factor: int = 2
    student_tap: Literal["stage", "head"] = "stage"
    projector: Projector = "1x1-3x3-1x1"  # Table 5's designs; the released default first
    alignment: Alignment = "input"  # Table S.7's loss functions


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


def projector(c_s: int, c_t: int, factor: int, design: Projector = "1x1-3x3-1x1") -> nn.Sequential:
    """SimKD's projector (Table 5 designs); every conv is bias-free and followed by BN + ReLU.

    Default 1×1 (C_s→C_t/r) → 3×3 (C_t/r→C_t/r) → 1×1 (C_t/r→C_t), with
    C_t(C_s + C_t + 4)/r + 9C_t²/r² + 2C_t parameters; "dw3x3" makes the 3×3 depthwise (the
    paper's ImageNet setting); "1x1-1x1" drops the 3×3; "1x1" maps C_s→C_t directly.
    """
    if design == "1x1":
        return nn.Sequential(*_conv_bn_relu(c_s, c_t, 1))
    mid = c_t // factor
    middle = {
        "1x1-3x3-1x1": _conv_bn_relu(mid, mid, 3),
        "1x1-dw3x3-1x1": _conv_bn_relu(mid, mid, 3, groups=mid),
        "1x1-1x1": [],
    }[design]
    return nn.Sequential(*_conv_bn_relu(c_s, mid, 1), *middle, *_conv_bn_relu(mid, c_t, 1))


@register
class SimKD(Distiller):
    name = "simkd"
    title = "SimKD"
    paper = "Chen et al., Knowledge Distillation with the Reused Teacher Classifier, CVPR 2022"
    Params = SimKDParams
    params: SimKDParams
    needs = Needs(teacher=True)
    prediction_head = "teacher_classifier"
    variants = {
        "released-code": Variant(
            "student tap = last stage map (DefangChen/SimKD code)", {"student_tap": "stage"}
        ),
        "paper": Variant(
            "student tap = head-conv map for MobileNetV2/ShuffleNetV2 (paper's projector sizes)",
            {"student_tap": "head"},
        ),
        "imagenet": Variant(
            "paper's ImageNet projector: depthwise 3×3", {"projector": "1x1-dw3x3-1x1"}
        ),
    }

    def __init__(
        self,
        student: KDModel,
        teacher: KDModel | None,
        params: SimKDParams,
        example: torch.Tensor,
        **context: Any,
    ):
        super().__init__(student, teacher, params, example, **context)
        s, t = self.probe(example)
        assert t is not None
        f_s, f_t = self._student_map(s), t.head_map
        self.aligned_size = min(f_s.shape[-1], f_t.shape[-1])
        self.projector = projector(f_s.shape[1], f_t.shape[1], params.factor, params.projector)

    def _student_map(self, student: Features) -> torch.Tensor:
        return student.stages[-1] if self.params.student_tap == "stage" else student.head_map

    def _align(self, fmap: torch.Tensor) -> torch.Tensor:
        """Average-pool a map down to the smaller of the two spatial sizes (square maps)."""
        return (
            fmap
            if fmap.shape[-1] == self.aligned_size
            else F.adaptive_avg_pool2d(fmap, self.aligned_size)
        )

    def _predict(self, projected: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None
        return self.teacher.classifier(torch.flatten(F.adaptive_avg_pool2d(projected, 1), 1))

    def _pooled_logits(self, fmap: torch.Tensor) -> torch.Tensor:
        """W_t · GAP(fmap), without the bias (it cancels in the output loss)."""
        assert self.teacher is not None
        return F.linear(
            torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1), self.teacher.classifier.weight
        )

    def _alignment_loss(self, projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Table S.7: the input ℓ2 (Eq. 3), the output ℓ2 through W_t, or their sum."""
        loss = torch.zeros((), device=projected.device)
        if self.params.alignment in ("input", "input+output"):
            loss = loss + losses.simkd(projected, target)
        if self.params.alignment in ("output", "input+output"):
            loss = loss + losses.mse(self._pooled_logits(projected), self._pooled_logits(target))
        return loss

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert teacher is not None
        projected = self.projector(self._align(self._student_map(student)))
        target = self._align(teacher.head_map)
        return self._predict(projected), {
            "simkd": self.params.weight * self._alignment_loss(projected, target)
        }

    @torch.no_grad()
    def forward_test_terms(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted ℓ2 feature-alignment loss (Eq. 3) on test images: Table 5's "Test loss (ℓ2)"."""
        assert self.teacher is not None
        projected = self.projector(
            self._align(self._student_map(self.student.forward_features(images)))
        )
        return {
            "simkd": losses.simkd(
                projected, self._align(self.teacher.forward_features(images).head_map)
            )
        }

    def inference_size(self) -> InferenceSize:
        """Student encoder + projector + the reused teacher classifier (Eq. 6)."""
        assert self.teacher is not None
        return InferenceSize(
            student=parameter_count(self.student) - parameter_count(self.student.classifier),
            teacher=parameter_count(self.teacher.classifier),
            added=parameter_count(self.projector),
        )

    def prediction(self, student: Features) -> torch.Tensor:
        return self._predict(self.projector(self._align(self._student_map(student))))

    def extra_heads(self, student: Features) -> dict[str, torch.Tensor]:
        """The student's own classifier, trained only in joint training (Fig. 4, Tables S.4/S.5)."""
        return {"student_classifier": student.logits}
