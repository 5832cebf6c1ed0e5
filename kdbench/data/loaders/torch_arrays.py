"""Reference ``torch.utils.data`` loaders: per-sample augmentation that replays an ``EpochPlan``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kdbench.data.arrays import ImageArrays
from kdbench.data.augment.epoch_plan import (
    EpochPlan,
    crop_and_flip,
    epoch_plan,
    to_normalized_tensor,
)
from kdbench.data.augment.strong import sample_rng, strong_view
from kdbench.data.shard import WHOLE, Shard, shard_plan

# images (B,3,H,W) float32, labels int64, sample indices int64 [, strong views (B,3,H,W) float32]
Batch = tuple[torch.Tensor, ...]


class StrongViews(Dataset[torch.Tensor]):
    """Item ``i`` is MLKD's strong view of sample ``i`` for (seed, epoch), normalised (see ``data/augment/strong.py``)."""

    def __init__(
        self,
        images: np.ndarray,
        mean: torch.Tensor,
        std: torch.Tensor,
        seed: int,
        epoch: int,
        padding: int,
    ) -> None:
        self.images, self.mean, self.std = images, mean, std
        self.seed, self.epoch, self.padding = seed, epoch, padding

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        strong = strong_view(
            self.images[index], sample_rng(self.seed, self.epoch, index), self.padding
        )
        return to_normalized_tensor(strong, self.mean, self.std)


# (image, label, index), and the strong view where there is one
PlannedItem = tuple[torch.Tensor, int, int] | tuple[torch.Tensor, int, int, torch.Tensor]


class PlannedImages(Dataset[PlannedItem]):
    """Item ``i`` is sample ``i`` cropped and flipped as ``plan`` says, normalised, with its label and index."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        plan: EpochPlan,
        mean: Sequence[float],
        std: Sequence[float],
        strong_seed: tuple[int, int] | None = None,
    ) -> None:
        """``strong_seed=(seed, epoch)`` adds MLKD's strong view of each sample (see ``data/augment/strong.py``)."""
        self.images, self.labels = images, labels
        self.offsets, self.flips, self.padding = (
            plan.offsets.numpy(),
            plan.flips.numpy(),
            plan.padding,
        )
        self.mean, self.std = _channel_tensor(mean), _channel_tensor(std)
        self.strong = (
            StrongViews(images, self.mean, self.std, *strong_seed, plan.padding)
            if strong_seed
            else None
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> PlannedItem:
        dx, dy = self.offsets[index]
        image = crop_and_flip(
            self.images[index], int(dx), int(dy), bool(self.flips[index]), self.padding
        )
        item = (to_normalized_tensor(image, self.mean, self.std), int(self.labels[index]), index)
        return item if self.strong is None else item + (self.strong[index],)


def train_loader(
    arrays: ImageArrays,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    augment: bool = True,
    num_workers: int = 0,
    drop_last: bool = False,
    strong: bool = False,
    shard: Shard = WHOLE,
    pin_memory: bool = False,
) -> DataLoader[Batch]:
    """Shuffled, augmented (pad-4 crop + flip) train batches of one epoch, fixed by (seed, epoch) alone.

    ``strong=True`` appends a fourth element: an independent strong view of each image (MLKD).
    ``shard=(rank, world)``: only that rank's slice of every global batch (``data/shard.py``).
    ``pin_memory``: batches in page-locked memory, so that the loop's ``non_blocking`` copies to a GPU are
    asynchronous (from pageable memory the host waits for each copy).
    """
    plan = epoch_plan(len(arrays.x_train), seed, epoch, augment=augment)
    plan, batch_size, drop_last = shard_plan(plan, batch_size, shard, drop_last)
    dataset = PlannedImages(
        arrays.x_train,
        arrays.y_train,
        plan,
        arrays.mean,
        arrays.std,
        (seed, epoch) if strong else None,
    )
    return _loader(dataset, plan, batch_size, num_workers, drop_last, pin_memory)


def test_loader(
    arrays: ImageArrays,
    batch_size: int,
    *,
    num_workers: int = 0,
    shard: Shard = WHOLE,
    pin_memory: bool = False,
) -> DataLoader[Batch]:
    """Test batches in file order, normalised, with no augmentation (``shard``: one rank's slices)."""
    plan, batch_size, _ = shard_plan(
        identity_plan(len(arrays.x_test)), batch_size, shard, False, train=False
    )
    dataset = PlannedImages(arrays.x_test, arrays.y_test, plan, arrays.mean, arrays.std)
    return _loader(dataset, plan, batch_size, num_workers, drop_last=False, pin_memory=pin_memory)


def identity_plan(num_samples: int) -> EpochPlan:
    """The test split's plan: file order, no padding, no crop offset, no flip."""
    return epoch_plan(num_samples, 0, 0, shuffle=False, augment=False, padding=0)


def strong_loader(
    arrays: ImageArrays,
    plan: EpochPlan,
    batch_size: int,
    seed: int,
    epoch: int,
    num_workers: int,
    drop_last: bool,
    pin_memory: bool = False,
) -> DataLoader[torch.Tensor]:
    """Batches of MLKD's strong views of the train split, in ``plan``'s order (what ``train_loader`` appends)."""
    views = StrongViews(
        arrays.x_train,
        _channel_tensor(arrays.mean),
        _channel_tensor(arrays.std),
        seed,
        epoch,
        plan.padding,
    )
    return _loader(views, plan, batch_size, num_workers, drop_last, pin_memory)


class TorchLoaders:
    """The reference loaders behind the interface every loader kind shares (see ``data/loaders/factory.py``);
    ``pin_memory`` for a CUDA run (see ``train_loader``)."""

    kind = "torch"

    def __init__(self, arrays: ImageArrays, num_workers: int = 0, pin_memory: bool = False) -> None:
        self.arrays, self.num_workers, self.pin_memory = arrays, num_workers, pin_memory

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
    ) -> DataLoader[Batch]:
        return train_loader(
            self.arrays,
            batch_size,
            seed=seed,
            epoch=epoch,
            augment=augment,
            num_workers=self.num_workers,
            drop_last=drop_last,
            strong=strong,
            shard=shard,
            pin_memory=self.pin_memory,
        )

    def test(self, batch_size: int, *, shard: Shard = WHOLE) -> DataLoader[Batch]:
        return test_loader(
            self.arrays,
            batch_size,
            num_workers=self.num_workers,
            shard=shard,
            pin_memory=self.pin_memory,
        )


def _channel_tensor(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1)


def _loader(
    dataset: Dataset,
    plan: EpochPlan,
    batch_size: int,
    num_workers: int,
    drop_last: bool,
    pin_memory: bool = False,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=plan.order.tolist(),
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=torch.Generator(),  # the loader's own seed draw must not touch the global RNG
    )
