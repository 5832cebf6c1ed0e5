"""Teacher logits of every augmented view of a training set: computed once per teacher, then looked up.

The CIFAR augmentation (zero-pad by ``p``, crop back at column dx / row dy in [0, 2p], maybe mirror)
has (2p+1)²·2 distinct views per image: 162 at p = 4. For a method that reads only the teacher's
logits and no random strong view (``Needs.cacheable_teacher``), the frozen eval-mode teacher's
output for a batch is therefore a lookup of (index, dy, dx, flip) — exact, and cheaper than the
forward pass from the first epoch on (162 views < the 240 epochs of a run).

The cache is one fp32 ``.npy`` array ``(N, 2p+1, 2p+1, 2, C)`` indexed ``[image, dy, dx, flip]`` under
``<results>/teacher_cache/``, named by a hash of the teacher run id, the dataset fingerprint (name,
options, train fraction, N) and the padding. It is written atomically under a file lock (two runs
never build it twice) and memory-mapped by readers: it stays in host memory, shared by every run that reads it, and
each epoch moves only the (N, C) logits of its own views to the device (:class:`TeacherCache`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from kdbench.data.arrays import ImageArrays
from kdbench.data.augment.epoch_plan import EpochPlan
from kdbench.errors import KdbenchError
from kdbench.io import atomic_path, atomic_write_json, file_lock
from kdbench.models.base import KDModel

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CacheKey:
    """What the cached logits depend on: the teacher's weights, the training images, the padding."""

    teacher: str  # the teacher run id (or another name of fixed teacher weights)
    dataset: dict[str, Any]  # name, options, train_fraction, n
    padding: int

    def digest(self) -> str:
        canonical = json.dumps(
            {"version": FORMAT_VERSION, **asdict(self)}, sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def views_per_image(padding: int) -> int:
    """Distinct augmented views of one image: (2p+1)² crop offsets × 2 flips."""
    return (2 * padding + 1) ** 2 * 2


def cache_file(results: Path, key: CacheKey) -> Path:
    return Path(results) / "teacher_cache" / f"{key.digest()}.npy"


def render_views(
    images: np.ndarray, dy: int, padding: int, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """All views of uint8 (B,H,W,3) ``images`` cropped at row ``dy``: (2p+1)·2·B normalised float32 images,
    ordered (dx, flip, image) — pixel for pixel what ``crop_and_flip`` + ``to_normalized_tensor`` give."""
    height, width = images.shape[1:3]
    padded = torch.from_numpy(
        np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    )
    rows = (
        padded[:, dy : dy + height]
        .permute(0, 3, 1, 2)
        .to(torch.float32)
        .div_(255.0)
        .sub_(mean)
        .div_(std)
    )
    views = []
    for dx in range(2 * padding + 1):
        crop = rows[..., dx : dx + width]
        views += [crop, crop.flip(-1)]
    return torch.cat(views)


@torch.no_grad()
def build(
    teacher: KDModel,
    arrays: ImageArrays,
    path: Path,
    *,
    padding: int,
    device: torch.device,
    images_per_batch: int = 32,
    show_progress: bool = False,
) -> float:
    """Write the teacher's fp32 logits of every view of ``arrays``' training images to ``path`` (atomically);
    returns the seconds it took. The teacher runs in eval mode, in fp32, without autocast."""
    n, side = len(arrays.x_train), 2 * padding + 1
    mean = torch.tensor(arrays.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(arrays.std, dtype=torch.float32).view(-1, 1, 1)
    mode = teacher.training
    teacher.eval()
    started = time.time()
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not show_progress,
    )
    try:
        with atomic_path(path) as tmp, bar:
            out = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.float32, shape=(n, side, side, 2, arrays.num_classes)
            )
            task = bar.add_task(f"teacher cache: {side * side * 2} views × {n} images", total=n)
            for start in range(0, n, images_per_batch):
                chunk = arrays.x_train[start : start + images_per_batch]
                for dy in range(side):
                    logits = (
                        teacher(render_views(chunk, dy, padding, mean, std).to(device))
                        .float()
                        .cpu()
                    )
                    out[start : start + len(chunk), dy] = (
                        logits.view(side, 2, len(chunk), -1).permute(2, 0, 1, 3).numpy()
                    )
                bar.advance(task, len(chunk))
            out.flush()
            del out
    finally:
        teacher.train(mode)
    seconds = time.time() - started
    log.info(
        "teacher cache %s: %d images × %d views in %.1f s (%.0f views/s)",
        path.name,
        n,
        side * side * 2,
        seconds,
        n * side * side * 2 / max(seconds, 1e-9),
    )
    return seconds


class TeacherCache:
    """A built cache, memory-mapped on the host and looked up per batch on the run's device.

    The table stays in host memory: the file's pages in the page cache, one copy however many packed runs
    read it (held on each run's GPU it took 3.2 GB per process for CIFAR-100). Each epoch gathers the rows its
    plan picks, one view per training image, into an (N, C) table (20 MB for CIFAR-100) copied to the device
    once; a batch's lookup is then a gather on the device, with no host round trip per step."""

    def __init__(self, path: Path, n: int, padding: int, num_classes: int, device: torch.device):
        table = np.load(
            path, mmap_mode="c"
        )  # copy-on-write: a writable view for torch, the file never changes
        side = 2 * padding + 1
        if table.shape != (n, side, side, 2, num_classes) or table.dtype != np.float32:
            raise KdbenchError(
                f"teacher cache {path} has shape {table.shape} ({table.dtype}), expected "
                f"{(n, side, side, 2, num_classes)} float32: delete it and re-run to rebuild it."
            )
        self.table = torch.from_numpy(table)
        self.padding, self.device = padding, device

    def epoch_logits(self, plan: EpochPlan) -> torch.Tensor:
        """(N, C): the logits of the view ``plan`` gives each training image, on the run's device."""
        if plan.padding != self.padding:
            raise KdbenchError(
                f"the epoch plan pads by {plan.padding} but the teacher cache was built for padding "
                f"{self.padding}; run with --teacher-cache off."
            )
        samples = torch.arange(len(self.table))
        rows = self.table[samples, plan.offsets[:, 1], plan.offsets[:, 0], plan.flips.long()]
        if self.device.type == "cuda":  # page-locked, so the copy is asynchronous
            return rows.pin_memory().to(self.device, non_blocking=True)
        return rows.to(self.device)

    def for_epoch(self, plan: EpochPlan) -> Callable[[torch.Tensor], torch.Tensor]:
        """``lookup(indices) -> logits`` of the views ``plan`` gives those samples, on the run's device."""
        logits = self.epoch_logits(plan)

        def lookup(indices: torch.Tensor) -> torch.Tensor:
            return logits[indices.to(self.device, non_blocking=True)]

        return lookup


def ensure(
    teacher: KDModel,
    arrays: ImageArrays,
    key: CacheKey,
    results: Path,
    device: torch.device,
    *,
    show_progress: bool = False,
) -> tuple[TeacherCache, float]:
    """The cache for ``key``, built first if no run has built it yet; returns it and the build seconds (0 if reused)."""
    path = cache_file(results, key)
    seconds = 0.0
    if not path.is_file():
        with file_lock(path.with_suffix(".lock")):
            if not path.is_file():  # another process may have built it while we waited for the lock
                seconds = build(
                    teacher,
                    arrays,
                    path,
                    padding=key.padding,
                    device=device,
                    show_progress=show_progress,
                )
                atomic_write_json(
                    path.with_suffix(".json"),
                    {**asdict(key), "build_seconds": seconds, "format_version": FORMAT_VERSION},
                )
    if seconds == 0.0:
        log.info("teacher cache %s reused", path.name)
    return TeacherCache(path, len(arrays.x_train), key.padding, arrays.num_classes, device), seconds
