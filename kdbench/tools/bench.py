"""``kdbench bench``: training images/s of kdbench's path against a plain PyTorch reference loop, in one process.

Both paths train the same teacher → student pair with the same method, batch size, initial weights
and images, in the same process, measured in interleaved rounds (the host may be noisy):

* **kdbench** — the training loop's own step (``loop._train_epoch``), its loader, the resolved compute
  options (precision, channels_last, compile) and the teacher cache when the method allows it;
* **reference** — the way the papers' code (RepDistiller, mdistiller) trains: a ``torch.utils.data.DataLoader``
  with per-sample torchvision transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor,
  Normalize), the teacher's forward pass every step, the method's loss, SGD, eager fp32, and the
  per-step ``loss.item()`` the papers log with. For MLKD, the dataset also returns each image's strong
  view, made per sample with PIL in the loader (``data/augment/strong.py``) as MLKD's released code does.

FLOPs per image come from ``FlopCounterMode`` on one forward pass of each network (training = 3 × forward, twice
for MLKD, which trains on a weak and a strong view);
the cache build is timed separately, since it is paid once per teacher and shared by every run.
"""

from __future__ import annotations

import copy
import os
import re
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import count, islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from kdbench import data, methods, models, train
from kdbench.data.augment.strong import strong_view
from kdbench.errors import KdbenchError
from kdbench.train import loop, teacher_cache
from kdbench.train.compute import CPU_MALLOC_ENV, Compute, ComputeOptions, device_name

# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment, most specific first.
PEAKS_BF16: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure: the pair, the method, the batch, how long, on which images and device."""

    teacher: str = "resnet32x4"
    student: str = "resnet8x4"
    method: str = "kd"
    batch_size: int = 64
    steps: int = 10  # timed steps per path per round
    rounds: int = 5
    warmup: int = 2  # untimed steps per path before the first round
    images: int = 128  # training images (the teacher cache covers 162 views of each)
    data: str = "synthetic"  # synthetic, or an .npz file (absolute or under the data directory)
    data_dir: str | None = None
    num_workers: int = 0
    device: str = "auto"
    compute: ComputeOptions = field(default_factory=ComputeOptions)
    peak: float | None = None  # FLOP/s of the device, when not in PEAKS_BF16
    results: Path = Path("results")  # the teacher cache is kept under results/teacher_cache
    seed: int = 0


@dataclass
class PathResult:
    """Per-round images/s of one path and what one image costs it."""

    name: str
    images_per_s: list[float]
    flops_per_image: float

    @property
    def best(self) -> float:
        return max(self.images_per_s)

    @property
    def median(self) -> float:
        return statistics.median(self.images_per_s)


@dataclass
class BenchReport:
    config: BenchConfig
    device: str
    compute: Compute
    kdbench: PathResult
    reference: PathResult
    teacher_cache: str  # "built in …", "reused", or why it is not used
    cache_build_seconds: float
    peak: float | None
    malloc_env: dict[str, str | None]
    threads: int

    @property
    def ratio_best(self) -> float:
        return self.kdbench.best / self.reference.best

    @property
    def ratio_median(self) -> float:
        return self.kdbench.median / self.reference.median

    def to_json(self) -> dict[str, Any]:
        paths = {
            p.name: {
                "images_per_s": p.images_per_s,
                "best": p.best,
                "median": p.median,
                "flops_per_image": p.flops_per_image,
            }
            for p in (self.kdbench, self.reference)
        }
        return {
            "device": self.device,
            "threads": self.threads,
            "compute": vars(self.compute),
            "paths": paths,
            "ratio_best": self.ratio_best,
            "ratio_median": self.ratio_median,
            "teacher_cache": self.teacher_cache,
            "cache_build_seconds": self.cache_build_seconds,
            "peak_flops": self.peak,
            "malloc_env": self.malloc_env,
            "config": {
                k: str(v) if isinstance(v, Path | ComputeOptions) else v
                for k, v in vars(self.config).items()
            },
        }


def forward_flops(model: models.KDModel, image_size: int) -> float:
    """FLOPs of one forward pass per image (FlopCounterMode: 2 per multiply-add), in eval mode."""
    probe = copy.deepcopy(model).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        probe(torch.zeros(2, 3, image_size, image_size, device=next(probe.parameters()).device))
    return counter.get_total_flops() / 2


def device_peak(device: torch.device, compute: Compute, given: float | None) -> float | None:
    """The device's peak FLOP/s for the precision in use: ``given``, else the bf16 table on CUDA, else unknown."""
    if given is not None:
        return given
    if device.type != "cuda" or compute.precision != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for fragment, peak in PEAKS_BF16 if fragment in name), None)


def load_images(config: BenchConfig) -> data.ImageArrays:
    """The first ``config.images`` training images of the chosen data."""
    if config.data == "synthetic":
        arrays = data.load_arrays("synthetic", train_size=max(config.images, 100), test_size=100)
    elif config.data.endswith(".npz"):
        arrays = data.load_arrays("npz", config.data_dir, path=config.data)
    else:
        raise KdbenchError(f"--data takes 'synthetic' or an .npz file, not {config.data!r}.")
    if len(arrays.x_train) < config.images:
        raise KdbenchError(
            f"{config.data} has {len(arrays.x_train)} training images; ask for at most that many with --images."
        )
    return data.ImageArrays(
        arrays.name,
        arrays.x_train[: config.images],
        arrays.y_train[: config.images],
        arrays.x_test,
        arrays.y_test,
        arrays.num_classes,
        arrays.mean,
        arrays.std,
    )


class _PaperStyleImages(Dataset):
    """The papers' CIFAR dataset: a PIL image per sample through torchvision transforms."""

    def __init__(self, arrays: data.ImageArrays, strong: bool = False, seed: int = 0):
        from PIL import Image

        from kdbench._torchvision import import_torchvision

        tv = import_torchvision()
        train_transforms = tv.transforms.Compose(
            [
                tv.transforms.RandomCrop(32, padding=4),
                tv.transforms.RandomHorizontalFlip(),
                tv.transforms.ToTensor(),
                tv.transforms.Normalize(arrays.mean, arrays.std),
            ]
        )
        self.to_pil, self.transform = Image.fromarray, train_transforms
        self.images, self.labels = arrays.x_train, arrays.y_train
        self.normalize = tv.transforms.Compose(
            [tv.transforms.ToTensor(), tv.transforms.Normalize(arrays.mean, arrays.std)]
        )
        self.rng = (
            np.random.default_rng(seed) if strong else None
        )  # MLKD's strong view (per sample, PIL)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | int, ...]:
        item = (self.transform(self.to_pil(self.images[index])), int(self.labels[index]), index)
        if self.rng is None:
            return item
        return (*item, self.normalize(strong_view(self.images[index], self.rng)))


def _distiller(
    config: BenchConfig,
    student: models.KDModel,
    teacher: models.KDModel,
    arrays: data.ImageArrays,
    device: torch.device,
) -> methods.Distiller:
    method = methods.get(config.method)
    example = next(iter(data.test_loader(arrays, 2)))[0]
    labels = torch.as_tensor(arrays.y_train) if method.needs.sample_indices else None
    return method(
        copy.deepcopy(student),
        copy.deepcopy(teacher),
        method.Params(),
        example,
        train_labels=labels,
        batch_size=config.batch_size,
    ).to(device)


def _sgd(distiller: methods.Distiller) -> torch.optim.SGD:
    return torch.optim.SGD(
        distiller.trainable_parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4
    )


class _KdbenchPath:
    """kdbench's configured path: its default loader, compute options, teacher cache and the loop's own epoch function."""

    def __init__(
        self,
        config: BenchConfig,
        distiller: methods.Distiller,
        arrays: data.ImageArrays,
        device: torch.device,
        compute: Compute,
        cache: teacher_cache.TeacherCache | None,
    ):
        self.config, self.distiller, self.arrays, self.device, self.compute, self.cache = (
            config,
            distiller,
            arrays,
            device,
            compute,
            cache,
        )
        self.optimizer = _sgd(distiller)
        self.epoch = 0
        # The loader a run would pick (``--loader auto``: the tensor loader for in-memory data).
        self.loaders = data.make_loaders(
            "auto", arrays, device=device, num_workers=config.num_workers
        )

    def run(self, steps: int) -> None:
        done = 0
        while done < steps:
            self.epoch += 1
            loader = self.loaders.train(
                self.config.batch_size,
                seed=self.config.seed,
                epoch=self.epoch,
                strong=self.distiller.needs.strong_view,
            )
            views = None
            if self.cache is not None:
                views = self.cache.for_epoch(
                    data.epoch_plan(len(self.arrays.x_train), self.config.seed, self.epoch)
                )
            taken = 0

            def counted(batches: Iterator[Any]) -> Iterator[Any]:
                nonlocal taken
                for batch in batches:
                    taken += 1
                    yield batch

            loop._train_epoch(
                self.distiller.forward_train,
                self.distiller,
                self.optimizer,
                counted(islice(loader, steps - done)),
                self.device,
                self.epoch,
                None,
                self.compute,
                views,
            )
            done += taken


class _ReferencePath:
    """The papers' loop: DataLoader + torchvision transforms, live teacher, eager fp32, ``loss.item()`` per step."""

    def __init__(
        self,
        config: BenchConfig,
        distiller: methods.Distiller,
        arrays: data.ImageArrays,
        device: torch.device,
    ):
        self.distiller, self.device = distiller, device
        self.optimizer = _sgd(distiller)
        loader = DataLoader(
            _PaperStyleImages(arrays, distiller.needs.strong_view, config.seed),
            batch_size=config.batch_size,
            shuffle=True,
            num_workers=config.num_workers,
            generator=torch.Generator().manual_seed(config.seed),
        )
        self.batches = self._forever(loader)

    @staticmethod
    def _forever(loader: DataLoader) -> Iterator[tuple[int, Any]]:
        for epoch in count(1):
            for batch in loader:
                yield epoch, batch

    def run(self, steps: int) -> None:
        self.distiller.train()
        for epoch, (images, targets, indices, *strong) in islice(self.batches, steps):
            images, targets = images.to(self.device), targets.to(self.device)
            views = strong[0].to(self.device) if strong else None
            _, terms = self.distiller.forward_train(
                images, targets, epoch, indices.to(self.device), views
            )
            loss = sum(terms.values())
            assert isinstance(loss, torch.Tensor)  # every method has loss terms
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            loss.item()


def _timed(run: Callable[[int], None], steps: int, images: int, device: torch.device) -> float:
    """Images/s of ``run(steps)``, synchronised on the device at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    run(steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return images / (time.perf_counter() - started)


def bench(
    config: BenchConfig,
    *,
    show_progress: bool = False,
    on_round: Callable[[int, float, float], None] | None = None,
) -> BenchReport:
    """Measure both paths in ``config.rounds`` interleaved rounds; see the module docstring."""
    if config.batch_size > config.images:
        raise KdbenchError(
            f"--batch-size {config.batch_size} is larger than --images {config.images}: raise --images."
        )
    device = train.resolve_device(config.device)
    compute = config.compute.resolve(device)
    compute.apply_fp32_math(
        device
    )  # this precision's TF32 flags, for both paths (the reference's fp32 too)
    arrays = load_images(config)
    torch.manual_seed(config.seed)
    student = models.create(config.student, num_classes=arrays.num_classes)
    teacher = models.create(config.teacher, num_classes=arrays.num_classes)
    side = int(arrays.x_train.shape[1])  # the measured images' size, not a CIFAR default
    student_flops, teacher_flops = forward_flops(student, side), forward_flops(teacher, side)

    ours = _distiller(config, student, teacher, arrays, device)
    assert ours.teacher is not None  # _distiller gives every method the teacher
    compute.prepare([ours.student, ours.teacher])
    # A full-protocol run (240 epochs ≥ 162 views) uses the cache under ``auto``: so does the bench.
    cache, seconds, cache_note = None, 0.0, "off (--teacher-cache off)"
    if not ours.needs.cacheable_teacher:
        cache_note = f"not used: method {config.method} reads more than the teacher's logits"
    elif compute.teacher_cache != "off":
        key = teacher_cache.CacheKey(
            f"bench:{config.teacher}:seed{config.seed}:torch{torch.__version__}",
            {"name": config.data, "n": len(arrays.x_train)},
            data.epoch_plan(1, 0, 0).padding,
        )
        cache, seconds = teacher_cache.ensure(
            ours.teacher, arrays, key, config.results, device, show_progress=show_progress
        )
        views = len(arrays.x_train) * teacher_cache.views_per_image(key.padding)
        cache_note = (
            f"built in {seconds:.1f} s ({views} teacher forwards)"
            if seconds
            else "reused from an earlier bench"
        )
    kdbench_path = _KdbenchPath(config, ours, arrays, device, compute, cache)
    reference_path = _ReferencePath(
        config, _distiller(config, student, teacher, arrays, device), arrays, device
    )

    paths = [("kdbench", kdbench_path.run), ("reference", reference_path.run)]
    for _, run in paths:
        if config.warmup:
            run(config.warmup)
    rates: dict[str, list[float]] = {name: [] for name, _ in paths}
    images = config.steps * config.batch_size
    for round_ in range(config.rounds):
        for name, run in paths if round_ % 2 == 0 else paths[::-1]:  # alternate who goes first
            rates[name].append(_timed(run, config.steps, images, device))
        if on_round is not None:
            on_round(round_ + 1, rates["kdbench"][-1], rates["reference"][-1])
    views = 2 if ours.needs.strong_view else 1  # MLKD trains on each image's weak and strong view
    train_flops, teacher_flops = views * 3 * student_flops, views * teacher_flops
    return BenchReport(
        config=config,
        device=device_name(device),
        compute=compute,
        kdbench=PathResult(
            "kdbench", rates["kdbench"], train_flops + (0 if cache is not None else teacher_flops)
        ),
        reference=PathResult("reference", rates["reference"], train_flops + teacher_flops),
        teacher_cache=cache_note,
        cache_build_seconds=seconds,
        peak=device_peak(device, compute, config.peak),
        malloc_env={k: os.environ.get(k) for k in CPU_MALLOC_ENV},
        threads=torch.get_num_threads(),
    )


def malloc_note(report: BenchReport) -> str:
    """Whether the glibc malloc settings of docs/references.md §Performance notes were in this process's environment."""
    if all(report.malloc_env.get(k) for k in CPU_MALLOC_ENV):
        return (
            "glibc malloc settings: set ("
            + ", ".join(f"{k}={v}" for k, v in report.malloc_env.items())
            + ")"
        )
    hint = " ".join(f"{k}={v}" for k, v in CPU_MALLOC_ENV.items())
    return (
        f"glibc malloc settings: not set — on CPU, start with `{hint} kdbench bench …` for 3-5x on both paths "
        "(kdbench's executor sets them for its CPU workers)"
    )


def save_record(report: BenchReport, results: Path) -> Path:
    """Keep the measurement under ``results/bench/`` (one file per device, method, pair and batch, the latest
    wins), where ``kdbench show`` reads measured throughput from."""
    from kdbench.cost import BENCH_DIR
    from kdbench.io import atomic_write_json

    c = report.config
    slug = re.sub(
        r"[^A-Za-z0-9_.]+",
        "-",
        f"{report.device}--{c.method}-{c.teacher}-{c.student}-b{c.batch_size}",
    )
    path = Path(results) / BENCH_DIR / f"{slug}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, report.to_json())
    return path


def summary_rows(report: BenchReport) -> list[tuple[str, ...]]:
    """One row per path: best and median images/s, model GFLOP/image, achieved TFLOP/s (best) and % of peak."""
    rows: list[tuple[str, ...]] = []
    for p in (report.kdbench, report.reference):
        achieved = p.best * p.flops_per_image
        share = f"{100 * achieved / report.peak:.2f} %" if report.peak else "unknown peak"
        rows.append(
            (
                p.name,
                f"{p.best:,.1f}",
                f"{p.median:,.1f}",
                f"{p.flops_per_image / 1e9:.3f}",
                f"{achieved / 1e12:.4f}",
                share,
            )
        )
    return rows
