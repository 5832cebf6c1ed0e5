"""CRD (Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020).

Follows the released code (RepDistiller ``crd/{criterion,memory}.py`` and its CIFAR
instance-sample dataset ``dataset/cifar100.py``):

* Student and teacher ``pooled`` vectors each go through an embedding head Linear(d → 128) + L2
  normalisation (both trained).
* Two memory banks (N_train × 128, uniform in ±1/√(128/3)) hold past student and teacher
  embeddings. They are buffers: saved and resumed with the checkpoint, never optimised.
* Contrast indices per sample ("exact" mode, the CIFAR default): position 0 = the sample's own
  dataset index, then K = 16384 indices drawn uniformly from the training samples of *other*
  classes, without replacement (with replacement only where fewer than K such samples exist, as
  the reference does). Drawn by a ``torch.Generator`` owned by the method, reseeded at the start
  of every epoch from (a seed kept in a buffer, epoch), so a run resumed after an epoch draws the
  same negatives as an uninterrupted one. The reference draws them in its data loader with
  NumPy's global RNG; the distribution is the same, the stream is not.
* Student anchor scored against the teacher bank and teacher anchor against the student bank:
  exp(⟨m, v⟩ / 0.07) / Z, with Z = mean(scores) · N_train fixed on the very first batch per side
  and kept in a buffer (so it survives resume); NCE loss per side with P_n = 1/N, summed
  (``losses.crd``).
* After scoring, the banks' rows of the batch's own indices become
  L2-normalise(0.5 · old + 0.5 · embedding).

Per GPU (``banks`` > 1): SimKD's DDP runs keep ``CRDLoss`` outside DDP and call its own, unwrapped
heads (SimKD train_student.py:242-253, 294-302; RepDistiller crd/criterion.py:40-42), so each of the
original GPUs had its own memory banks, Z and embedding heads, the heads starting from GPU 0's weights
(DDP's broadcast at construction) and trained on that GPU's gradients alone. ``banks`` copies emulate
that: each batch is cut into ``banks`` consecutive chunks (chunk k = GPU k's samples), copy k scores and
updates only with its chunk, the student gets the mean of the copies' losses (DDP's gradient average)
and copy k's heads get the full gradient of their own loss (no averaging across GPUs). Copy 0 lives
under the usual names (``embed_s``, ``memory_s``, ``z`` …), so ``banks: 1`` is exactly the single copy;
copies 1.. are ``replicas.<k-1>.*``.

Split: this module is the state (heads, banks, sampling, Z, update); ``losses.crd_scores``
scores an anchor against a bank at given contrast indices and ``losses.crd`` is the pure NCE loss
of both sides' scores. Defaults are the CRD/RepDistiller protocol
(γ = 1, α = 0, β = 0.8); ``crd+kd`` adds KD (α = 1); ``simkd`` is SimKD's baseline protocol
(c = d = 1, β = 0.8).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, cast

import torch
from pydantic import Field
from torch import nn

from kdbench import losses
from kdbench.errors import KdbenchError
from kdbench.methods.base import (
    Distiller,
    MethodParams,
    Needs,
    Step,
    Variant,
    scale_gradient,
    unsynced_copies_loss,
)
from kdbench.methods.registry import register
from kdbench.models.base import Features, KDModel

_SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio increment: spreads consecutive epochs' seeds apart


class CRDParams(MethodParams):
    ce_weight: float = 1.0
    kd_weight: float = 0.0
    weight: float = 0.8
    feat_dim: int = 128
    nce_k: int = 16384
    nce_t: float = 0.07
    nce_m: float = 0.5
    # Independent heads + memory banks, one per GPU of the original run (module docstring); 1: one copy.
    banks: int = Field(1, ge=1)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / ‖x‖₂ per row, with no epsilon (RepDistiller ``Normalize``)."""
    return x / x.pow(2).sum(dim=1, keepdim=True).pow(0.5)


class Embed(nn.Module):
    """CRD's embedding head: Linear(d_in → d_out) with bias, then L2 normalisation."""

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.linear(x.reshape(x.shape[0], -1)))


def momentum_update(old: torch.Tensor, new: torch.Tensor, momentum: float) -> torch.Tensor:
    """Memory-bank update of CRD: L2-normalise(momentum · old + (1 − momentum) · new)."""
    return l2_normalize(old * momentum + new * (1 - momentum))


def random_banks(n_data: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher memory banks, uniform in ±1/√(dim/3) (RepDistiller ContrastMemory)."""
    stdv = 1.0 / math.sqrt(dim / 3)
    return tuple(torch.rand(n_data, dim).mul_(2 * stdv).add_(-stdv) for _ in range(2))  # type: ignore[return-value]


class BankState(Protocol):
    """One GPU's CRD state: the embedding heads, both memory banks and Z (the :class:`CRD` module
    itself is copy 0, a :class:`BankCopy` each further one)."""

    embed_s: Embed
    embed_t: Embed
    memory_s: torch.Tensor
    memory_t: torch.Tensor
    z: torch.Tensor
    _z_ready: bool


class BankCopy(nn.Module):
    """One more GPU's CRD state (``banks`` > 1): heads copied from copy 0, its own banks and Z."""

    # Buffers (register_buffer).
    memory_s: torch.Tensor
    memory_t: torch.Tensor
    z: torch.Tensor

    def __init__(self, first: CRD, n_data: int, dim: int):
        super().__init__()
        self.embed_s = copy.deepcopy(first.embed_s)
        self.embed_t = copy.deepcopy(first.embed_t)
        memory_s, memory_t = random_banks(n_data, dim)
        self.register_buffer("memory_s", memory_s)
        self.register_buffer("memory_t", memory_t)
        self.register_buffer("z", torch.full((2,), -1.0))
        self._z_ready = False


def epoch_seed(seed: int, epoch: int) -> int:
    """The negative sampler's seed for one epoch, from the run's sampler seed."""
    return (seed + epoch * _SEED_MIX) % (1 << 63)


def sample_contrast_indices(
    indices: torch.Tensor,
    train_labels: torch.Tensor,
    k: int,
    generator: torch.Generator,
    *,
    min_available: int | None = None,
) -> torch.Tensor:
    """(B, K+1) contrast indices: the sample itself, then K samples of other classes.

    Like RepDistiller's instance-sample dataset in "exact" mode: negatives are drawn uniformly
    from the training samples whose label differs from the sample's, without replacement when
    at least K exist (random keys, the K smallest kept), else with replacement.
    ``min_available``: the fewest other-class samples any sample has, if the caller knows it;
    when it is ≥ K the checks that need a device sync are skipped.
    """
    labels = train_labels[indices]
    n = train_labels.numel()
    other = train_labels[None, :] != labels[:, None]  # (B, N) eligible negatives
    keys = torch.rand(
        indices.numel(), n, generator=generator, device=train_labels.device, dtype=torch.float64
    )
    keys.masked_fill_(~other, math.inf)
    if min_available is not None and min_available >= k:
        return torch.cat(
            [
                indices.reshape(-1, 1).long(),
                keys.topk(k, dim=1, largest=False, sorted=False).indices,
            ],
            dim=1,
        )
    available = other.sum(dim=1)
    if bool((available == 0).any()):
        raise KdbenchError(
            "CRD needs training samples of at least two classes: every negative must have another label."
        )
    short = available < k
    if not bool(short.any()):
        negatives = keys.topk(k, dim=1, largest=False, sorted=False).indices
    else:  # with replacement for the rows that have fewer than K negatives (tiny data sets only)
        negatives = torch.empty(indices.numel(), k, dtype=torch.long, device=train_labels.device)
        full = ~short
        if bool(full.any()):
            negatives[full] = keys[full].topk(k, dim=1, largest=False, sorted=False).indices
        for row in short.nonzero().flatten().tolist():
            candidates = other[row].nonzero().flatten()
            picks = torch.randint(
                candidates.numel(), (k,), generator=generator, device=train_labels.device
            )
            negatives[row] = candidates[picks]
    return torch.cat([indices.reshape(-1, 1).long(), negatives], dim=1)


@register
class CRD(Distiller):
    name = "crd"
    title = "CRD"
    paper = "Tian, Krishnan & Isola, Contrastive Representation Distillation, ICLR 2020"
    Params = CRDParams
    params: CRDParams
    needs = Needs(teacher=True, sample_indices=True)
    # Buffers (register_buffer).
    memory_s: torch.Tensor
    memory_t: torch.Tensor
    z: torch.Tensor
    sampler_seed: torch.Tensor
    train_labels: torch.Tensor
    added_params: ClassVar[dict[str, Any]] = {"banks": 1}
    variants = {
        "crd": Variant(
            "CRD/RepDistiller protocol: 1·CE + 0·KD + 0.8·CRD",
            {"ce_weight": 1.0, "kd_weight": 0.0, "weight": 0.8},
        ),
        "crd+kd": Variant(
            "CRD paper's CRD+KD row: 1·CE + 1·KD (T=4) + 0.8·CRD",
            {"ce_weight": 1.0, "kd_weight": 1.0, "weight": 0.8},
        ),
        "simkd": Variant(
            "SimKD code protocol: 1·CE + 1·KD (T=4) + 0.8·CRD",
            {"ce_weight": 1.0, "kd_weight": 1.0, "weight": 0.8},
        ),
    }

    def __init__(
        self,
        student: KDModel,
        teacher: KDModel | None,
        params: CRDParams,
        example: torch.Tensor,
        *,
        train_labels: torch.Tensor | None = None,
        **context: Any,
    ):
        super().__init__(student, teacher, params, example, train_labels=train_labels, **context)
        assert train_labels is not None
        labels = torch.as_tensor(train_labels).long().flatten()
        n_data, dim = labels.numel(), params.feat_dim
        if n_data < 1:
            raise KdbenchError("CRD needs a non-empty training set (train_labels is empty).")
        s, t = self.probe(example)
        assert t is not None
        self.embed_s = Embed(s.pooled.shape[1], dim)
        self.embed_t = Embed(t.pooled.shape[1], dim)
        memory_s, memory_t = random_banks(n_data, dim)
        self.register_buffer("memory_s", memory_s)
        self.register_buffer("memory_t", memory_t)
        # Normalising constants [Z of the student anchor, Z of the teacher anchor]; < 0 = not set yet.
        self.register_buffer("z", torch.full((2,), -1.0))
        self.register_buffer("sampler_seed", torch.randint(0, 1 << 62, (), dtype=torch.long))
        # Copies 1.. (none, and no module, for one bank: the state is exactly the single copy's).
        self.replicas: Sequence[BankCopy] = (
            cast(  # a ModuleList of BankCopy (torch types its items as plain modules)
                "Sequence[BankCopy]",
                nn.ModuleList(BankCopy(self, n_data, dim) for _ in range(params.banks - 1)),
            )
            if params.banks > 1
            else ()
        )
        self.register_buffer("train_labels", labels, persistent=False)
        self.n_data = n_data
        counts = torch.bincount(labels - labels.min())
        self.min_available = n_data - int(counts.max())  # fewest other-class samples of any sample
        if self.min_available == 0:
            raise KdbenchError(
                "CRD needs training samples of at least two classes: every negative must have another label."
            )
        self._generator: torch.Generator | None = None
        self._generator_epoch: int | None = None
        self._z_ready = False  # host-side cache of "z >= 0", so steps need no device sync
        self.register_load_state_dict_post_hook(CRD._forget_host_state)

    @staticmethod
    def _forget_host_state(module: nn.Module, incompatible_keys: object) -> None:
        assert isinstance(module, CRD)  # registered on a CRD by its __init__
        module._z_ready = False
        module._generator_epoch = None
        for replica in module.replicas:
            replica._z_ready = False

    def copies(self) -> list[BankState]:
        """The per-GPU CRD states: this module (copy 0), then its replicas."""
        return [self, *self.replicas]

    def generator(self, epoch: int) -> torch.Generator:
        """The sampler's generator, on the banks' device, reseeded whenever the epoch changes."""
        device = self.memory_s.device
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator_epoch = None
        if self._generator_epoch != epoch:
            self._generator.manual_seed(epoch_seed(int(self.sampler_seed), epoch))
            self._generator_epoch = epoch
        return self._generator

    def contrast_indices(self, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        return sample_contrast_indices(
            indices,
            self.train_labels,
            self.params.nce_k,
            self.generator(epoch),
            min_available=self.min_available,
        )

    @torch.no_grad()
    def _set_z_once(self, state: BankState, scores_s: torch.Tensor, scores_t: torch.Tensor) -> None:
        """Z = mean(exp-scores) · N on a copy's first batch, per side (RepDistiller ContrastMemory)."""
        if state._z_ready:
            return
        if state.z[0] < 0:
            state.z[0] = scores_s.mean() * self.n_data
        if state.z[1] < 0:
            state.z[1] = scores_t.mean() * self.n_data
        state._z_ready = True

    @torch.no_grad()
    def _update_memory(
        self, state: BankState, indices: torch.Tensor, emb_s: torch.Tensor, emb_t: torch.Tensor
    ) -> None:
        """A copy's rows of the batch ← normalise(m·old + (1−m)·new). Out of place: the step's autograd
        graph still holds the banks the scores were computed from."""
        m = self.params.nce_m
        new_s = momentum_update(state.memory_s[indices], emb_s.to(state.memory_s.dtype), m)
        new_t = momentum_update(state.memory_t[indices], emb_t.to(state.memory_t.dtype), m)
        state.memory_s = state.memory_s.index_copy(0, indices, new_s)
        state.memory_t = state.memory_t.index_copy(0, indices, new_t)

    def inference_state(self) -> dict[str, torch.Tensor]:
        """Final weights without the memory banks and sampler state (needed to resume, not to predict)."""
        training_only = ("memory_s", "memory_t", "z", "sampler_seed")

        def own_name(key: str) -> str:  # replicas.<k>.memory_s → memory_s
            return key.split(".", 2)[-1] if key.startswith("replicas.") else key

        return {k: v for k, v in self.training_state().items() if own_name(k) not in training_only}

    def _copy_loss(
        self,
        state: BankState,
        pooled_s: torch.Tensor,
        pooled_t: torch.Tensor,
        indices: torch.Tensor,
        contrast: torch.Tensor,
    ) -> torch.Tensor:
        """One copy's (one GPU's) CRD loss on its samples; updates its banks (and its Z on its first batch)."""
        emb_s = state.embed_s(pooled_s)
        emb_t = state.embed_t(pooled_t)
        t = self.params.nce_t
        scores_s = losses.crd_scores(
            emb_s, state.memory_t, contrast, t
        )  # student anchor, teacher bank
        scores_t = losses.crd_scores(
            emb_t, state.memory_s, contrast, t
        )  # teacher anchor, student bank
        self._set_z_once(state, scores_s, scores_t)
        loss = losses.crd(scores_s, scores_t, state.z[0], state.z[1], self.n_data)
        self._update_memory(state, indices, emb_s.detach(), emb_t.detach())
        return loss

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert teacher is not None
        if step.indices is None:
            raise KdbenchError(
                "CRD needs the dataset index of every training sample (pass indices= to forward_train)."
            )
        indices = step.indices.to(self.memory_s.device).long().flatten()
        contrast = self.contrast_indices(
            indices, step.epoch
        )  # (B, K+1), column 0 = the sample itself
        pooled_s, pooled_t = student.pooled, teacher.pooled.detach()
        n = len(self.replicas) + 1
        if n == 1:
            return student.logits, {
                "crd": self.params.weight
                * self._copy_loss(self, pooled_s, pooled_t, indices, contrast)
            }
        if indices.numel() < n:
            raise KdbenchError(
                f"CRD with {n} per-GPU banks needs batches of at least {n} samples (got {indices.numel()})."
            )
        # Chunk k = GPU k's samples: the student gets the mean of the copies' gradients, each copy its own in full.
        parts = [
            self._copy_loss(state, scale_gradient(ps, 1 / n), pt, idx, con)
            for state, ps, pt, idx, con in zip(
                self.copies(),
                *(x.tensor_split(n) for x in (pooled_s, pooled_t, indices, contrast)),
                strict=True,
            )
        ]
        return student.logits, {"crd": self.params.weight * unsynced_copies_loss(parts)}
