"""FFCV as a fast reader of in-memory (CIFAR-style) datasets, still replaying our ``EpochPlan``.

The .beton files hold raw RGB images, labels and sample indices (``ffcv_files.py``); a run reads them in the
epoch plan's order, then crop, flip and normalisation follow the plan with the same batched tensor ops as the
tensor loader, so every batch equals the reference loader's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdbench.data.arrays import ImageArrays
from kdbench.data.augment.epoch_plan import EpochPlan, epoch_plan
from kdbench.data.loaders.ffcv_files import (
    FfcvReader,
    check_meta,
    import_ffcv,
    non_blocking_from,
    write_betons,
)
from kdbench.data.loaders.tensor_arrays import TRAIN_PADDING, crop_flip_normalise, pad_images
from kdbench.data.loaders.torch_arrays import Batch, identity_plan, strong_loader
from kdbench.data.shard import WHOLE, Shard, shard_plan


def fingerprint(arrays: ImageArrays) -> str:
    """sha256 of both splits' images and labels (shapes included): .beton files serve only these arrays."""
    digest = hashlib.sha256()
    for array in (arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test):
        digest.update(repr(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


class _Samples:
    """An indexed dataset for ffcv's writer: (image (H,W,3) uint8, label, sample index)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, int]:
        return self.images[index], int(self.labels[index]), index


def prepare(arrays: ImageArrays, out: Path, num_workers: int | None = None) -> Path:
    """Write ``out/train.beton``, ``out/test.beton`` (raw images) and ``out/meta.json`` (last: its presence means done)."""
    ffcv = import_ffcv()
    meta = {
        "dataset": arrays.name,
        "fingerprint": fingerprint(arrays),
        "train": len(arrays.x_train),
        "test": len(arrays.x_test),
    }
    samples = {
        "train": _Samples(arrays.x_train, arrays.y_train),
        "test": _Samples(arrays.x_test, arrays.y_test),
    }
    return write_betons(
        ffcv, out, lambda: ffcv.RGBImageField(write_mode="raw"), samples, meta, num_workers
    )


class FfcvBatches:
    """One epoch of an ffcv ``Loader`` read in ``plan``'s order, augmented as the plan says, on ``device``."""

    def __init__(
        self,
        loaders: FfcvLoaders,
        loader: Any,
        plan: EpochPlan,
        strong: Iterable[torch.Tensor] | None,
    ) -> None:
        self.loaders, self.loader, self.plan, self.strong = loaders, loader, plan, strong

    def __len__(self) -> int:
        """From the plan's order, which a shard makes shorter than the file (ffcv's own length counts the file)."""
        count, size = len(self.plan.order), self.loader.batch_size
        return count // size if self.loader.drop_last else -(-count // size)

    def __iter__(self) -> Iterator[Batch]:
        device, table, padding = self.loaders.device, self.loaders.table, self.plan.padding
        offsets, flips = self.plan.offsets.to(device), self.plan.flips.to(device)
        threads = torch.get_num_threads()
        self.loader.traversal_order.order = self.plan.order.numpy()
        strong = iter(self.strong) if self.strong is not None else None
        try:
            for images, labels, index in self.loader:
                if torch.get_num_threads() != threads:
                    torch.set_num_threads(threads)
                # ffcv recycles its batch buffers: everything kept is copied first.
                index = index.view(-1).to(
                    device, copy=True, non_blocking=non_blocking_from(index, device)
                )
                padded = pad_images(
                    images.to(device, non_blocking=non_blocking_from(images, device)), padding
                )
                positions = torch.arange(len(index), device=device)
                batch: Batch = (
                    crop_flip_normalise(
                        padded, positions, offsets[index], flips[index], padding, table
                    ),
                    labels.view(-1).to(
                        device, copy=True, non_blocking=non_blocking_from(labels, device)
                    ),
                    index,
                )
                if strong is not None:
                    batch += (next(strong).to(device, non_blocking=True),)
                yield batch
        finally:
            torch.set_num_threads(threads)


class FfcvLoaders(FfcvReader):
    """Train and test batches read by ffcv from the .beton files in ``directory`` (see ``prepare``)."""

    kind = "ffcv"

    def __init__(
        self, arrays: ImageArrays, device: torch.device, directory: Path, num_workers: int = 0
    ) -> None:
        """Raises ``FfcvUnavailable`` when ffcv is missing or the files do not hold exactly ``arrays``."""
        super().__init__(directory, device, arrays.mean, arrays.std, num_workers)
        check_meta(directory, arrays.name, fingerprint(arrays), len(arrays.x_train))
        self.arrays = arrays

    def _split_loader(self, split: str, batch_size: int, drop_last: bool) -> Any:
        """One ffcv ``Loader`` per (split, batch size, drop_last), raw images decoded as stored."""
        return self._loader(
            (split, batch_size, drop_last), drop_last, lambda: [self.ffcv.SimpleRGBImageDecoder()]
        )

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
    ) -> FfcvBatches:
        """Same arguments and batches as ``loaders.train_loader``, already on the device."""
        plan = epoch_plan(
            len(self.arrays.x_train), seed, epoch, augment=augment, padding=TRAIN_PADDING
        )
        plan, batch_size, drop_last = shard_plan(plan, batch_size, shard, drop_last)
        views = (
            strong_loader(
                self.arrays,
                plan,
                batch_size,
                seed,
                epoch,
                self.num_workers,
                drop_last,
                pin_memory=self.device.type == "cuda",
            )
            if strong
            else None
        )
        return FfcvBatches(self, self._split_loader("train", batch_size, drop_last), plan, views)

    def test(self, batch_size: int, *, shard: Shard = WHOLE) -> FfcvBatches:
        """Same batches as ``loaders.test_loader``, already on the device."""
        plan, batch_size, _ = shard_plan(
            identity_plan(len(self.arrays.x_test)), batch_size, shard, False, train=False
        )
        return FfcvBatches(self, self._split_loader("test", batch_size, False), plan, None)
