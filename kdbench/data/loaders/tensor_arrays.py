"""Device-resident loader: the whole uint8 dataset on the run's device, every batch cut with tensor ops.

Each batch replays the same ``EpochPlan`` as the reference loader (``data/loaders/torch_arrays.py``): gathered in the
plan's order, cropped at the plan's (dx, dy) from the zero-padded images and mirrored where the plan says,
in one advanced-indexing gather per batch. Normalisation is a lookup in a (3, 256) table computed on the
CPU with the reference's own ops, so the values equal the reference's bit for bit on every device.
MLKD's strong views are made on the device too, batch by batch (``data/augment/strong_batched.py``): the same
per-sample random decisions as the reference's PIL views, and the same pixels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kdbench.data.arrays import ImageArrays
from kdbench.data.augment.epoch_plan import EpochPlan, epoch_plan
from kdbench.data.augment.strong_batched import draws, strong_views, to_device
from kdbench.data.loaders.torch_arrays import Batch, identity_plan
from kdbench.data.shard import WHOLE, Shard, shard_plan

TRAIN_PADDING = 4  # the padding of every train plan (``epoch_plan``'s default)


def normalisation_table(mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """float32 (C, 256): entry [c, v] is value v of channel c scaled to [0, 1], minus mean, over std.

    Computed on the CPU with the ops of ``augment.to_normalized_tensor``, in the same order.
    """
    values = torch.arange(256).to(torch.float32).repeat(len(mean), 1)
    return (
        values.div_(255.0).sub_(torch.tensor(mean).view(-1, 1)).div_(torch.tensor(std).view(-1, 1))
    )


def pad_images(images: torch.Tensor, padding: int) -> torch.Tensor:
    """uint8 (N,H,W,C) -> uint8 (N,C,H+2p,W+2p) with zero borders."""
    return F.pad(images.permute(0, 3, 1, 2), (padding,) * 4).contiguous()


def crop_flip(
    padded: torch.Tensor,
    positions: torch.Tensor,
    offsets: torch.Tensor,
    flips: torch.Tensor,
    padding: int,
) -> torch.Tensor:
    """uint8 (B,C,H,W): images ``padded[positions]`` (padded by ``padding``) cropped at column dx, row dy
    (``offsets[b] = (dx, dy)``) and mirrored left-right where ``flips`` is set, in one gather."""
    channels, height, width = (
        padded.shape[1],
        padded.shape[2] - 2 * padding,
        padded.shape[3] - 2 * padding,
    )
    device = padded.device
    rows = offsets[:, 1, None] + torch.arange(height, device=device)
    cols = offsets[:, 0, None] + torch.arange(width, device=device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    channel = torch.arange(channels, device=device)[None, :, None, None]
    return padded[
        positions[:, None, None, None], channel, rows[:, None, :, None], cols[:, None, None, :]
    ]


def normalise(pixels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """uint8 (B,C,H,W) → float32 through the (C, 256) ``normalisation_table``."""
    channel = torch.arange(pixels.shape[1], device=pixels.device)[None, :, None, None]
    return table[channel, pixels.long()]


def crop_flip_normalise(
    padded: torch.Tensor,
    positions: torch.Tensor,
    offsets: torch.Tensor,
    flips: torch.Tensor,
    padding: int,
    table: torch.Tensor,
) -> torch.Tensor:
    """float32 (B,C,H,W): ``crop_flip`` then ``normalise``."""
    return normalise(crop_flip(padded, positions, offsets, flips, padding), table)


@dataclass(frozen=True)
class ResidentSplit:
    """One split on the device: uint8 images (N,C,H+2p,W+2p) zero-padded by ``padding``, int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    padding: int

    @classmethod
    def from_arrays(
        cls, images: np.ndarray, labels: np.ndarray, padding: int, device: torch.device
    ) -> ResidentSplit:
        padded = pad_images(torch.from_numpy(images).to(device), padding)
        return cls(padded, torch.from_numpy(labels).to(device), padding)


class StrongViewBatches:
    """MLKD's strong views of a batch of sample indices for (seed, epoch), on the split's device, normalised."""

    def __init__(self, split: ResidentSplit, table: torch.Tensor, seed: int, epoch: int) -> None:
        self.split, self.table, self.seed, self.epoch = split, table, seed, epoch

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        """``indices``: int64 (B,) on the CPU."""
        padding = self.split.padding
        height, width = (size - 2 * padding for size in self.split.images.shape[2:])
        decisions = draws(self.seed, self.epoch, indices.tolist(), width, height, padding)
        device = self.split.images.device
        offsets = to_device(
            torch.tensor([(d.dx, d.dy) for d in decisions], dtype=torch.int64), device
        )
        flips = to_device(torch.tensor([d.flip for d in decisions]), device)
        cropped = crop_flip(self.split.images, to_device(indices, device), offsets, flips, padding)
        return normalise(strong_views(cropped, decisions), self.table)


class PlannedBatches:
    """The batches of one epoch plan over a resident split; same batches as the reference ``DataLoader``."""

    def __init__(
        self,
        split: ResidentSplit,
        plan: EpochPlan,
        batch_size: int,
        table: torch.Tensor,
        drop_last: bool = False,
        strong: StrongViewBatches | None = None,
    ) -> None:
        """``strong``: makes each batch's strong views (MLKD), appended as a fourth element."""
        if plan.padding != split.padding:
            raise ValueError(f"plan padding {plan.padding} != resident padding {split.padding}")
        self.split, self.plan, self.batch_size, self.table = split, plan, batch_size, table
        self.drop_last, self.strong = drop_last, strong

    def __len__(self) -> int:
        count = len(self.plan.order)
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        device = self.split.images.device
        order = self.plan.order.to(device)
        offsets, flips = self.plan.offsets.to(device), self.plan.flips.to(device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            images = crop_flip_normalise(
                self.split.images,
                index,
                offsets[index],
                flips[index],
                self.split.padding,
                self.table,
            )
            batch: Batch = (images, self.split.labels[index], index)
            if self.strong is not None:
                batch += (self.strong(self.plan.order[start : start + self.batch_size]),)
            yield batch


class TensorLoaders:
    """Train and test batches from the dataset held on ``device`` (built once per run)."""

    kind = "tensor"

    def __init__(self, arrays: ImageArrays, device: torch.device, num_workers: int = 0) -> None:
        """``num_workers`` is accepted for the shared interface; every batch is made on ``device``."""
        self.arrays, self.num_workers = arrays, num_workers
        self.train_split = ResidentSplit.from_arrays(
            arrays.x_train, arrays.y_train, TRAIN_PADDING, device
        )
        self.test_split = ResidentSplit.from_arrays(arrays.x_test, arrays.y_test, 0, device)
        self.table = normalisation_table(arrays.mean, arrays.std).to(device)

    def train(
        self,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        augment: bool = True,
        drop_last: bool = False,
        strong: bool = False,
        shard: Shard = WHOLE,
    ) -> PlannedBatches:
        """Same arguments and batches as ``loaders.train_loader``, already on the device."""
        plan = epoch_plan(
            len(self.arrays.x_train), seed, epoch, augment=augment, padding=TRAIN_PADDING
        )
        plan, batch_size, drop_last = shard_plan(plan, batch_size, shard, drop_last)
        views = StrongViewBatches(self.train_split, self.table, seed, epoch) if strong else None
        return PlannedBatches(self.train_split, plan, batch_size, self.table, drop_last, views)

    def test(self, batch_size: int, *, shard: Shard = WHOLE) -> PlannedBatches:
        """Same batches as ``loaders.test_loader``, already on the device."""
        plan, batch_size, _ = shard_plan(
            identity_plan(len(self.arrays.x_test)), batch_size, shard, False, train=False
        )
        return PlannedBatches(self.test_split, plan, batch_size, self.table)
