"""Cost before you launch: model FLOPs × images × epochs for every run of a plan.

Forward FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one image;
training is taken as 3 × forward (its backward count is wrong for grouped convolutions in
torch 2.13, see docs/references.md §Performance notes). The floor assumes 100 % of an H100's dense bf16 peak:
a lower bound, not a prediction. The estimate comes from measured throughput: finished runs under the
results directory and `kdbench bench` records (results/bench/), per device (:func:`estimate_by_device`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from kdbench import data, models
from kdbench.plan import DataSpec, Plan, RunSpec

H100_BF16_PEAK_FLOPS = 989e12
DEFAULT_CLASSES = (
    100  # where neither the dataset nor its spec says (an npz file without num_classes)
)


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
    """Side of the run's input images: the dataset's (``DatasetInfo.image_size``), else the student's native size."""
    info = data.dataset_info(spec.data.name)
    return int(info.image_size(info.options(spec.data.options)) or models.input_size(spec.model))


def dataset_sizes(spec: DataSpec, data_dir: str | Path | None = None) -> tuple[int, int] | None:
    """(train, test) image counts after the spec's subset fractions; None when unknown."""
    info = data.dataset_info(spec.name)
    sizes = info.sizes(info.options(spec.options), data.resolve_data_dir(data_dir))
    if sizes is None:
        return None
    return round(sizes[0] * spec.train_fraction), round(sizes[1] * spec.test_fraction)


def network_geometry(spec: RunSpec) -> tuple[int, int]:
    """(classes, input side) the run's networks are built for."""
    info = data.dataset_info(spec.data.name)
    classes = info.num_classes(info.options(spec.data.options))
    return (DEFAULT_CLASSES if classes is None else classes), image_side(spec)


@dataclass(frozen=True)
class CostEstimate:
    runs: int
    train_flops: float
    unknown_runs: int

    @property
    def h100_floor_hours(self) -> float:
        return self.train_flops / H100_BF16_PEAK_FLOPS / 3600


def estimate(
    plan: Plan, run_ids: list[str] | None = None, data_dir: str | Path | None = None
) -> CostEstimate:
    """FLOPs to train (and evaluate every epoch) the given runs of ``plan`` (default: all)."""
    total, unknown = 0.0, 0
    ids = run_ids if run_ids is not None else list(plan.specs)
    for run_id in ids:
        spec = plan.specs[run_id]
        sizes = dataset_sizes(spec.data, data_dir)
        if sizes is None:
            unknown += 1
            continue
        classes, size = network_geometry(spec)
        student = forward_flops(spec.model, classes, size)
        teacher = forward_flops(spec.teacher.model, classes, size) if spec.teacher else 0.0
        train, test = sizes
        total += spec.train.epochs * (train * (3 * student + teacher) + test * student)
    return CostEstimate(runs=len(ids), train_flops=total, unknown_runs=unknown)


# --------------------------------------------------------------------------- measured throughput

BENCH_DIR = "bench"  # results/bench/*.json: what `kdbench bench` measured


@dataclass(frozen=True)
class Throughput:
    """One measurement of training speed: a finished run's mean images/s, or a `kdbench bench` result."""

    device: str
    method: str
    student: str
    teacher: str | None
    images_per_s: float
    flops_per_image: (
        float  # training FLOPs per image the measurement did (3 × student + teacher forward)
    )
    source: str

    @property
    def flops_per_s(self) -> float:
        return self.images_per_s * self.flops_per_image


@dataclass(frozen=True)
class DeviceEstimate:
    """Remaining GPU-hours on one device kind, from the throughput measured on it."""

    device: str
    hours: float
    exact_runs: int  # runs priced by a measurement of the same method, student and teacher
    scaled_runs: int  # runs priced by the median achieved FLOP/s of the device's measurements
    median_flops_per_s: float
    measurements: int


def measured_throughputs(results: Path) -> list[Throughput]:
    """Every speed measurement under ``results``: finished runs (result.json) and `kdbench bench` records."""
    from kdbench.io import read_json
    from kdbench.store.run_dir import RunDir, runs_dir

    found: list[Throughput] = []
    root = runs_dir(results)
    for result_file in sorted(root.glob("*/result.json")) if root.is_dir() else []:
        result = RunDir(results, result_file.parent.name).recorded_result()
        spec_file = result_file.with_name("spec.json")
        if not result.train_images_per_s or result.imported is not None or not spec_file.is_file():
            continue
        spec = RunSpec.model_validate(read_json(spec_file))
        teacher = spec.teacher.model if spec.teacher else None
        classes, size = network_geometry(spec)
        per_image = 3 * forward_flops(spec.model, classes, size) + (
            forward_flops(teacher, classes, size) if teacher else 0.0
        )
        found.append(
            Throughput(
                result.device_name or result.device or "unknown",
                spec.method,
                spec.model,
                teacher,
                result.train_images_per_s,
                per_image,
                f"run {result_file.parent.name}",
            )
        )
    bench_dir = Path(results) / BENCH_DIR
    for record_file in sorted(bench_dir.glob("*.json")) if bench_dir.is_dir() else []:
        record = read_json(record_file)
        ours, config = record["paths"]["kdbench"], record["config"]
        found.append(
            Throughput(
                record["device"],
                config["method"],
                models.canonical_name(config["student"]),
                models.canonical_name(config["teacher"]),
                float(ours["best"]),
                float(ours["flops_per_image"]),
                f"bench {record_file.name}",
            )
        )
    return found


def estimate_by_device(
    plan: Plan,
    run_ids: list[str],
    measurements: list[Throughput],
    data_dir: str | Path | None = None,
) -> list[DeviceEstimate]:
    """GPU-hours of ``run_ids`` on each device that has measurements: a run's FLOPs divided by the FLOP/s
    achieved by a measurement of the same method and pair when there is one, else by the median achieved
    FLOP/s of all the device's measurements (which prices a model by its FLOPs only). Multi-GPU (DDP) runs
    are counted at perfect scaling: the same GPU-hours spread over more GPUs."""
    out = []
    for device in sorted({m.device for m in measurements}):
        on_device = [m for m in measurements if m.device == device]
        median = float(np.median([m.flops_per_s for m in on_device]))
        hours, exact, scaled = 0.0, 0, 0
        for run_id in run_ids:
            spec = plan.specs[run_id]
            flops = estimate(plan, [run_id], data_dir).train_flops
            teacher = spec.teacher.model if spec.teacher else None
            same = [
                m
                for m in on_device
                if (m.method, m.student, m.teacher) == (spec.method, spec.model, teacher)
            ]
            rate = float(np.median([m.flops_per_s for m in same])) if same else median
            exact, scaled = exact + bool(same), scaled + (not same)
            hours += flops / rate / 3600
        out.append(DeviceEstimate(device, hours, exact, scaled, median, len(on_device)))
    return out
