"""The stages of a run: the epochs one optimizer trains with one step function.

Every run has a main stage: SGD over the method's trainable parameters with the spec's multi-step LR,
evaluated after each epoch. A two-stage method (AB, FT, FSP: RepDistiller's "init" phase) first has a
pre-training stage (:meth:`~kdbench.methods.Distiller.init_stage`): its own parameters, optimizer and
constant LR, ``forward_init``'s loss terms, and data epochs numbered apart from the main ones. The loop
(kdbench/train/loop.py) runs the stages in order, one epoch function for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from kdbench import methods
from kdbench.plan import RunSpec

# Data epochs of a pre-training stage are numbered from here, apart from the main epochs.
INIT_EPOCH_OFFSET = 1_000_000


class Step(Protocol):
    """One training step's forward pass: ``(logits | None, loss terms)``, called as ``Distiller.forward_train``."""

    def __call__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        epoch: int,
        indices: torch.Tensor | None = None,
        strong: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]: ...


@dataclass(frozen=True)
class Stage:
    """A stage's epochs ``1..epochs``, each one pass of ``step`` over the data epoch ``data_epoch_offset + epoch``.

    ``lr_at``: the LR of each epoch (None: the optimizer's constant LR). ``evaluates``: a main stage, evaluated
    after each epoch (its epochs are the run's epochs: they keep the best weights and make the result) and fed
    the teacher cache's logits."""

    name: str  # "init" or "main": the checkpoint's keys and each metrics record's phase
    epochs: int
    optimizer: torch.optim.Optimizer
    step: Step
    data_epoch_offset: int = 0
    lr_at: Callable[[int], float] | None = None
    evaluates: bool = False


@dataclass(frozen=True)
class _Pretraining:
    """The pre-training stage's step: the loss terms of ``Distiller.forward_init`` and no prediction."""

    distiller: methods.Distiller

    def __call__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        epoch: int,
        indices: torch.Tensor | None = None,
        strong: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
    ) -> tuple[None, dict[str, torch.Tensor]]:
        return None, self.distiller.forward_init(images, targets)


def stages(spec: RunSpec, distiller: methods.Distiller) -> list[Stage]:
    """The run's stages in order: the method's pre-training stage if it has one, then the main stage."""
    main = Stage(
        "main",
        spec.train.epochs,
        sgd(distiller.trainable_parameters(), spec),
        distiller.forward_train,
        lr_at=spec.train.lr_at,
        evaluates=True,
    )
    init = distiller.init_stage()
    if init is None:
        return [main]
    pretraining = Stage(
        "init",
        init.epochs,
        sgd(init.parameters, spec, init.lr),
        _Pretraining(distiller),
        data_epoch_offset=INIT_EPOCH_OFFSET,
    )
    return [pretraining, main]


def sgd(
    parameters: list[torch.nn.Parameter], spec: RunSpec, lr: float | None = None
) -> torch.optim.SGD:
    """SGD over ``parameters``; with ``decay_norm_and_bias`` off, 1-D tensors (BN γ/β, biases) get no weight decay."""
    groups: list[dict[str, Any]] = [{"params": parameters}]
    if not spec.train.decay_norm_and_bias:
        groups = [
            {"params": [p for p in parameters if p.ndim > 1]},
            {"params": [p for p in parameters if p.ndim <= 1], "weight_decay": 0.0},
        ]
    return torch.optim.SGD(
        groups,
        lr=spec.train.lr if lr is None else lr,
        momentum=spec.train.momentum,
        nesterov=spec.train.nesterov,
        weight_decay=spec.train.weight_decay,
    )
