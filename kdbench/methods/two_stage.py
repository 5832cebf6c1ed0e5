"""The two-stage methods of RepDistiller's benchmark (AB, FT, FSP): an init stage, then the main epochs.

RepDistiller's ``train_student.py`` first trains a method's own modules (and, for AB and FSP, the
student's feature modules) for ``--init_epochs 30`` epochs at a constant LR with the method's init
loss, then trains the student as usual (docs/references.md §Training protocols). :class:`TwoStageDistiller`
owns that pattern: the ``init_epochs`` parameter (0: no init stage), the stage object the loop runs,
and the ``crd`` variant; a method names the stage's parameters (:meth:`TwoStageDistiller.init_parameters`)
and its loss (``forward_init``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from kdbench.methods.base import Distiller, InitStage, MethodParams, Variant, epoch_count
from kdbench.models.base import KDModel


class TwoStageParams(MethodParams):
    """RepDistiller's weights for these methods (α = 0; β unused by AB and FSP) and the init stage's length."""

    ce_weight: float = 1.0
    kd_weight: float = 0.0
    init_epochs: int = epoch_count(30)  # RepDistiller --init_epochs; 0: no init stage


def crd_variant(description: str, **params: Any) -> dict[str, Variant]:
    """The ``crd`` variant (the CRD/RepDistiller protocol, = the defaults): 1·CE, no KD, 30 init epochs, and
    the method's own ``params``."""
    return {
        "crd": Variant(
            f"CRD/RepDistiller protocol (= defaults): {description}",
            {"ce_weight": 1.0, "kd_weight": 0.0, "init_epochs": 30, **params},
        )
    }


class TwoStageDistiller(Distiller):
    """A method with RepDistiller's init stage: ``init_epochs`` epochs of :meth:`forward_init`'s loss over
    :meth:`init_parameters`, at :attr:`init_lr` (None: the run's base LR), before the main epochs."""

    Params: ClassVar[type[MethodParams]] = TwoStageParams
    params: TwoStageParams
    init_lr: float | None = None

    def init_parameters(self) -> list[nn.Parameter]:
        """What the init stage trains."""
        raise NotImplementedError(f"method {self.name!r} names no init-stage parameters")

    def init_stage(self) -> InitStage | None:
        """The init stage; None when ``init_epochs`` is 0."""
        epochs = self.params.init_epochs
        if epochs == 0:
            return None
        return InitStage(epochs, self.init_parameters(), lr=self.init_lr)


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
            assert isinstance(total, torch.Tensor)  # every network has stages
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


class StudentFeatureInit(TwoStageDistiller):
    """A two-stage method whose init stage also trains the student's feature modules (stem + stages,
    RepDistiller's ``get_feat_modules``), with its other BN layers in eval mode (:class:`InitModes`): AB, FSP."""

    def __init__(
        self,
        student: KDModel,
        teacher: KDModel | None,
        params: MethodParams,
        example: torch.Tensor,
        **context: Any,
    ):
        super().__init__(student, teacher, params, example, **context)
        self._feature_names = feature_parameter_names(student, example)
        self._init_modes = InitModes(student, self._feature_names)

    def student_feature_parameters(self) -> list[nn.Parameter]:
        """The student's feature-module parameters, in registration order."""
        return [p for n, p in self.student.named_parameters() if n in self._feature_names]
