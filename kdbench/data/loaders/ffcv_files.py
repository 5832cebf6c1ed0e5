"""What both ffcv loaders share: importing ffcv, the .beton files (written, checked, opened) and the loader cache.

``kdbench data prepare`` writes ``train.beton`` / ``test.beton`` (image, label, sample index) and, last, a
``meta.json`` with a fingerprint of the data; a run reads them with ffcv ``Loader``\\ s that visit the samples in
the epoch plan's order (``ffcv_arrays.py`` for in-memory datasets, ``ffcv_folder.py`` for image folders).

Side effects of ffcv handled here (docs/references.md §Dependencies' side effects): ``import ffcv`` and every
``Loader``/epoch set torch's thread count to the loader's worker count; the count is restored after each.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from kdbench.data.loaders.tensor_arrays import normalisation_table
from kdbench.data.registry import resolve_data_dir
from kdbench.errors import KdbenchError

INSTALL_HINT = (
    "install it with `apt-get install -y --no-install-recommends libopencv-dev libturbojpeg0-dev` "
    "then `pip install 'kdbench[ffcv]'`"
)
META_FILE = "meta.json"


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


def write_betons(
    ffcv: Any,
    out: Path,
    image_field: Callable[[], Any],
    samples: Mapping[str, Any],
    meta: dict[str, Any],
    num_workers: int | None = None,
) -> Path:
    """Write ``out/<split>.beton`` for each split of ``samples`` (indexed datasets of (image, label, index)),
    then ``out/meta.json`` holding ``meta`` (last: its presence means done)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)
    threads = torch.get_num_threads()
    for split, split_samples in samples.items():
        fields = {"image": image_field(), "label": ffcv.IntField(), "index": ffcv.IntField()}
        partial = out / f"{split}.beton.partial"
        writer = ffcv.DatasetWriter(
            str(partial), fields, num_workers=num_workers or os.cpu_count() or 1
        )
        writer.from_indexed_dataset(split_samples)
        partial.replace(out / f"{split}.beton")
    torch.set_num_threads(threads)
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


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


def _plan_order_class(traversal_order: type) -> type:
    class PlanOrder(traversal_order):
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
            assert self.order is not None  # set by __call__, which the loader calls first
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


class FfcvReader:
    """The .beton files in ``directory`` read on ``device``: ffcv's names, its decoding threads, the
    normalisation table, and one ffcv ``Loader`` per key, kept (each new one costs seconds of JIT)."""

    def __init__(
        self,
        directory: Path,
        device: torch.device,
        mean: Sequence[float],
        std: Sequence[float],
        num_workers: int = 0,
    ) -> None:
        """Raises ``FfcvUnavailable`` when ffcv does not import."""
        self.ffcv = import_ffcv()
        self.device, self.directory, self.num_workers = device, directory, num_workers
        self.ffcv_workers = loader_workers(num_workers)
        self.table = normalisation_table(mean, std).to(device)
        self._loaders: dict[tuple[str, int, bool], Any] = {}

    def _loader(
        self,
        key: tuple[str, int, bool],
        drop_last: bool,
        image: Callable[[], list[Any]],
    ) -> Any:
        """The kept ``Loader`` of ``key`` = (split, batch size, variant), else a new one decoding images with the
        pipeline ``image()`` (before ``ToTensor``)."""
        if key not in self._loaders:
            f = self.ffcv
            split, batch_size, _ = key
            pipelines = {
                "image": [*image(), f.ToTensor()],
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
