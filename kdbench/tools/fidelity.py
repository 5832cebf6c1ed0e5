"""``kdbench fidelity``: the fast path's accuracy gate on real images (issue 5).

One small teacher → student KD setting is trained on a real-image ``.npz`` (by default
``cifar10-jpeg-q75-20k.npz`` from the offline data folder) with N seeds under the **reference** path
(torch ``DataLoader``, faithful fp32 without TF32, eager, contiguous, live teacher) and under each fast **mode**, which changes
exactly one of those choices. Every mode trains the same ``RunSpec`` (same run id, its own results
folder) through ``train.run``, the loop every run uses, from one shared teacher. The class-stratified
image subset is written once as a small .npz under the results folder, which every run reads.

Per mode the gate reports the final-epoch test top-1 (mean ± std over seeds), the difference from the
reference with Welch's t-test (``results/verdict.py``: "within noise" when p ≥ alpha), and whether the
final weights are bit-identical to the reference's seed by seed (else the largest weight difference).
It passes when every mode is within noise and every mode that replays the reference's arithmetic
exactly (the loaders: ``exact=True``) gave bit-identical weights.
"""

from __future__ import annotations

import math
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdbench import train
from kdbench.data import ImageArrays, load_arrays, subset
from kdbench.data.registry import resolve_data_dir
from kdbench.errors import KdbenchError, UnknownNameError
from kdbench.io import atomic_path, atomic_write_json
from kdbench.plan import DataSpec, RunSpec, TeacherRef, TrainSpec
from kdbench.results.verdict import judge
from kdbench.store.records import RunResult
from kdbench.store.run_dir import RunDir
from kdbench.train.compute import ComputeOptions
from kdbench.train.options import RunOptions

# The authors' arithmetic: IEEE fp32 (docs/protocol-choices.md, "Precision"); on a CPU faithful and fp32 are one.
REFERENCE_COMPUTE = ComputeOptions(
    precision="faithful", channels_last=False, compile=False, teacher_cache="off"
)


@dataclass(frozen=True)
class Mode:
    """One way to train: a loader kind and compute options; ``exact``: replays the reference bit for bit."""

    name: str
    loader: str
    compute: ComputeOptions
    change: str  # what differs from the reference path
    exact: bool = False


def _compute(**changes: Any) -> ComputeOptions:
    return ComputeOptions(**{**vars(REFERENCE_COMPUTE), **changes})


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode(
            "reference",
            "torch",
            REFERENCE_COMPUTE,
            "— (torch DataLoader, faithful fp32, eager, live teacher)",
        ),
        Mode("tensor", "tensor", REFERENCE_COMPUTE, "device-resident tensor loader", exact=True),
        Mode("ffcv", "ffcv", REFERENCE_COMPUTE, "ffcv loader (.beton files)", exact=True),
        Mode(
            "teacher-cache",
            "torch",
            _compute(teacher_cache="on"),
            "teacher logits from the per-view cache",
        ),
        Mode(
            "tf32",
            "torch",
            _compute(precision="fp32"),
            "fp32 with TF32 cuDNN convolutions (PyTorch's default; CPU: none)",
        ),
        Mode("bf16", "torch", _compute(precision="bf16"), "bf16 autocast (losses in fp32)"),
        Mode("channels-last", "torch", _compute(channels_last=True), "channels_last memory format"),
        Mode(
            "compile",
            "torch",
            _compute(compile=True),
            "torch.compile (falls back to eager if it fails)",
        ),
    )
}
# compile is left out by default: on a CPU its first run spends minutes compiling (108 s here, docs/BENCHMARKS.md).
DEFAULT_MODES: tuple[str, ...] = tuple(m for m in MODES if m != "compile")


@dataclass(frozen=True)
class FidelityConfig:
    """The KD setting the gate trains, and which modes it compares."""

    data: str = "cifar10-jpeg-q75-20k.npz"  # an .npz, absolute or under the data directory
    data_dir: str | None = None
    train_fraction: float = 0.05  # 1,000 of the 20,000 training images (class-stratified)
    test_fraction: float = 0.1  # 1,000 of the 10,000 test images
    teacher: str = "resnet8"
    student: str = "resnet8"
    method: str = "kd"
    teacher_epochs: int = 15
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.05
    seeds: int = 3
    modes: tuple[str, ...] = DEFAULT_MODES
    device: str = "cpu"
    alpha: float = 0.05
    results: Path = Path("results/fidelity")

    def __post_init__(self) -> None:
        for mode in self.modes:
            if mode not in MODES:
                raise UnknownNameError("fidelity mode", mode, tuple(MODES))
        if self.seeds < 1:
            raise KdbenchError(f"--seeds must be at least 1, got {self.seeds}.")


@dataclass
class ModeResult:
    """The runs of one mode, seed by seed, compared with the reference's."""

    mode: Mode
    top1: list[float] = field(default_factory=list)  # final-epoch test top-1 per seed
    seconds: list[float] = field(default_factory=list)
    identical: list[bool] = field(
        default_factory=list
    )  # final weights equal to the reference's, per seed
    max_weight_diff: float = 0.0
    unavailable: str = ""  # why the mode could not run here
    eager_fallback: bool = (
        False  # compile was asked for but a run went on eagerly (compute.CompiledOrEager)
    )
    p_value: float = math.nan
    verdict: str = ""  # within noise / differs / inconclusive / unavailable

    @property
    def mean(self) -> float:
        return statistics.fmean(self.top1) if self.top1 else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.top1) if len(self.top1) > 1 else math.nan

    @property
    def passed(self) -> bool:
        if self.unavailable:
            return True  # reported, not failed: the gate judges what this machine can run
        return self.verdict != "differs" and (not self.mode.exact or all(self.identical))

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode.name,
            "loader": self.mode.loader,
            "compute": self.mode.compute.to_json(),
            "change": self.mode.change,
            "exact": self.mode.exact,
            "top1": self.top1,
            "mean": self.mean,
            "std": self.std,
            "seconds": self.seconds,
            "identical": self.identical,
            "max_weight_diff": self.max_weight_diff,
            "unavailable": self.unavailable,
            "eager_fallback": self.eager_fallback,
            "p_value": self.p_value,
            "verdict": self.verdict,
            "passed": self.passed,
        }


@dataclass
class FidelityReport:
    config: FidelityConfig
    train_images: int
    test_images: int
    teacher_top1: float
    modes: list[ModeResult]

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.modes)

    def to_json(self) -> dict[str, Any]:
        config = {
            k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(self.config).items()
        }
        return {
            "config": config,
            "train_images": self.train_images,
            "test_images": self.test_images,
            "teacher_top1": self.teacher_top1,
            "passed": self.passed,
            "modes": [m.to_json() for m in self.modes],
        }


def specs(config: FidelityConfig, images: Path) -> tuple[RunSpec, list[RunSpec]]:
    """The teacher's ``ce`` run and one student run per seed (1..N), on the .npz ``images`` (see ``gate_images``)."""
    dataset = DataSpec(name="npz", options={"path": str(images)})

    def schedule(epochs: int) -> TrainSpec:
        return TrainSpec(
            epochs=epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            milestones=(),
            lr_decay=0.1,
            momentum=0.9,
            nesterov=False,
            weight_decay=5e-4,
        )

    teacher = RunSpec(
        profile="ci",
        model=config.teacher,
        method="ce",
        method_params={},
        teacher=None,
        data=dataset,
        train=schedule(config.teacher_epochs),
        seed=0,
    )
    students = [
        RunSpec(
            profile="ci",
            model=config.student,
            method=config.method,
            method_params={},
            data=dataset,
            train=schedule(config.epochs),
            seed=seed,
            teacher=TeacherRef(model=config.teacher, run_id=teacher.run_id),
        )
        for seed in range(1, config.seeds + 1)
    ]
    return teacher, students


def data_file(config: FidelityConfig) -> Path:
    """The .npz's absolute path (the run specs name it absolutely, so every mode reads the same file)."""
    path = Path(config.data).expanduser()
    path = path if path.is_absolute() else resolve_data_dir(config.data_dir) / path
    if not path.is_file():
        raise KdbenchError(
            f"fidelity data {path} does not exist: pass --data FILE.npz, or set --data-dir / KDBENCH_DATA "
            "to the folder holding cifar10-jpeg-q75-20k.npz (the shared offline data)."
        )
    return path


def gate_images(config: FidelityConfig) -> tuple[Path, ImageArrays]:
    """The gate's class-stratified subset of ``config.data``, written once as its own small .npz under the results
    folder (every run then reads a few MB instead of the whole file); its path and arrays."""
    source = data_file(config)
    path = (
        Path(config.results).absolute()
        / "data"
        / f"{source.stem}-train{config.train_fraction:g}-test{config.test_fraction:g}.npz"
    )
    if not path.is_file():
        arrays = subset(
            load_arrays("npz", path=source), config.train_fraction, config.test_fraction
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                x_train=arrays.x_train,
                y_train=arrays.y_train,
                x_test=arrays.x_test,
                y_test=arrays.y_test,
            )
    return path, load_arrays("npz", path=path)


def _ffcv_data_dir(arrays: ImageArrays, results: Path) -> tuple[Path | None, str]:
    """A data dir whose ``ffcv/<name>`` holds .beton files of exactly this run's arrays, or why ffcv cannot run."""
    from kdbench.data.loaders import ffcv_arrays, ffcv_files

    root = results / "ffcv-data"
    folder = ffcv_files.beton_dir(arrays.name, root)
    try:
        ffcv_files.import_ffcv()
        if not (folder / ffcv_files.META_FILE).is_file():
            ffcv_arrays.prepare(arrays, folder)
    except ffcv_files.FfcvUnavailable as exc:
        return None, str(exc)
    return root, ""


def _copy_run(source: Path, target: Path, run_id: str) -> None:
    """Give ``target`` the finished run ``run_id`` of ``source`` (the shared teacher)."""
    if not RunDir(target, run_id).is_done():
        destination = RunDir(target, run_id).path
        shutil.rmtree(destination, ignore_errors=True)
        shutil.copytree(
            RunDir(source, run_id).path,
            destination,
            ignore=shutil.ignore_patterns(".lock", "checkpoint.pt"),
        )


def _weights(results: Path, run_id: str) -> dict[str, torch.Tensor]:
    return torch.load(RunDir(results, run_id).model_file, map_location="cpu", weights_only=True)


def run_gate(
    config: FidelityConfig, on_run: Callable[[str, int, RunResult], None] | None = None
) -> FidelityReport:
    """Train the teacher once, then every (seed, mode) student run (finished runs are reused), and judge."""
    images, arrays = gate_images(config)
    teacher, students = specs(config, images)
    results = Path(config.results)
    modes = ["reference", *(m for m in config.modes if m != "reference")]
    folders = {m: results / m for m in modes}
    teacher_result = train.run(
        teacher,
        folders["reference"],
        RunOptions(device=config.device, loader="torch", compute=REFERENCE_COMPUTE),
        show_progress=False,
    )
    outcomes = {m: ModeResult(MODES[m]) for m in modes}
    data_dirs: dict[str, Path | None] = dict.fromkeys(modes)
    if "ffcv" in modes:
        data_dirs["ffcv"], outcomes["ffcv"].unavailable = _ffcv_data_dir(arrays, results)
    for mode in modes:
        _copy_run(folders["reference"], folders[mode], teacher.run_id)
    for spec in students:
        for mode in modes:
            outcome = outcomes[mode]
            if outcome.unavailable:
                continue
            result = train.run(
                spec,
                folders[mode],
                RunOptions(
                    device=config.device,
                    loader=MODES[mode].loader,
                    compute=MODES[mode].compute,
                    data_dir=None if data_dirs[mode] is None else str(data_dirs[mode]),
                ),
                show_progress=False,
            )
            # A run trained here records both (only an imported checkpoint lacks them).
            assert result.wall_seconds is not None and result.compute is not None
            outcome.top1.append(result.last_top1)
            outcome.seconds.append(result.wall_seconds)
            outcome.eager_fallback |= (
                MODES[mode].compute.compile is True and not result.compute.compiled
            )
            if on_run is not None:
                on_run(mode, spec.seed, result)
    reference = outcomes["reference"]
    for mode, outcome in outcomes.items():
        if outcome.unavailable:
            outcome.verdict = "unavailable"
            continue
        for spec in students:
            ours, theirs = (
                _weights(folders[mode], spec.run_id),
                _weights(folders["reference"], spec.run_id),
            )
            outcome.identical.append(all(torch.equal(ours[k], theirs[k]) for k in theirs))
            diff = max(
                float((ours[k].double() - theirs[k].double()).abs().max())
                for k in theirs
                if theirs[k].numel()
            )
            outcome.max_weight_diff = max(outcome.max_weight_diff, diff)
        verdict = judge(
            ours_mean=outcome.mean,
            ours_std=outcome.std,
            n=len(outcome.top1),
            paper_mean=reference.mean,
            paper_std=reference.std,
            paper_n=len(reference.top1),
            alpha=config.alpha,
        )
        outcome.p_value = verdict.p_value
        # The gate asks whether a mode changes accuracy at all: the verdict's two-sided test of Δ = 0 at alpha,
        # not its equivalence margin (which is for tables against published numbers).
        outcome.verdict = (
            "inconclusive"
            if math.isnan(verdict.p_value)
            else "differs"
            if verdict.significant
            else "within noise"
        )
    report = FidelityReport(
        config,
        len(arrays.x_train),
        len(arrays.x_test),
        teacher_result.last_top1,
        list(outcomes.values()),
    )
    atomic_write_json(results / "fidelity.json", report.to_json())
    return report


def summary_rows(report: FidelityReport) -> list[tuple[str, ...]]:
    """mode, change, top-1 mean ± std, Δ vs reference, Welch p, verdict, weights vs reference, s/run."""
    reference = report.modes[0]
    rows: list[tuple[str, ...]] = []
    for m in report.modes:
        if m.unavailable:
            rows.append(
                (
                    m.mode.name,
                    m.mode.change,
                    "—",
                    "—",
                    "—",
                    "unavailable",
                    m.unavailable.split(";")[0],
                    "—",
                )
            )
            continue
        spread = f"{m.mean:.2f} ± {m.std:.2f}" if len(m.top1) > 1 else f"{m.mean:.2f}"
        same = (
            "reference"
            if m is reference
            else "bit-identical"
            if all(m.identical)
            else f"max |Δw| {m.max_weight_diff:.2g}"
        )
        rows.append(
            (
                m.mode.name,
                m.mode.change,
                spread,
                "—" if m is reference else f"{m.mean - reference.mean:+.2f}",
                "—" if m is reference else f"{m.p_value:.2f}",
                "—"
                if m is reference
                else m.verdict + (" (ran eagerly: compile failed)" if m.eager_fallback else ""),
                same,
                f"{statistics.fmean(m.seconds):.0f}",
            )
        )
    return rows
