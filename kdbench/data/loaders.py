"""Reference ``torch.utils.data`` loaders: per-sample augmentation that replays an ``EpochPlan``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kdbench.data.arrays import ImageArrays
from kdbench.data.augment import EpochPlan, crop_and_flip, epoch_plan, to_normalized_tensor
from kdbench.data.strong import sample_rng, strong_view

# images (B,3,H,W) float32, labels int64, sample indices int64 [, strong views (B,3,H,W) float32]
Batch = tuple[torch.Tensor, ...]


class PlannedImages(Dataset[tuple[torch.Tensor, int, int]]):
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
        """``strong_seed=(seed, epoch)`` adds MLKD's strong view of each sample (see ``data/strong.py``)."""
        self.images, self.labels, self.strong_seed = images, labels, strong_seed
        self.offsets, self.flips, self.padding = plan.offsets.numpy(), plan.flips.numpy(), plan.padding
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | int, ...]:
        dx, dy = self.offsets[index]
        image = crop_and_flip(self.images[index], int(dx), int(dy), bool(self.flips[index]), self.padding)
        item = (to_normalized_tensor(image, self.mean, self.std), int(self.labels[index]), index)
        if self.strong_seed is None:
            return item
        strong = strong_view(self.images[index], sample_rng(*self.strong_seed, index), self.padding)
        return item + (to_normalized_tensor(strong, self.mean, self.std),)


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
) -> DataLoader[Batch]:
    """Shuffled, augmented (pad-4 crop + flip) train batches of one epoch, fixed by (seed, epoch) alone.

    ``strong=True`` appends a fourth element: an independent strong view of each image (MLKD).
    """
    plan = epoch_plan(len(arrays.x_train), seed, epoch, augment=augment)
    dataset = PlannedImages(arrays.x_train, arrays.y_train, plan, arrays.mean, arrays.std, (seed, epoch) if strong else None)
    return _loader(dataset, plan, batch_size, num_workers, drop_last)


def test_loader(arrays: ImageArrays, batch_size: int, *, num_workers: int = 0) -> DataLoader[Batch]:
    """Test batches in file order, normalised, with no augmentation."""
    plan = epoch_plan(len(arrays.x_test), 0, 0, shuffle=False, augment=False, padding=0)
    dataset = PlannedImages(arrays.x_test, arrays.y_test, plan, arrays.mean, arrays.std)
    return _loader(dataset, plan, batch_size, num_workers, drop_last=False)


def _loader(
    dataset: PlannedImages, plan: EpochPlan, batch_size: int, num_workers: int, drop_last: bool
) -> DataLoader[Batch]:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=plan.order.tolist(),
        num_workers=num_workers,
        drop_last=drop_last,
        generator=torch.Generator(),  # the loader's own seed draw must not touch the global RNG
    )
