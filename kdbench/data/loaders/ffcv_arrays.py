"""FFCV as a fast reader of our datasets, still replaying our ``EpochPlan``.

``kdbench data prepare`` writes ``train.beton`` / ``test.beton`` (raw RGB image, label, sample index) and a
``meta.json`` with a fingerprint of the arrays. A run reads the files with an FFCV ``Loader`` whose traversal
order is the epoch plan's order; crop, flip and normalisation then follow the plan with the same batched
tensor ops as the tensor loader, so every batch equals the reference loader's.

Side effects of ffcv handled here (docs/references.md §Dependencies' side effects): ``import ffcv`` and every ``Loader``/epoch set
torch's thread count to the loader's worker count; the count is restored after each.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from kdbench.data.arrays import ImageArrays
from kdbench.data.augment.epoch_plan import EpochPlan, epoch_plan
from kdbench.data.loaders.tensor_arrays import (
    TRAIN_PADDING,
    crop_flip_normalise,
    normalisation_table,
    pad_images,
)
from kdbench.data.loaders.torch_arrays import Batch, identity_plan, strong_loader
from kdbench.data.registry import load_dataset, resolve_data_dir
from kdbench.data.shard import WHOLE, Shard, shard_plan
from kdbench.errors import KdbenchError, UnknownNameError

INSTALL_HINT = (
    "install it with `apt-get install -y --no-install-recommends libopencv-dev libturbojpeg0-dev` "
    "then `pip install 'kdbench[ffcv]'`"
)
META_FILE = "meta.json"
PREPARABLE: tuple[str, ...] = ("cifar100", "cifar10", "imagenet", "imagenet_synthetic")


class FfcvUnavailable(KdbenchError):
    """ffcv cannot serve this run: not installed, or no .beton files holding exactly its arrays."""


def import_ffcv() -> SimpleNamespace:
    """The ffcv names kdbench uses; torch's thread count is left as it was before the import."""
    threads = torch.get_num_threads()
    try:
        from ffcv.fields import IntField, RGBImageField
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import SimpleRGBImageDecoder
        from ffcv.loader import Loader
        from ffcv.transforms import ToTensor
        from ffcv.traversal_order.base import TraversalOrder
        from ffcv.writer import DatasetWriter
    except ImportError as exc:
        raise FfcvUnavailable(f"ffcv is not importable ({exc}); {INSTALL_HINT}.") from exc
    finally:
        torch.set_num_threads(threads)
    return SimpleNamespace(
        IntField=IntField,
        RGBImageField=RGBImageField,
        IntDecoder=IntDecoder,
        Loader=Loader,
        SimpleRGBImageDecoder=SimpleRGBImageDecoder,
        ToTensor=ToTensor,
        TraversalOrder=TraversalOrder,
        DatasetWriter=DatasetWriter,
    )


def beton_dir(name: str, data_dir: str | Path | None = None) -> Path:
    """Where ``kdbench data prepare NAME`` writes by default: ``<data dir>/ffcv/<name>``."""
    return resolve_data_dir(data_dir) / "ffcv" / name


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
    """Write ``out/train.beton``, ``out/test.beton`` and ``out/meta.json`` (last: its presence means done)."""
    ffcv = import_ffcv()
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)
    threads = torch.get_num_threads()
    for split, images, labels in (
        ("train", arrays.x_train, arrays.y_train),
        ("test", arrays.x_test, arrays.y_test),
    ):
        fields = {
            "image": ffcv.RGBImageField(write_mode="raw"),
            "label": ffcv.IntField(),
            "index": ffcv.IntField(),
        }
        partial = out / f"{split}.beton.partial"
        writer = ffcv.DatasetWriter(
            str(partial), fields, num_workers=num_workers or os.cpu_count() or 1
        )
        writer.from_indexed_dataset(_Samples(images, labels))
        partial.replace(out / f"{split}.beton")
    torch.set_num_threads(threads)
    meta = {
        "dataset": arrays.name,
        "fingerprint": fingerprint(arrays),
        "train": len(arrays.x_train),
        "test": len(arrays.x_test),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def prepare_dataset(
    name: str, data_dir: str | Path | None = None, out: Path | None = None, **image_options: Any
) -> Path:
    """``kdbench data prepare NAME``: the .beton files of dataset ``name``, by default in ``beton_dir(name)``.

    ``image_options`` (``max_resolution``, ``compress_probability``, ``jpeg_quality``, ``write_mode``) apply to
    image-folder datasets (``ffcv_folder.prepare_folder``); CIFAR images are stored raw."""
    if name not in PREPARABLE:
        raise UnknownNameError("dataset", name, PREPARABLE)
    import_ffcv()  # fail before reading the dataset
    from kdbench.data.folder import FolderDataset
    from kdbench.data.loaders.ffcv_folder import prepare_folder

    dataset = load_dataset(name, data_dir)
    folder = out if out is not None else beton_dir(name, data_dir)
    if isinstance(dataset, FolderDataset):
        return prepare_folder(dataset, folder, **image_options)
    if image_options:
        raise KdbenchError(
            f"{', '.join(sorted(image_options))}: options of image-folder datasets (imagenet); "
            f"{name} images are stored raw at their size."
        )
    return prepare(dataset, folder)


def _plan_order_class(traversal_order: type) -> type:
    class PlanOrder(traversal_order):  # type: ignore[misc, valid-type]
        """Visits the samples in ``self.order`` (set to the epoch plan's order before each epoch).

        ffcv 1.0.2 takes a custom order as an instance and calls it with the loader: ``order(loader)``.
        """

        def __init__(self) -> None:
            self.order: np.ndarray | None = None

        def __call__(self, loader: Any) -> PlanOrder:
            super().__init__(loader)
            self.order = np.asarray(self.indices, dtype=np.int64)
            return self

        def sample_order(self, epoch: int) -> np.ndarray:
            return self.order

    return PlanOrder


def loader_workers(num_workers: int) -> int:
    """ffcv's decoding threads: ``num_workers`` when given, else this process's torch thread count, which is its
    share of the cores when it is one of several (the executor's slots and ``--nproc`` ranks set OMP_NUM_THREADS);
    one thread per core in each of 8 packed runs or DDP ranks would oversubscribe the host 8 times."""
    return num_workers or torch.get_num_threads()


def non_blocking_from(buffer: torch.Tensor, device: torch.device) -> bool:
    """Whether a copy of ffcv's batch ``buffer`` (recycled for a later batch) to ``device`` may be ``non_blocking``:
    to a GPU from pageable memory, yes. CUDA stages a pageable source before ``cudaMemcpyAsync`` returns, so ffcv
    may reuse the buffer at once, and the host skips the stream synchronisation of a blocking copy, which waits
    for all the GPU's queued work. A page-locked source is read later by the DMA, so it is copied blocking."""
    return device.type == "cuda" and not buffer.is_pinned()


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


def check_meta(directory: Path, name: str, expected_fingerprint: str, train_images: int) -> None:
    """Raise ``FfcvUnavailable`` unless ``directory`` holds finished .beton files (``meta.json`` is written last)
    of exactly the data with ``expected_fingerprint``."""
    meta_file = directory / META_FILE
    if not meta_file.is_file():
        raise FfcvUnavailable(
            f"no .beton files in {directory}; write them with `kdbench data prepare {name}`."
        )
    meta = json.loads(meta_file.read_text())
    if meta.get("fingerprint") != expected_fingerprint:
        raise FfcvUnavailable(
            f"the .beton files in {directory} hold {meta.get('dataset')} ({meta.get('train')} train images), not this "
            f"run's {name} data ({train_images} train images: a subset, another dataset, or files changed since)."
        )


def open_loader(
    ffcv: Any,
    path: Path,
    batch_size: int,
    workers: int,
    pipelines: dict[str, list[Any]],
    drop_last: bool,
) -> Any:
    """An ffcv ``Loader`` of ``path`` that visits samples in the order each pass sets (the epoch plan's).
    Building one changes torch's thread count; it is put back."""
    threads = torch.get_num_threads()
    loader = ffcv.Loader(
        str(path),
        batch_size=batch_size,
        num_workers=workers,
        order=_plan_order_class(ffcv.TraversalOrder)(),
        drop_last=drop_last,
        pipelines=pipelines,
    )
    torch.set_num_threads(threads)
    return loader


class FfcvLoaders:
    """Train and test batches read by ffcv from the .beton files in ``directory`` (see ``prepare``)."""

    kind = "ffcv"

    def __init__(
        self, arrays: ImageArrays, device: torch.device, directory: Path, num_workers: int = 0
    ) -> None:
        """Raises ``FfcvUnavailable`` when ffcv is missing or the files do not hold exactly ``arrays``."""
        self.ffcv = import_ffcv()
        check_meta(directory, arrays.name, fingerprint(arrays), len(arrays.x_train))
        self.arrays, self.device, self.directory, self.num_workers = (
            arrays,
            device,
            directory,
            num_workers,
        )
        self.ffcv_workers = loader_workers(num_workers)
        self.table = normalisation_table(arrays.mean, arrays.std).to(device)
        self._loaders: dict[tuple[str, int, bool], Any] = {}

    def _loader(self, split: str, batch_size: int, drop_last: bool) -> Any:
        """One ffcv ``Loader`` per (split, batch size, drop_last), kept: each new one costs seconds of JIT."""
        key = (split, batch_size, drop_last)
        if key not in self._loaders:
            f = self.ffcv
            pipelines = {
                "image": [f.SimpleRGBImageDecoder(), f.ToTensor()],
                "label": [f.IntDecoder(), f.ToTensor()],
                "index": [f.IntDecoder(), f.ToTensor()],
            }
            self._loaders[key] = open_loader(
                f,
                self.directory / f"{split}.beton",
                batch_size,
                self.ffcv_workers,
                pipelines,
                drop_last,
            )
        return self._loaders[key]

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
        return FfcvBatches(self, self._loader("train", batch_size, drop_last), plan, views)

    def test(self, batch_size: int, *, shard: Shard = WHOLE) -> FfcvBatches:
        """Same batches as ``loaders.test_loader``, already on the device."""
        plan, batch_size, _ = shard_plan(
            identity_plan(len(self.arrays.x_test)), batch_size, shard, False, train=False
        )
        return FfcvBatches(self, self._loader("test", batch_size, False), plan, None)
