"""Cost before you launch: model FLOPs × images × epochs for every run of a plan.

Forward FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one image;
training is taken as 3 × forward (its backward count is wrong for grouped convolutions in
torch 2.13, see specs/performance.md §2). The floor assumes 100 % of an H100's dense bf16 peak:
a lower bound, not a prediction — measured throughput replaces it once benchmarks exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from kdbench import data, models
from kdbench.data.imagenet import folder_geometry, folder_sizes
from kdbench.plan import DataSpec, Plan

H100_BF16_PEAK_FLOPS = 989e12
KNOWN_SIZES = {"cifar100": (50_000, 10_000), "cifar10": (50_000, 10_000)}


@lru_cache(maxsize=None)
def forward_flops(model: str, num_classes: int = 100, image_size: int = 32) -> float:
    """Forward FLOPs (2·MAC) of one image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    net = models.create(model, num_classes=num_classes).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.zeros(1, 3, image_size, image_size))
    return float(counter.get_total_flops())


def dataset_sizes(spec: DataSpec, data_dir: str | Path | None = None) -> tuple[int, int] | None:
    """(train, test) image counts after the spec's subset fractions; None when unknown."""
    if spec.name == "synthetic":
        sizes = (spec.options.get("train_size", 512), spec.options.get("test_size", 256))
    elif folder_sizes(spec.name, spec.options) is not None:
        sizes = folder_sizes(spec.name, spec.options)
    elif spec.name in KNOWN_SIZES:
        sizes = KNOWN_SIZES[spec.name]
    elif spec.name == "npz":
        path = Path(spec.options["path"])
        path = path if path.is_absolute() else data.resolve_data_dir(data_dir) / path
        if not path.is_file():
            return None
        with np.load(path, mmap_mode="r") as arrays:
            sizes = (len(arrays["y_train"]), len(arrays["y_test"]))
    else:
        return None
    return round(sizes[0] * spec.train_fraction), round(sizes[1] * spec.test_fraction)


@dataclass(frozen=True)
class CostEstimate:
    runs: int
    train_flops: float
    unknown_runs: int

    @property
    def h100_floor_hours(self) -> float:
        return self.train_flops / H100_BF16_PEAK_FLOPS / 3600


def estimate(plan: Plan, run_ids: list[str] | None = None, data_dir: str | Path | None = None) -> CostEstimate:
    """FLOPs to train (and evaluate every epoch) the given runs of ``plan`` (default: all)."""
    total, unknown = 0.0, 0
    ids = run_ids if run_ids is not None else list(plan.specs)
    for run_id in ids:
        spec = plan.specs[run_id]
        sizes = dataset_sizes(spec.data, data_dir)
        if sizes is None:
            unknown += 1
            continue
        classes, size = folder_geometry(spec.data.name, spec.data.options) or (
            spec.data.options.get("num_classes", 100), spec.data.options.get("image_size", 32))
        student = forward_flops(spec.model, classes, size)
        teacher = forward_flops(spec.teacher.model, classes, size) if spec.teacher else 0.0
        train, test = sizes
        total += spec.train.epochs * (train * (3 * student + teacher) + test * student)
    return CostEstimate(runs=len(ids), train_flops=total, unknown_runs=unknown)
