"""The Distiller base class every method plugs into (the registry: methods/registry.py).

A method is one file: a :class:`Distiller` subclass registered with :func:`register`, with its
hyper-parameters declared in a pydantic ``Params`` model beside it (defaults live there). The
training loop only calls ``forward_train``, ``forward_test_heads``, ``trainable_parameters`` and
``inference_state``; it never branches on a method's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch import nn

from kdbench import losses
from kdbench.errors import KdbenchError
from kdbench.models.base import Features, KDModel


class MethodParams(BaseModel):
    """Loss weights shared by every method: total = ce_weight·CE + kd_weight·KD_T + method terms.

    This is the shape of the RepDistiller / SimKD code bases (γ·CE + α·KD + β·L_method), so a
    protocol preset (e.g. SimKD's "CE + KD on every baseline") is just values of these fields.
    """

    # allow_inf_nan=False: an infinite or NaN weight, temperature or margin is never a method's parameter.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    ce_weight: float = 1.0
    kd_weight: float = 0.0
    kd_temperature: float = 4.0

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic takes ``true`` as 1 for a number: refused (``weight: true`` is a typo, not a weight of 1)."""
        field = cls.model_fields.get(info.field_name or "")
        if (
            isinstance(value, bool)
            and field is not None
            and field.annotation in (int, float, float | None, int | None)
        ):
            raise ValueError("expected a number, got true/false")
        return value

    @field_validator("*")
    @classmethod
    def _signs(cls, value: Any, info: ValidationInfo) -> Any:
        """Every method's loss weights are ≥ 0 and its softmax temperatures > 0, by name (:data:`LOSS_WEIGHT`,
        :data:`TEMPERATURE`): a negative weight turns a loss into a reward, a temperature ≤ 0 divides by ≤ 0."""
        name = info.field_name or ""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if LOSS_WEIGHT.search(name) and value < 0:
                raise ValueError("a loss weight must be ≥ 0")
            if TEMPERATURE.search(name) and value <= 0:
                raise ValueError("a temperature must be > 0")
        return value

    @classmethod
    def epoch_fields(cls) -> list[str]:
        """The parameters counted in epochs of the run's schedule (declared with :func:`epoch_count`)."""
        return [
            name
            for name, field in cls.model_fields.items()
            if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get(EPOCHS)
        ]

    def scale_epochs(self, epochs: int, recipe_epochs: int) -> MethodParams:
        """These parameters for a run of ``epochs`` instead of the recipe's ``recipe_epochs`` (quick profiles):
        every :meth:`epoch_fields` value scaled like the schedule, at least 1 unless it is 0 (no such stage)."""
        scaled = {
            name: max(1, round(value * epochs / recipe_epochs))
            for name in self.epoch_fields()
            if (value := getattr(self, name))
        }
        return self.model_copy(update=scaled)


# The json_schema_extra key that marks a parameter counted in epochs (epoch_count, MethodParams.epoch_fields).
EPOCHS = "kdbench_epochs"


def epoch_count(default: int) -> Any:
    """A ``Params`` field counted in epochs of the run's schedule (≥ 0), e.g. a pre-training stage's length:
    quick profiles shorten it like the schedule (:meth:`MethodParams.scale_epochs`), whatever its name."""
    return Field(default, ge=0, json_schema_extra={EPOCHS: True})


# Parameter names that are weights of loss terms (ce_weight, kd_weight, weight, cls_weight, RKD's w_dist/w_angle,
# DKD's and RLD's α/β, DIST's β/γ) and that are softmax temperatures (kd_temperature, temperature, CRD's nce_t,
# SemCKD's soft): checked for every registered method by MethodParams._signs.
LOSS_WEIGHT = re.compile(r"(^|_)weight$|^w_|^(alpha|beta|gamma)$")
TEMPERATURE = re.compile(r"temperature$|^nce_t$|^soft$")


@dataclass(frozen=True)
class Needs:
    """What a method asks of the loop and of the plan, declared instead of special-cased."""

    teacher: bool = True
    # Only the teacher's logits are read, so teacher outputs could be cached per view.
    teacher_logits_only: bool = False
    # The dataset index of every sample (CRD's memory bank); the loop always provides it.
    sample_indices: bool = False
    # A second, strongly augmented view of every image (MLKD): data/augment/strong.py.
    strong_view: bool = False
    # Modules sized by the batch size (SemCKD): every batch is full (the loop drops an incomplete one).
    fixed_batch: bool = False
    # Loss terms that depend on the whole batch, not per sample (DIST's intra-class correlation, MLKD's
    # batch/class terms and median masks): the original multi-GPU runs computed them per GPU, which
    # ``TrainSpec.loss_chunk`` emulates (the method computes them per chunk, see :func:`per_chunk`).
    batch_dependent_loss: bool = False

    @property
    def cacheable_teacher(self) -> bool:
        """The teacher's outputs can come from a per-view cache (kdbench/train/teacher_cache.py): only its logits are
        read, and there is no strong view (MLKD's random strong views are not a finite set)."""
        return self.teacher and self.teacher_logits_only and not self.strong_view

    @property
    def splits_over_processes(self) -> bool:
        """Whether a run can train as several DDP processes: not with per-sample state (CRD's memory bank) or
        modules sized by the batch (SemCKD); such runs train in one process whatever --gpus-per-run asks."""
        return not (self.sample_indices or self.fixed_batch)


@dataclass(frozen=True)
class Step:
    """What one training step knows besides the two networks' features."""

    targets: torch.Tensor
    epoch: int  # 1-indexed
    indices: torch.Tensor | None = None  # dataset indices of the batch's samples
    strong: torch.Tensor | None = None  # strong views of the batch's images, when Needs.strong_view
    loss_chunk: int | None = (
        None  # per-GPU batch of the original run (Needs.batch_dependent_loss); None: whole batch
    )


TermsFn = Callable[..., dict[str, torch.Tensor]]


def per_chunk(terms: TermsFn, chunk: int | None, *batched: torch.Tensor) -> dict[str, torch.Tensor]:
    """``terms(*batched)`` computed on consecutive chunks of ``chunk`` samples (dim 0) and averaged over chunks.

    This is what DDP / DataParallel did in the original runs: every GPU computed the batch-dependent
    losses on its own ``chunk`` samples and the gradients (DDP) or per-replica losses (DataParallel)
    were averaged with equal weights (docs/references.md §DIST, per-GPU batch). ``chunk=None`` or a chunk
    at least as large as the batch computes ``terms`` once on the whole batch."""
    size = batched[0].shape[0]
    if chunk is None or chunk >= size:
        return terms(*batched)
    parts = [terms(*pieces) for pieces in zip(*(t.split(chunk) for t in batched))]
    return {name: torch.stack([part[name] for part in parts]).mean() for name in parts[0]}


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` in the forward pass; its gradient multiplied by ``factor`` in the backward pass."""
    return x * factor + (x * (1 - factor)).detach()


def unsynced_copies_loss(parts: list[torch.Tensor]) -> torch.Tensor:
    """The loss of modules kept once per original GPU outside DDP (SimKD's CRD and VID heads), from each copy's
    loss on its GPU's chunk: the value is their mean (the GPUs' average), the gradient their sum, so each copy
    gets the whole gradient of its own loss, as its GPU's unsynchronised backward gave it. Feed the copies the
    student's features through ``scale_gradient(·, 1 / n)``, so the student gets the mean (DDP's average)."""
    per_gpu = torch.stack(parts)
    return per_gpu.sum() - (per_gpu.sum() - per_gpu.mean()).detach()


@dataclass(frozen=True)
class InitStage:
    """A pre-training stage before the main epochs (RepDistiller's "init" phase of AB, FT, FSP).

    The loop trains ``parameters`` for ``epochs`` epochs at the constant base LR with
    ``Distiller.forward_init``'s loss terms, then starts the main epochs with a fresh optimizer.
    """

    epochs: int
    parameters: list[nn.Parameter]
    lr: float | None = None  # its own constant LR; None: the run's base LR


@dataclass(frozen=True)
class InferenceSize:
    """Parameters the trained prediction uses, by origin (for SimKD's pruning ratio, Eq. 6)."""

    student: int  # of the student network
    teacher: int = 0  # reused teacher modules (SimKD: the classifier)
    added: int = 0  # the method's own modules (SimKD: the projector)

    @property
    def total(self) -> int:
        return self.student + self.teacher + self.added


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class Variant:
    """A named set of parameter values, e.g. the paper's definition vs the released code's."""

    description: str
    params: dict[str, Any]


def pair_name(student: KDModel, teacher: KDModel | None) -> str:
    """How error messages name a teacher→student pair."""
    return f"{type(student).__name__} student, {type(teacher).__name__} teacher"


@torch.no_grad()
def probe_features(
    student: KDModel, teacher: KDModel | None, example: torch.Tensor
) -> tuple[Features, Features | None]:
    """Both networks' features of ``example`` in eval mode, leaving their modes as they were."""
    networks = [m for m in (student, teacher) if m is not None]
    modes = [m.training for m in networks]
    try:
        for m in networks:
            m.eval()
        return student.forward_features(example), teacher.forward_features(
            example
        ) if teacher is not None else None
    finally:
        for m, mode in zip(networks, modes):
            m.train(mode)


class Distiller(nn.Module):
    """Student + frozen teacher + the method's extra trainable modules."""

    name: ClassVar[str]
    title: ClassVar[str]
    paper: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    needs: ClassVar[Needs] = Needs()
    variants: ClassVar[dict[str, Variant]] = {}
    # What the main prediction is, by the name extra heads use (SimKD: the reused "teacher_classifier").
    prediction_head: ClassVar[str] = "student_classifier"
    # Parameters added after runs were first recorded, with the value those runs had: left out of the run id
    # at that value (plan.RunSpec.canonical_json), so adding a parameter never renames finished runs.
    added_params: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        student: KDModel,
        teacher: KDModel | None,
        params: MethodParams,
        example: torch.Tensor,
        *,
        train_labels: torch.Tensor | None = None,
        batch_size: int | None = None,
        label_smoothing: float = 0.0,
        loss_chunk: int | None = None,
    ):
        """``example``: a few input images, to size extra modules (see :meth:`probe`).
        ``train_labels``: the label of every training sample by dataset index, for methods that
        declare ``Needs(sample_indices=True)`` (e.g. CRD's memory bank and negative sampling).
        ``batch_size``: the training batch size, for methods that declare ``Needs(fixed_batch=True)``.
        ``label_smoothing``: ε of every cross-entropy term against the labels (:meth:`cross_entropy`).
        ``loss_chunk``: compute batch-dependent losses per chunk of this many samples, for methods that
        declare ``Needs(batch_dependent_loss=True)`` (passed to :meth:`distill` as ``Step.loss_chunk``)."""
        super().__init__()
        if self.needs.teacher and teacher is None:
            raise ValueError(f"method {self.name!r} needs a teacher")
        if self.needs.sample_indices and train_labels is None:
            raise ValueError(f"method {self.name!r} needs the training labels (train_labels=...)")
        if self.needs.fixed_batch and batch_size is None:
            raise ValueError(f"method {self.name!r} needs the training batch size (batch_size=...)")
        if loss_chunk is not None and not self.needs.batch_dependent_loss:
            raise ValueError(
                f"method {self.name!r} has no batch-dependent loss to chunk (loss_chunk={loss_chunk})"
            )
        reason = type(self).supports(student, teacher, example)
        if reason is not None:
            raise KdbenchError(reason)
        self.student = student
        self.teacher = teacher
        self.params = params
        self.label_smoothing = label_smoothing
        self.loss_chunk = loss_chunk
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    def train(self, mode: bool = True) -> "Distiller":
        """Switch student and extra modules; the teacher and ``frozen_modules`` stay in eval mode always."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        for name in self.frozen_modules:
            getattr(self, name).eval().requires_grad_(False)
        return self

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against the labels, with the run's label smoothing (Szegedy et al., 2016)."""
        return losses.cross_entropy(logits, targets, self.label_smoothing)

    def probe(self, example: torch.Tensor) -> tuple[Features, Features | None]:
        """Student and teacher features of a small example batch, for sizing extra modules."""
        return probe_features(self.student, self.teacher, example)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student and extra-module parameters: everything but the teacher and ``frozen_modules``."""
        fixed = [self.teacher] if self.teacher is not None else []
        fixed += [getattr(self, name) for name in self.frozen_modules]
        fixed_ids = {id(p) for module in fixed for p in module.parameters()}
        return [p for p in self.parameters() if id(p) not in fixed_ids]

    def training_state(self) -> dict[str, torch.Tensor]:
        """Everything a resume needs (the checkpoint): all but the frozen teacher."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def inference_state(self) -> dict[str, torch.Tensor]:
        """The final weights (``model.pt``); methods drop training-only state such as memory banks."""
        return self.training_state()

    def forward_train(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        epoch: int,
        indices: torch.Tensor | None = None,
        strong: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits used for train accuracy and the weighted loss terms (the loop sums them).

        ``teacher_logits``: the teacher's logits of these images from the teacher cache (only for
        ``Needs.cacheable_teacher``); the teacher then does not run. Every network pass, the method's own
        modules' included, runs under whatever autocast the caller set; the losses are computed in float32
        at their own boundary (kdbench/losses/precision.py), so every term is float32.
        """
        student = self.student.forward_features(images)
        teacher = None
        if teacher_logits is not None:
            teacher = Features.from_logits(teacher_logits)
        elif self.teacher is not None:
            with torch.no_grad():
                teacher = self.teacher.forward_features(images)
        p = self.params
        terms: dict[str, torch.Tensor] = {}
        if p.ce_weight:
            terms["ce"] = p.ce_weight * self.cross_entropy(student.logits, targets)
        if p.kd_weight:
            assert teacher is not None, "kd_weight > 0 needs a teacher"
            terms["kd"] = p.kd_weight * losses.kd(student.logits, teacher.logits, p.kd_temperature)
        logits, own_terms = self.distill(
            student, teacher, Step(targets, epoch, indices, strong, self.loss_chunk)
        )
        terms.update(own_terms)
        return logits, terms

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The method's prediction and its own weighted loss terms (plain CE/KD: none)."""
        return self.prediction(student), {}

    def prediction(self, student: Features) -> torch.Tensor:
        """Logits the method predicts with (SimKD overrides: the reused teacher classifier)."""
        return student.logits

    # Modules the method keeps frozen throughout (eval mode, not optimised), e.g. SimKD-sequential's encoder.
    frozen_modules: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def supports(
        cls, student: KDModel, teacher: KDModel | None, example: torch.Tensor | None = None
    ) -> str | None:
        """Why this method cannot distil ``teacher`` into ``student`` (None: it can)."""
        return None

    def init_stage(self) -> InitStage | None:
        """The method's pre-training stage, if it has one (default: none)."""
        return None

    def forward_init(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms of one pre-training step (only methods with an :meth:`init_stage`)."""
        raise NotImplementedError(f"method {self.name!r} has no pre-training stage")

    def extra_heads(self, student: Features) -> dict[str, torch.Tensor]:
        """Further predictions evaluated beside the main one (e.g. SimKD's own student classifier)."""
        return {}

    @torch.no_grad()
    def forward_test_terms(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms measured on test images, averaged by the loop (e.g. SimKD's ℓ2 loss, Table 5). Default: none."""
        return {}

    def inference_size(self) -> InferenceSize:
        """What the prediction uses: the whole student (methods that predict with their own modules override)."""
        return InferenceSize(student=parameter_count(self.student))

    @torch.no_grad()
    def forward_test_heads(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The main prediction (key ``""``) and every extra head, from one student pass."""
        features = self.student.forward_features(images)
        return {"": self.prediction(features), **self.extra_heads(features)}
