"""``kdbench doctor``: the environment, then every code path that differs on this device, each checked once.

The first thing to run on a new machine, and on any GPU machine. It prints the environment (device, driver,
torch/CUDA/cuDNN versions, TF32 flags, compute mode, free memory, the C compiler Triton and Inductor need), then,
within a time budget, one line per check: every method for one step under the default compute options (fp32,
finite terms; on CUDA no host sync inside the step, ``torch.cuda.set_sync_debug_mode("error")``), the tensor
loader against the reference loader, MLKD's strong views against the PIL reference, the teacher cache against
the live teacher, torch.compile (static graphs, no recompile past the limit, the fallback), two runs packed in
parallel, determinism of a repeated run, and a short throughput line per configuration. Checks are small
functions returning :class:`Check` records; a failed check makes the command exit non-zero.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # imported where used, so that ``doctor`` starts without loading every module
    from kdbench.methods.base import Distiller
    from kdbench.models.base import KDModel
    from kdbench.train.compute import Compute

Status = Literal["pass", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``figure`` is its measurement (e.g. "25/25 methods", "0 px differ", "1,234 img/s")."""

    name: str
    status: Status
    figure: str
    seconds: float
    detail: str = ""


@dataclass
class Report:
    """What ``kdbench doctor`` found: the environment and the checks, in the order they ran."""

    environment: dict[str, str]
    checks: list[Check] = field(default_factory=list)
    budget_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in ("pass", "fail", "skip")}

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "counts": self.counts(),
            "budget_s": self.budget_s,
            "environment": self.environment,
            "checks": [asdict(c) for c in self.checks],
        }


@dataclass(frozen=True)
class Setting:
    """What the checks run on: the device, and how big (``quick``: the CPU/CI sizes)."""

    device: torch.device
    quick: bool
    workdir: Path

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def teacher(self) -> str:
        return "resnet32x4" if self.cuda and not self.quick else "resnet8x4"

    @property
    def kd_student(self) -> str:
        """The student of the compile and throughput checks (the paper pair's on a GPU; the smallest in quick mode)."""
        return "resnet8" if self.quick else "resnet8x4"


# ---------------------------------------------------------------------------------------------- environment


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({type(exc).__name__})"
    out = (done.stdout or done.stderr).strip()
    return out.splitlines()[-1] if out else ""


def environment(device: torch.device) -> dict[str, str]:
    """Device, driver, versions, precision flags (read from torch as they are now), compute mode, memory, compilers."""
    import kdbench

    env = {
        "kdbench": kdbench.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda (torch build)": str(torch.version.cuda),
        "cudnn": str(torch.backends.cudnn.version()),
        "device": str(device),
        "cpu threads": str(torch.get_num_threads()),
        "cpus": str(os.cpu_count()),
        "tf32 matmul (torch.backends.cuda.matmul.allow_tf32)": str(
            torch.backends.cuda.matmul.allow_tf32
        ),
        "tf32 cudnn (torch.backends.cudnn.allow_tf32)": str(torch.backends.cudnn.allow_tf32),
        "float32 matmul precision": torch.get_float32_matmul_precision(),
        "cudnn.deterministic / benchmark": f"{torch.backends.cudnn.deterministic} / {torch.backends.cudnn.benchmark}",
        "C compiler (Inductor, Triton)": shutil.which("cc") or shutil.which("gcc") or "none found",
        "Python.h (Triton launcher)": str(
            Path(sysconfig.get_paths()["include"], "Python.h").is_file()
        ),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = "not installed"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        free, total = torch.cuda.mem_get_info(device)
        env.update(
            {
                "device name": props.name,
                "capability": f"sm_{props.major}{props.minor}",
                "memory free / total": f"{free / 2**30:.1f} / {total / 2**30:.1f} GiB",
                "bf16 supported": str(torch.cuda.is_bf16_supported(including_emulation=False)),
                "driver, compute mode": _run(
                    [
                        "nvidia-smi",
                        "--query-gpu=driver_version,compute_mode",
                        "--format=csv,noheader",
                        f"--id={device.index or 0}",
                    ]
                ),
            }
        )
    return env


# ---------------------------------------------------------------------------------------------- checks


def _calibrated(name: str, num_classes: int, size: int = 32) -> KDModel:
    """A random network with BN running statistics averaged over random images, in eval mode (a random net's
    default statistics give exploding activations in eval mode)."""
    from kdbench import models

    torch.manual_seed(0)
    net = models.create(name, num_classes=num_classes)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.momentum = None
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(16, 3, size, size))
    for bn in bns:
        bn.momentum = 0.1
    return net.eval()


def _sync_debug(enabled: bool) -> Any:
    """``torch.cuda.set_sync_debug_mode("error")`` for the block on CUDA: any host sync in it raises."""
    import contextlib

    @contextlib.contextmanager
    def mode() -> Any:
        if not enabled:
            yield
            return
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")

    return mode()


def check_methods(s: Setting) -> Check:
    """Every method: two steps (the second under sync-debug on CUDA), fp32 finite terms, a backward and an SGD step."""
    from kdbench import methods, models
    from kdbench.train.compute import ComputeOptions

    compute = ComputeOptions(compile=False).resolve(s.device)  # compile has its own check
    classes, batch = 10, 8
    teacher = _calibrated(s.teacher, classes)
    torch.manual_seed(1)
    images = torch.randn(batch, 3, 32, 32)
    strong = torch.flip(images, dims=[3]) + 0.1
    targets = torch.arange(batch) % classes
    failures = []
    names = methods.names()
    for name in names:
        try:
            cls = methods.get(name)
            torch.manual_seed(2)
            student = models.create("resnet8x4", num_classes=classes)
            t = copy.deepcopy(teacher) if cls.needs.teacher else None
            extra: dict[str, Any] = {"batch_size": batch}
            if cls.needs.sample_indices:
                extra["train_labels"] = torch.arange(256) % classes
            d = cls(student, t, cls.Params(), images[:4], **extra).to(s.device)
            compute.prepare([d.student] + ([d.teacher] if d.teacher is not None else []))
            stage = d.init_stage()
            params = stage.parameters if stage is not None else d.trainable_parameters()
            optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
            x, y = compute.images(images.to(s.device)), targets.to(s.device)
            step_in = {
                "indices": torch.arange(batch, device=s.device),
                "strong": compute.images(strong.to(s.device)) if cls.needs.strong_view else None,
            }
            d.train()
            for i in range(2):
                with _sync_debug(s.cuda and i == 1), compute.autocast(s.device):
                    terms = (
                        d.forward_init(x, y)
                        if stage is not None
                        else d.forward_train(x, y, 1, **step_in)[1]
                    )
                with _sync_debug(s.cuda and i == 1):
                    optimizer.zero_grad(set_to_none=True)
                    loss = sum(terms.values())
                    assert isinstance(loss, torch.Tensor)  # every method has loss terms
                    loss.backward()
                    optimizer.step()
            bad = [
                f"{k}:{v.dtype}"
                for k, v in terms.items()
                if v.dtype != torch.float32 or not bool(torch.isfinite(v).all())
            ]
            if bad:
                failures.append(f"{name} ({', '.join(bad)})")
        except Exception as exc:  # noqa: BLE001 - every method is tried; the failures are the figure
            failures.append(
                f"{name} ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
            )
    ok = len(names) - len(failures)
    return Check(
        "methods: one step each",
        "fail" if failures else "pass",
        f"{ok}/{len(names)} methods",
        0.0,
        "; ".join(failures),
    )


def _synthetic(train_size: int, test_size: int = 32) -> Any:
    from kdbench import data

    return data.load_dataset(
        "synthetic", num_classes=10, image_size=32, train_size=train_size, test_size=test_size
    )


def check_loader(s: Setting) -> Check:
    """The tensor loader's first batches against the reference torch DataLoader's: equal values."""
    from kdbench.data import make_loaders

    arrays = _synthetic(96)
    worst = 0.0
    for batches in zip(
        make_loaders("torch", arrays).train(32, seed=3, epoch=2),
        make_loaders("tensor", arrays, device=s.device).train(32, seed=3, epoch=2),
    ):
        (xr, yr, ir), (xt, yt, it) = batches[0][:3], batches[1][:3]
        if not (torch.equal(yr, yt.cpu()) and torch.equal(ir, it.cpu())):
            return Check("tensor loader = reference loader", "fail", "labels or order differ", 0.0)
        worst = max(worst, float((xr - xt.cpu()).abs().max()))
    return Check(
        "tensor loader = reference loader",
        "pass" if worst == 0.0 else "fail",
        f"max |Δ| {worst:.2g}",
        0.0,
    )


def check_strong_views(s: Setting) -> Check:
    """MLKD's strong views made on the device against the PIL reference, pixel for pixel; ms per batch of 64."""
    from kdbench.data.augment.strong import apply
    from kdbench.data.augment.strong_batched import draws, strong_views, to_device
    from kdbench.data.loaders.tensor_arrays import ResidentSplit, crop_flip

    arrays = _synthetic(64 if s.quick else 512)
    split = ResidentSplit.from_arrays(arrays.x_train, arrays.y_train, 4, s.device)
    differ, seconds, n = 0, 0.0, len(arrays.x_train)
    for start in range(0, n, 64):
        indices = torch.arange(start, min(start + 64, n))
        decisions = draws(5, 1, indices.tolist(), 32, 32, 4)
        started = time.perf_counter()
        with _sync_debug(s.cuda):
            offsets = to_device(torch.tensor([(d.dx, d.dy) for d in decisions]), s.device)
            flips = to_device(torch.tensor([d.flip for d in decisions]), s.device)
            views = strong_views(
                crop_flip(split.images, to_device(indices, s.device), offsets, flips, 4), decisions
            )
        if s.cuda:
            torch.cuda.synchronize()
        seconds += time.perf_counter() - started
        got = views.permute(0, 2, 3, 1).cpu().numpy()
        expected = np.stack([apply(arrays.x_train[int(i)], d) for i, d in zip(indices, decisions)])
        differ += int((got != expected).any(axis=3).sum())
    ms = 1000 * seconds / -(-n // 64)
    return Check(
        "strong views = PIL reference",
        "pass" if differ == 0 else "fail",
        f"{differ} px differ in {n} views, {ms:.1f} ms/batch, no host sync"
        if s.cuda
        else f"{differ} px differ in {n} views, {ms:.1f} ms/batch",
        0.0,
    )


def check_teacher_cache(s: Setting) -> Check:
    """Cached teacher logits against the live teacher (eval mode, fp32) on one epoch's views."""
    from kdbench import data
    from kdbench.train import teacher_cache

    arrays = _synthetic(8 if s.quick else 64)
    teacher = _calibrated("resnet8" if s.quick else s.teacher, 10).to(s.device)
    path = s.workdir / "cache" / "teacher.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    teacher_cache.build(teacher, arrays, path, padding=4, device=s.device)
    cache = teacher_cache.TeacherCache(path, len(arrays.x_train), 4, 10, s.device)
    loaders = data.make_loaders("tensor", arrays, device=s.device)
    lookup = cache.for_epoch(data.epoch_plan(len(arrays.x_train), 3, 1))
    worst = 0.0
    with torch.no_grad():
        for images, _, indices in loaders.train(8, seed=3, epoch=1):
            worst = max(worst, float((teacher(images) - lookup(indices)).abs().max()))
    tolerance = 1e-2 if s.cuda else 1e-4  # TF32 convolutions on CUDA, as the cache build's
    return Check(
        "teacher cache = live teacher",
        "pass" if worst <= tolerance else "fail",
        f"max |Δ logit| {worst:.2g} (≤ {tolerance:g})",
        0.0,
    )


def _kd_step_fn(
    s: Setting, compute: Compute, batch: int
) -> tuple[Callable[[int], None], Distiller]:
    """One KD training step of ``s.kd_student`` from ``s.teacher`` (resnet8 in quick mode) under ``compute``:
    ``step(n)`` runs it on n images."""
    from kdbench import methods, models

    torch.manual_seed(2)
    cls = methods.get("kd")
    teacher = _calibrated("resnet8" if s.quick else s.teacher, 10)
    d = cls(
        models.create(s.kd_student, num_classes=10),
        teacher,
        cls.Params(),
        torch.zeros(2, 3, 32, 32),
    ).to(s.device)
    assert d.teacher is not None  # KD was given its teacher
    compute.prepare([d.student, d.teacher])
    optimizer = torch.optim.SGD(d.trainable_parameters(), lr=0.01, momentum=0.9)
    images = compute.images(torch.randn(batch, 3, 32, 32, device=s.device))
    targets = torch.arange(batch, device=s.device) % 10
    d.train()

    def step(n: int) -> None:
        compute.step_begin()
        with compute.autocast(s.device):
            _, terms = d.forward_train(images[:n], targets[:n], 1)
        optimizer.zero_grad(set_to_none=True)
        loss = sum(terms.values())
        assert isinstance(loss, torch.Tensor)  # KD has loss terms
        loss.backward()
        optimizer.step()

    return step, d


def check_compile(s: Setting) -> Check:
    """torch.compile as runs use it: a full and a short batch, then eval; stays compiled (static graphs, within the
    recompile limit), and a compiler that fails falls back to eager (reported). Inductor on CUDA; on CPU the
    "aot_eager" backend (dynamo and AOTAutograd as in a run, without the minutes of C++ code generation)."""
    from kdbench.train import compute as compute_module
    from kdbench.train.compute import ComputeOptions, compile_fallbacks, first_step, wrappers

    saved, quiet = compute_module.BACKEND, logging.getLogger("kdbench.train.compute")
    try:
        if not s.cuda:
            compute_module.BACKEND = "aot_eager"
        started = time.perf_counter()
        compute = ComputeOptions(compile=True).resolve(s.device)
        step, d = _kd_step_fn(s, compute, 64)
        first_step([d.student, d.teacher], d, lambda: step(64))  # noqa: B023 - called here
        step(64)
        step(16)
        d.eval()
        with torch.no_grad():
            d.forward_test_heads(torch.randn(32, 3, 32, 32, device=s.device))
        compile_s = time.perf_counter() - started
        fallbacks = compile_fallbacks([d.student, d.teacher])
        active = all(w.active for w in wrappers([d.student, d.teacher]))

        def no_compiler(gm: Any, example_inputs: Any) -> Any:
            from torch._inductor.exc import InvalidCxxCompiler

            raise InvalidCxxCompiler()

        compute_module.BACKEND = no_compiler
        quiet.disabled = True  # the fallback's warning is expected here; the figure reports it
        step_fail, failing = _kd_step_fn(s, compute, 8)
        first_step([failing.student, failing.teacher], failing, lambda: step_fail(8))
        fell_back = bool(compile_fallbacks([failing.student, failing.teacher]))
    finally:
        compute_module.BACKEND = saved
        quiet.disabled = False
    ok = active and not fallbacks and fell_back
    return Check(
        "compile: stays compiled, falls back on compiler errors",
        "pass" if ok else "fail",
        f"{compile_s:.1f} s to compile (backend {'inductor' if s.cuda else 'aot_eager'}), fallback "
        f"{'reported' if fell_back else 'MISSING'}",
        0.0,
        "; ".join(f"{k}: {v}" for k, v in fallbacks.items()),
    )


def _tiny_specs(epochs: int = 1) -> tuple[Any, Any]:
    from kdbench.plan import DataSpec, RunSpec, TeacherRef, TrainSpec

    dataset = DataSpec(
        name="synthetic",
        options={"num_classes": 10, "image_size": 32, "train_size": 64, "test_size": 32},
    )
    schedule = TrainSpec(
        epochs=epochs,
        batch_size=16,
        lr=0.05,
        milestones=(),
        lr_decay=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=5e-4,
    )
    teacher = RunSpec(
        profile="smoke",
        model="resnet8",
        method="ce",
        method_params={},
        teacher=None,
        data=dataset,
        train=schedule,
        seed=1,
    )
    student = RunSpec(
        profile="smoke",
        model="resnet8",
        method="kd",
        method_params={},
        data=dataset,
        train=schedule,
        seed=2,
        teacher=TeacherRef(model="resnet8", run_id=teacher.run_id),
    )
    return teacher, student


def check_determinism(s: Setting) -> Check:
    """The same KD run trained twice (default compute options, compile off): bit-identical final weights."""
    from kdbench import train
    from kdbench.store.run_dir import RunDir
    from kdbench.train.compute import ComputeOptions
    from kdbench.train.options import RunOptions

    teacher, student = _tiny_specs()
    options = ComputeOptions(compile=False)
    weights = []
    for name in ("a", "b"):
        results = s.workdir / f"determinism-{name}"
        train.run(
            teacher, results, RunOptions(device=str(s.device), compute=options), show_progress=False
        )
        train.run(
            student, results, RunOptions(device=str(s.device), compute=options), show_progress=False
        )
        weights.append(
            RunDir(results, student.run_id).load_torch(RunDir(results, student.run_id).model_file)
        )
    worst = max(
        float((weights[0][k].float() - weights[1][k].float()).abs().max()) for k in weights[0]
    )
    return Check(
        "determinism: a run repeated",
        "pass" if worst == 0.0 else "fail",
        f"max |Δw| {worst:.2g}",
        0.0,
        ""
        if worst == 0.0
        else "non-deterministic kernels (cudnn.deterministic is False); the fidelity gate's exact modes will differ",
    )


def check_packed(s: Setting) -> Check:
    """Two runs trained at once by two `kdbench train` processes on this device (as --runs-per-gpu packs them)."""
    from kdbench import train
    from kdbench.train.options import RunOptions

    teacher, student = _tiny_specs()
    results = s.workdir / "packed"
    train.run(teacher, results, RunOptions(device=str(s.device)), show_progress=False)
    specs = [student.model_copy(update={"seed": seed}) for seed in (11, 12)]
    processes = []
    for spec in specs:
        path = results / f"{spec.run_id}.json"
        path.write_text(json.dumps(spec.model_dump(mode="json")))
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kdbench",
                    "train",
                    str(path),
                    "--results",
                    str(results),
                    "--device",
                    str(s.device),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outcomes = [p.communicate(timeout=600) for p in processes]
    codes = [p.returncode for p in processes]
    ok = all(c == 0 for c in codes)
    detail = "" if ok else " | ".join((err.strip().splitlines() or [""])[-1] for _, err in outcomes)
    return Check(
        "two runs packed in parallel", "pass" if ok else "fail", f"exit codes {codes}", 0.0, detail
    )


def check_throughput(s: Setting) -> list[Check]:
    """Images/s of a KD step (batch 64) per configuration: eager fp32, the device's defaults eager, compiled, and on
    CUDA compiled with CUDA graphs (``--compile-mode reduce-overhead``). A measurement, never a pass/fail on speed."""
    from kdbench.train.compute import ComputeOptions, first_step

    configs = [("eager fp32", ComputeOptions(precision="fp32", channels_last=False, compile=False))]
    if s.cuda:
        configs += [
            ("eager bf16 + channels_last", ComputeOptions(compile=False)),
            ("compiled", ComputeOptions(compile=True)),
            (
                "compiled + CUDA graphs",
                ComputeOptions(compile=True, compile_mode="reduce-overhead"),
            ),
        ]
    steps = 3 if s.quick else 50
    out = []
    for label, options in configs:
        started = time.perf_counter()
        try:
            step, d = _kd_step_fn(s, options.resolve(s.device), 64)
            first_step([d.student, d.teacher], d, lambda: step(64))  # noqa: B023 - called here
            for _ in range(2):
                step(64)
            if s.cuda:
                torch.cuda.synchronize()
            timed = time.perf_counter()
            for _ in range(steps):
                step(64)
            if s.cuda:
                torch.cuda.synchronize()
            rate = 64 * steps / (time.perf_counter() - timed)
            out.append(
                Check(
                    f"throughput: {label}",
                    "pass",
                    f"{rate:,.0f} img/s (KD {'resnet8' if s.quick else s.teacher} → {s.kd_student}, batch 64; "
                    f"{timed - started:.1f} s to warm up)",
                    0.0,
                )
            )
        except Exception as exc:  # noqa: BLE001 - a configuration that cannot run is a failure of its own line
            out.append(
                Check(
                    f"throughput: {label}",
                    "fail",
                    f"{type(exc).__name__}",
                    0.0,
                    str(exc).splitlines()[0][:300] if str(exc) else "",
                )
            )
    return out


# Cheap first, so that a small budget still covers the most paths.
CHECKS: tuple[Callable[[Setting], Check | list[Check]], ...] = (
    check_loader,
    check_strong_views,
    check_teacher_cache,
    check_compile,
    check_determinism,
    check_methods,
    check_packed,
    check_throughput,
)


def run(
    device: torch.device,
    budget_s: float,
    quick: bool,
    on_check: Callable[[Check], None] | None = None,
) -> Report:
    """Every check in ``CHECKS`` while the budget lasts (the ones left are reported as skipped)."""
    report = Report(environment(device), budget_s=budget_s)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kdbench-doctor-") as tmp:
        setting = Setting(device, quick, Path(tmp))
        for check in CHECKS:
            name = check.__name__.removeprefix("check_")
            if time.perf_counter() - started > budget_s:
                found: list[Check] = [Check(name, "skip", "time budget spent", 0.0)]
            else:
                t0 = time.perf_counter()
                try:
                    result = check(setting)
                    found = result if isinstance(result, list) else [result]
                except Exception as exc:  # noqa: BLE001 - a check that crashes is a failed check, the others still run
                    found = [
                        Check(
                            name,
                            "fail",
                            type(exc).__name__,
                            0.0,
                            str(exc).splitlines()[0][:300] if str(exc) else "",
                        )
                    ]
                spent = time.perf_counter() - t0
                found = [
                    Check(c.name, c.status, c.figure, round(spent / len(found), 2), c.detail)
                    for c in found
                ]
            for c in found:
                report.checks.append(c)
                if on_check is not None:
                    on_check(c)
    return report
