"""Choosing a loader kind. For in-memory (CIFAR-style) datasets every kind replays the same ``EpochPlan``, so the
kind never changes a result: it is a run option (like the device), not part of the RunSpec. Image-folder datasets
(ImageNet) have the ``torch`` reference and ``ffcv``, which draws crops from the same distribution with its own RNG
(``data/loaders/ffcv_folder.py``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import torch

from kdbench.data.arrays import ImageArrays
from kdbench.data.folder import FolderDataset
from kdbench.data.loaders.tensor_arrays import TRAIN_PADDING, TensorLoaders
from kdbench.data.loaders.torch_arrays import Batch, TorchLoaders
from kdbench.data.loaders.torch_folder import FolderLoaders
from kdbench.data.shard import WHOLE, Shard
from kdbench.errors import KdbenchError

LOADER_KINDS: tuple[str, ...] = ("auto", "torch", "tensor", "ffcv")
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


def make_loaders(
    kind: str,
    arrays: ImageArrays | FolderDataset,
    *,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    data_dir: str | Path | None = None,
) -> Loaders:
    """Loaders of ``kind`` (one of ``LOADER_KINDS``) for ``arrays``; ``ffcv`` reads the .beton files that
    ``kdbench data prepare`` wrote under ``data_dir`` and falls back to ``tensor``, with a warning, when
    ffcv is not installed or the files do not hold exactly these arrays."""
    if kind not in LOADER_KINDS:
        raise KdbenchError(f"unknown loader {kind!r}; choose one of {', '.join(LOADER_KINDS)}.")
    device = torch.device(device)
    if isinstance(arrays, FolderDataset):
        return _folder_loaders(kind, arrays, device, num_workers, data_dir)
    if kind == "auto":
        kind = "tensor" if _fits_on(device, arrays) else "torch"
    if kind == "ffcv":
        from kdbench.data.loaders import ffcv_arrays

        try:
            return ffcv_arrays.FfcvLoaders(
                arrays, device, ffcv_arrays.beton_dir(arrays.name, data_dir), num_workers
            )
        except ffcv_arrays.FfcvUnavailable as exc:
            log.warning("loader ffcv unavailable, using tensor (same results): %s", exc)
            kind = "tensor"
    if kind == "tensor":
        return TensorLoaders(arrays, device, num_workers)
    return TorchLoaders(arrays, num_workers, pin_memory=device.type == "cuda")


def _folder_loaders(
    kind: str,
    dataset: FolderDataset,
    device: torch.device,
    num_workers: int,
    data_dir: str | Path | None,
) -> Loaders:
    """``ffcv`` (and ``auto``, when .beton files of exactly this dataset exist and ffcv imports), else ``torch``.

    ``tensor`` holds a whole in-memory dataset on the device, so it does not apply: it falls back to ``torch``
    with a warning, as ``ffcv`` falls back when it cannot serve a run."""
    if kind == "tensor":
        log.warning(
            "loader tensor keeps a whole in-memory dataset on the device; %s is read from image files, "
            "so it uses torch",
            dataset.name,
        )
        kind = "torch"
    if kind in ("auto", "ffcv"):
        from kdbench.data.loaders import ffcv_arrays, ffcv_folder

        try:
            return ffcv_folder.FfcvFolderLoaders(
                dataset, device, ffcv_arrays.beton_dir(dataset.name, data_dir), num_workers
            )
        except ffcv_arrays.FfcvUnavailable as exc:
            report = log.info if kind == "auto" else log.warning
            report(
                "loader %s: ffcv cannot serve %s, using torch (PIL decoding): %s",
                kind,
                dataset.name,
                exc,
            )
    return FolderLoaders(dataset, num_workers, pin_memory=device.type == "cuda")


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
