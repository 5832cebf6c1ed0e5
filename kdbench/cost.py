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
from kdbench.plan import DataSpec, Plan, RunSpec

H100_BF16_PEAK_FLOPS = 989e12
# ILSVRC-2012: 1 281 167 training and 50 000 validation images.
KNOWN_SIZES = {"cifar100": (50_000, 10_000), "cifar10": (50_000, 10_000), "imagenet": (1_281_167, 50_000)}
KNOWN_CLASSES = {"cifar10": 10, "imagenet": 1000}  # where a dataset spec does not say; otherwise 100


@lru_cache(maxsize=None)
def forward_flops(model: str, num_classes: int = 100, image_size: int | None = None) -> float:
    """Forward FLOPs (2·MAC) of one image of side ``image_size`` (default: the model's native input size,
    32 for CIFAR networks, 224 for ImageNet ones)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    side = image_size if image_size is not None else models.input_size(model)
    net = models.create(model, num_classes=num_classes).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.zeros(1, 3, side, side))
    return float(counter.get_total_flops())


def image_side(spec: RunSpec) -> int:
    """Side of the run's input images: the dataset's ``image_size`` option, else the student's native size."""
    return int(spec.data.options.get("image_size") or models.input_size(spec.model))


def dataset_sizes(spec: DataSpec, data_dir: str | Path | None = None) -> tuple[int, int] | None:
    """(train, test) image counts after the spec's subset fractions; None when unknown."""
    if spec.name == "synthetic":
        sizes = (spec.options.get("train_size", 512), spec.options.get("test_size", 256))
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
        classes = spec.data.options.get("num_classes", KNOWN_CLASSES.get(spec.data.name, 100))
        size = image_side(spec)
        student = forward_flops(spec.model, classes, size)
        teacher = forward_flops(spec.teacher.model, classes, size) if spec.teacher else 0.0
        train, test = sizes
        total += spec.train.epochs * (train * (3 * student + teacher) + test * student)
    return CostEstimate(runs=len(ids), train_flops=total, unknown_runs=unknown)
