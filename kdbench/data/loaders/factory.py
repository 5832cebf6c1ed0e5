"""Choosing a loader kind. For in-memory (CIFAR-style) datasets every kind replays the same ``EpochPlan``, so the
kind never changes a result: it is a run option (like the device), not part of the RunSpec. Image-folder datasets
(ImageNet) have the ``torch`` reference and ``ffcv``, which draws crops from the same distribution with its own RNG
(``data/loaders/ffcv_folder.py``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import torch

from kdbench.data.arrays import ImageArrays
from kdbench.data.folder import FolderDataset
from kdbench.data.loaders.ffcv_arrays import FfcvLoaders
from kdbench.data.loaders.ffcv_files import FfcvUnavailable, beton_dir
from kdbench.data.loaders.ffcv_folder import FfcvFolderLoaders
from kdbench.data.loaders.tensor_arrays import TRAIN_PADDING, TensorLoaders
from kdbench.data.loaders.torch_arrays import Batch, TorchLoaders
from kdbench.data.loaders.torch_folder import FolderLoaders
from kdbench.data.shard import WHOLE, Shard
from kdbench.registry import Registry

# auto keeps the resident dataset to this share of the GPU's free memory.
MAX_RESIDENT_FRACTION = 0.25

log = logging.getLogger("kdbench.data")


class Loaders(Protocol):
    """Train and test batches for one run: ``(images, labels, indices[, strong views])``."""

    kind: str

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
    ) -> Iterable[Batch]: ...

    def test(self, batch_size: int, *, shard: Shard = WHOLE) -> Iterable[Batch]:
        """``shard=(rank, world)``: only that rank's slice of every global batch (``data/shard.py``)."""


# A loader kind: (dataset, device, num_workers, data_dir) -> the loaders of that kind for the dataset (or of
# the kind it falls back to, with a warning, when it cannot serve it).
LoaderKind = Callable[
    [ImageArrays | FolderDataset, torch.device, int, "str | Path | None"], Loaders
]
LOADERS: Registry[LoaderKind] = Registry("loader")


def make_loaders(
    kind: str,
    arrays: ImageArrays | FolderDataset,
    *,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    data_dir: str | Path | None = None,
) -> Loaders:
    """Loaders of ``kind`` (one of ``LOADERS``) for ``arrays``; ``ffcv`` reads the .beton files that
    ``kdbench data prepare`` wrote under ``data_dir`` and falls back to ``tensor``, with a warning, when
    ffcv is not installed or the files do not hold exactly these arrays."""
    return LOADERS.get(kind)(arrays, torch.device(device), num_workers, data_dir)


@LOADERS.register("torch")
def torch_loaders(
    dataset: ImageArrays | FolderDataset,
    device: torch.device,
    num_workers: int,
    data_dir: str | Path | None,
) -> Loaders:
    """The reference ``torch.utils.data`` loaders (page-locked batches for a CUDA run)."""
    if isinstance(dataset, FolderDataset):
        return FolderLoaders(dataset, num_workers, pin_memory=device.type == "cuda")
    return TorchLoaders(dataset, num_workers, pin_memory=device.type == "cuda")


@LOADERS.register("tensor")
def tensor_loaders(
    dataset: ImageArrays | FolderDataset,
    device: torch.device,
    num_workers: int,
    data_dir: str | Path | None,
) -> Loaders:
    """The whole in-memory dataset on the device, batched crop and flip; image folders use ``torch``.

    ``tensor`` holds a whole in-memory dataset on the device, so it does not apply to image files: it falls back
    to ``torch`` with a warning, as ``ffcv`` falls back when it cannot serve a run."""
    if isinstance(dataset, FolderDataset):
        log.warning(
            "loader tensor keeps a whole in-memory dataset on the device; %s is read from image files, "
            "so it uses torch",
            dataset.name,
        )
        return torch_loaders(dataset, device, num_workers, data_dir)
    return TensorLoaders(dataset, device, num_workers)


@LOADERS.register("ffcv")
def ffcv_loaders(
    dataset: ImageArrays | FolderDataset,
    device: torch.device,
    num_workers: int,
    data_dir: str | Path | None,
) -> Loaders:
    """The .beton files of ``kdbench data prepare``; without them (or ffcv) ``tensor`` for in-memory datasets,
    ``torch`` for image folders, with a warning."""
    if isinstance(dataset, FolderDataset):
        return _folder_ffcv("ffcv", dataset, device, num_workers, data_dir)
    try:
        return FfcvLoaders(dataset, device, beton_dir(dataset.name, data_dir), num_workers)
    except FfcvUnavailable as exc:
        log.warning("loader ffcv unavailable, using tensor (same results): %s", exc)
    return tensor_loaders(dataset, device, num_workers, data_dir)


@LOADERS.register("auto")
def auto_loaders(
    dataset: ImageArrays | FolderDataset,
    device: torch.device,
    num_workers: int,
    data_dir: str | Path | None,
) -> Loaders:
    """In-memory datasets: ``tensor`` when the dataset fits on the device, else ``torch``. Image folders: ``ffcv``
    when .beton files of exactly this dataset exist and ffcv imports, else ``torch``."""
    if isinstance(dataset, FolderDataset):
        return _folder_ffcv("auto", dataset, device, num_workers, data_dir)
    if _fits_on(device, dataset):
        return tensor_loaders(dataset, device, num_workers, data_dir)
    return torch_loaders(dataset, device, num_workers, data_dir)


def _folder_ffcv(
    kind: str,
    dataset: FolderDataset,
    device: torch.device,
    num_workers: int,
    data_dir: str | Path | None,
) -> Loaders:
    """ffcv for an image folder, else ``torch`` (said at info level for ``auto``, as a warning for ``ffcv``)."""
    try:
        return FfcvFolderLoaders(dataset, device, beton_dir(dataset.name, data_dir), num_workers)
    except FfcvUnavailable as exc:
        report = log.info if kind == "auto" else log.warning
        report(
            "loader %s: ffcv cannot serve %s, using torch (PIL decoding): %s",
            kind,
            dataset.name,
            exc,
        )
    return torch_loaders(dataset, device, num_workers, data_dir)


def _fits_on(device: torch.device, arrays: ImageArrays) -> bool:
    """Whether the padded uint8 splits take at most ``MAX_RESIDENT_FRACTION`` of the device's free memory."""
    if device.type != "cuda":
        return True
    height, width = arrays.x_train.shape[1:3]
    border = 2 * TRAIN_PADDING
    padded = len(arrays.x_train) * 3 * (height + border) * (width + border) + arrays.x_test.nbytes
    free, _ = torch.cuda.mem_get_info(device)
    if padded > MAX_RESIDENT_FRACTION * free:
        log.info(
            "loader auto: dataset (%.1f GB) too large for the GPU's free memory; using torch",
            padded / 1e9,
        )
        return False
    return True
