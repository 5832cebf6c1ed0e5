"""FFCV for image-folder datasets (ImageNet): ``kdbench data prepare imagenet`` and the ``ffcv`` loader.

Writing follows FFCV's ImageNet example (libffcv/ffcv ``examples/imagenet``, ``write_imagenet.sh 500 0.50
90``): ``RGBImageField(write_mode="proportion", max_resolution=500, compress_probability=0.5,
jpeg_quality=90)``, i.e. images with a longer side over 500 px are shrunk to 500 and half of them are
stored as JPEG, the rest raw. Reading decodes with ``RandomResizedCropRGBImageDecoder`` (train, the same
scale/ratio ranges and the same 10-attempt rule as ``imagenet_transforms.crop_box``) + ``RandomHorizontalFlip``,
and ``CenterCropRGBImageDecoder(ratio=224/256)`` (test). FFCV draws crops and flips with its own RNG and
resizes with OpenCV: the ffcv loader gives the reference loader's *distribution*, not its draws, so a
run's numbers depend on the loader kind and a resumed ffcv run does not replay its epoch's crops.
The traversal order is still the epoch plan's, sharded like the reference's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image

from kdbench.data.augment.epoch_plan import epoch_plan
from kdbench.data.augment.imagenet_views import decode
from kdbench.data.folder import FolderDataset
from kdbench.data.loaders.ffcv_files import (
    FfcvReader,
    check_meta,
    import_ffcv,
    non_blocking_from,
    write_betons,
)
from kdbench.data.loaders.torch_arrays import Batch
from kdbench.data.loaders.torch_folder import strong_view_unsupported
from kdbench.data.shard import local_order
from kdbench.errors import KdbenchError

WRITE_MODES = ("proportion", "jpg", "raw", "smart")
# FFCV's ImageNet example settings (write_imagenet.sh 500 0.50 90).
MAX_RESOLUTION, COMPRESS_PROBABILITY, JPEG_QUALITY, WRITE_MODE = 500, 0.5, 90, "proportion"


def fingerprint(dataset: FolderDataset) -> str:
    """sha256 of the class names, file lists and labels of both splits: .beton files serve only this dataset."""
    digest = hashlib.sha256(repr(dataset.classes).encode())
    for array in (dataset.train_files, dataset.y_train, dataset.test_files, dataset.y_test):
        digest.update(repr(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


class _FolderSamples:
    """An indexed dataset for ffcv's writer: (decoded RGB image, label, sample index)."""

    def __init__(self, dataset: FolderDataset, split: str) -> None:
        self.dataset, self.split = dataset, split
        self.labels = dataset.y_train if split == "train" else dataset.y_test

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Image.Image, int, int]:
        return decode(self.dataset.path(self.split, index)), int(self.labels[index]), index


def prepare_folder(
    dataset: FolderDataset,
    out: Path,
    *,
    max_resolution: int = MAX_RESOLUTION,
    compress_probability: float = COMPRESS_PROBABILITY,
    jpeg_quality: int = JPEG_QUALITY,
    write_mode: str = WRITE_MODE,
    num_workers: int | None = None,
) -> Path:
    """Write ``out/train.beton``, ``out/test.beton`` (from val/) and ``out/meta.json`` (last: its presence means done)."""
    if write_mode not in WRITE_MODES:
        raise KdbenchError(
            f"unknown write mode {write_mode!r}; choose one of {', '.join(WRITE_MODES)}."
        )
    ffcv = import_ffcv()
    settings = {
        "write_mode": write_mode,
        "max_resolution": max_resolution,
        "compress_probability": compress_probability,
        "jpeg_quality": jpeg_quality,
    }
    meta = {
        "dataset": dataset.name,
        "fingerprint": fingerprint(dataset),
        "train": len(dataset.y_train),
        "test": len(dataset.y_test),
        **settings,
    }
    samples = {split: _FolderSamples(dataset, split) for split in ("train", "test")}
    return write_betons(
        ffcv, out, lambda: ffcv.RGBImageField(**settings), samples, meta, num_workers
    )


def check_betons(dataset: FolderDataset, directory: Path) -> None:
    """Raise ``FfcvUnavailable`` unless ``directory`` holds finished .beton files of exactly ``dataset``."""
    check_meta(directory, dataset.name, fingerprint(dataset), len(dataset.y_train))


class FfcvFolderBatches:
    """One pass of an ffcv ``Loader`` in a given order, normalised on ``device``."""

    def __init__(
        self, loader: Any, order: np.ndarray, length: int, table: torch.Tensor, device: torch.device
    ) -> None:
        self.loader, self.order, self.length, self.table, self.device = (
            loader,
            order,
            length,
            table,
            device,
        )

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Batch]:
        threads = torch.get_num_threads()
        self.loader.traversal_order.order = self.order
        channels = torch.arange(3, device=self.device).view(1, 3, 1, 1)
        try:
            for images, labels, index in self.loader:
                if torch.get_num_threads() != threads:
                    torch.set_num_threads(threads)
                # ffcv recycles its batch buffers: the lookup makes a new tensor, the rest is copied.
                pixels = (
                    images.to(self.device, non_blocking=non_blocking_from(images, self.device))
                    .permute(0, 3, 1, 2)
                    .long()
                )
                yield (
                    self.table[channels, pixels],
                    labels.view(-1).to(
                        self.device, copy=True, non_blocking=non_blocking_from(labels, self.device)
                    ),
                    index.view(-1).to(
                        self.device, copy=True, non_blocking=non_blocking_from(index, self.device)
                    ),
                )
        finally:
            torch.set_num_threads(threads)


class FfcvFolderLoaders(FfcvReader):
    """Train and test batches decoded by ffcv from the .beton files of ``prepare_folder`` (the ``ffcv`` kind)."""

    kind = "ffcv"

    def __init__(
        self, dataset: FolderDataset, device: torch.device, directory: Path, num_workers: int = 0
    ) -> None:
        """Raises ``FfcvUnavailable`` when the files are missing or hold other data, or ffcv does not import."""
        check_betons(dataset, directory)
        super().__init__(directory, device, dataset.mean, dataset.std, num_workers)
        from ffcv.fields.rgb_image import (  # ffcv imports: only once import_ffcv found it
            CenterCropRGBImageDecoder,
            RandomResizedCropRGBImageDecoder,
        )
        from ffcv.transforms import RandomHorizontalFlip

        self.decoders = SimpleNamespace(
            random=RandomResizedCropRGBImageDecoder,
            centre=CenterCropRGBImageDecoder,
            flip=RandomHorizontalFlip,
        )
        self.dataset = dataset

    def _view_loader(self, split: str, batch_size: int, augment: bool) -> Any:
        """One ffcv ``Loader`` per (split, per-rank batch size, augment): the train view (random resized crop
        + flip) or the test view (centre crop)."""
        crop = self.dataset.crop
        size = (crop.image_size, crop.image_size)

        def image() -> list[Any]:
            if augment:
                return [
                    self.decoders.random(size, scale=crop.scale, ratio=crop.ratio),
                    self.decoders.flip(),
                ]
            return [self.decoders.centre(size, ratio=crop.image_size / crop.resize_size)]

        return self._loader((split, batch_size, augment), False, image)

    def _batches(
        self,
        split: str,
        order: np.ndarray,
        batch_size: int,
        augment: bool,
        drop_last: bool,
        shard: tuple[int, int],
    ) -> FfcvFolderBatches:
        # This rank's slices of the global batches, concatenated (data/shard.py): chunks of batch_size / world.
        rank_order = local_order(
            torch.as_tensor(order), batch_size, shard, drop_last=drop_last, train=split == "train"
        ).numpy()
        local = batch_size // shard[1]
        length = -(-len(rank_order) // local)
        return FfcvFolderBatches(
            self._view_loader(split, local, augment),
            rank_order.astype(np.int64),
            length,
            self.table,
            self.device,
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
        shard: tuple[int, int] = (0, 1),
    ) -> FfcvFolderBatches:
        """The reference loader's order and batches; crops and flips from ffcv's RNG (same distribution)."""
        if strong:
            raise strong_view_unsupported(self.dataset)
        order = epoch_plan(len(self.dataset.y_train), seed, epoch).order.numpy()
        return self._batches("train", order, batch_size, augment, drop_last, shard)

    def test(self, batch_size: int, *, shard: tuple[int, int] = (0, 1)) -> FfcvFolderBatches:
        """Test batches in file order, centre crop of ratio image_size / resize_size (224/256)."""
        return self._batches(
            "test", np.arange(len(self.dataset.y_test)), batch_size, False, False, shard
        )
