"""Reference loaders of image-folder datasets (ImageNet): DataLoader workers decode with PIL.

The epoch's order comes from ``epoch_plan`` and each sample's crop and flip from ``crop_rng(seed, epoch,
index)``, so a batch depends on (seed, epoch) alone: resume is exact and the number of workers never matters.
``shard=(rank, world)``: rank r of w DDP processes gets the slice [r·b/w, (r+1)·b/w) of every global batch
of b samples, and decodes only that slice.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kdbench.data.augment.epoch_plan import epoch_plan
from kdbench.data.augment.imagenet_views import (
    crop_rng,
    decode,
    test_view,
    to_tensor,
    train_view,
)
from kdbench.data.folder import FolderDataset
from kdbench.data.loaders.torch_arrays import Batch
from kdbench.data.shard import WHOLE, Shard, local_order
from kdbench.errors import KdbenchError


def strong_view_unsupported(dataset: FolderDataset) -> KdbenchError:
    return KdbenchError(
        f"MLKD's strong view is implemented for CIFAR-style in-memory datasets only, not for {dataset.name!r}; "
        "ImageNet MLKD is out of scope: use another method or a CIFAR recipe."
    )


class FolderImages(Dataset[tuple[torch.Tensor, int, int]]):
    """Item ``i``: sample ``i`` of ``split`` decoded, viewed (train: random resized crop + flip drawn from
    ``crop_rng(seed, epoch, i)``; otherwise the resize + centre-crop view), normalised, with label and index."""

    def __init__(
        self,
        dataset: FolderDataset,
        split: str,
        seed: int = 0,
        epoch: int = 0,
        augment: bool = False,
    ) -> None:
        self.dataset, self.split, self.seed, self.epoch, self.augment = (
            dataset,
            split,
            seed,
            epoch,
            augment,
        )
        self.labels = dataset.y_train if split == "train" else dataset.y_test
        self.mean = torch.tensor(dataset.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(dataset.std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image = decode(self.dataset.path(self.split, index))
        crop = self.dataset.crop
        view = (
            train_view(image, crop_rng(self.seed, self.epoch, index), crop)
            if self.augment
            else test_view(image, crop)
        )
        return to_tensor(view, self.mean, self.std), int(self.labels[index]), index


def shard_batches(
    order: np.ndarray, batch_size: int, shard: Shard, drop_last: bool, *, train: bool = True
) -> list[list[int]]:
    """This rank's local batches: its slice of every global batch of ``order`` (data/shard.py)."""
    local = local_order(torch.as_tensor(order), batch_size, shard, drop_last=drop_last, train=train)
    per_rank = batch_size // shard[1]
    return [local[i : i + per_rank].tolist() for i in range(0, len(local), per_rank)]


class FolderLoaders:
    """Train and test batches of a ``FolderDataset``, decoded by DataLoader workers (the ``torch`` kind);
    ``pin_memory`` (a CUDA run): batches in page-locked memory, so the loop's ``non_blocking`` copies are
    asynchronous."""

    kind = "torch"

    def __init__(
        self, dataset: FolderDataset, num_workers: int = 0, pin_memory: bool = False
    ) -> None:
        self.dataset, self.num_workers, self.pin_memory = dataset, num_workers, pin_memory

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
        """Shuffled batches of one epoch, fixed by (seed, epoch); ``augment=False`` gives the test view."""
        if strong:
            raise strong_view_unsupported(self.dataset)
        order = epoch_plan(len(self.dataset.y_train), seed, epoch).order.numpy()
        images = FolderImages(self.dataset, "train", seed, epoch, augment)
        return self._loader(images, shard_batches(order, batch_size, shard, drop_last))

    def test(self, batch_size: int, *, shard: Shard = WHOLE) -> DataLoader[Batch]:
        """Test (ImageNet val) batches in file order, resize + centre crop."""
        order = np.arange(len(self.dataset.y_test))
        return self._loader(
            FolderImages(self.dataset, "test"),
            shard_batches(order, batch_size, shard, False, train=False),
        )

    def _loader(self, images: FolderImages, batches: list[list[int]]) -> DataLoader[Batch]:
        # torch types a loader's batches as its dataset's items; the default collate makes the ints tensors
        items: Dataset[Any] = images
        return DataLoader(
            items,
            batch_sampler=batches,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=torch.Generator(),
        )  # the loader's own seed draw must not touch the global RNG


def example_images(dataset: FolderDataset, count: int = 2) -> torch.Tensor:
    """The test views of the first ``count`` test images, (count, 3, size, size): what networks are probed with."""
    images = FolderImages(dataset, "test")
    return torch.stack([images[i][0] for i in range(min(count, len(images)))])
