"""The one training loop for every run: teachers, students, every method.

``run(spec, results, options)`` trains one :class:`~kdbench.plan.RunSpec` into ``<results>/runs/<run-id>/``.
Read top-down: ``_train`` sets the run up (dataset, networks seeded from the spec, compute, teacher cache),
resumes it from its checkpoint, then trains each of its stages (kdbench/train/stages.py: a method's
pre-training stage, then the main stage: SGD with a multi-step LR, top-1/top-5 after every epoch) with one
epoch function, writes an atomic checkpoint after every epoch, and finishes with the result. The loop never
branches on the method: it sums the loss terms the method returns and logs each one.
"""

from __future__ import annotations

import logging
import math
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from kdbench import __version__, data, methods, models
from kdbench.data.shard import global_batch_sizes
from kdbench.errors import KdbenchError
from kdbench.io import WriteFailed, atomic_write_json
from kdbench.models.per_gpu_batchnorm import emulate_per_gpu_batchnorm
from kdbench.plan import RunSpec
from kdbench.provenance import source_commit
from kdbench.store.records import (
    MAIN_HEAD,
    ComputeResult,
    EpochRecord,
    HeadResult,
    ImportedCheckpoint,
    KeptWeights,
    PrecisionResult,
    RunResult,
    TestLossResult,
    TestStats,
    TopK,
    TrainStats,
)
from kdbench.store.run_dir import RunDir, RunLocked
from kdbench.train import checkpoints, curves, distributed, sources, teacher_cache
from kdbench.train.compute import (
    Compute,
    PrecisionRecord,
    compile_fallbacks,
    compiled_active,
    device_name,
    first_step,
)
from kdbench.train.distributed import SINGLE, Group
from kdbench.train.options import RunOptions
from kdbench.train.stages import Stage, stages

log = logging.getLogger(__name__)
EVAL_BATCH = 256


class TrainingDiverged(KdbenchError):
    """A loss became NaN or infinite."""


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise KdbenchError(
            f"device {device!r} requested but CUDA is not available on this machine; use --device cpu or auto."
        )
    return resolved


def run(
    spec: RunSpec,
    results: Path,
    options: RunOptions | None = None,
    *,
    show_progress: bool | None = None,
) -> RunResult:
    """Train ``spec`` to completion (resuming if a checkpoint exists) and return its result.

    ``options``: where and how it trains (kdbench/train/options.py), never what: its device, data directory,
    loader (every kind gives the same batches, ``data/loaders/factory.py``), compute options, the executor's slot
    (recorded in ``launch.json`` for ``kdbench status`` once the run's lock is held) and the loggers rank 0
    also sends each epoch's metrics to (``kdbench/train/curves.py``; ``()``: metrics.jsonl only).
    ``show_progress``: a progress bar over each epoch's steps (default: on an interactive terminal).
    Started as one rank of a DDP run (torchrun or SLURM variables, ``kdbench/train/distributed.py``), it trains
    its share of every global batch and only rank 0 writes the run directory."""
    options = options or RunOptions()
    curves.require(options.loggers)
    group = distributed.init(options.device)
    try:
        return _run(
            spec,
            Path(results),
            group,
            group.device or resolve_device(options.device),
            options,
            show_progress,
        )
    finally:
        group.shutdown()


def _run(
    spec: RunSpec,
    results: Path,
    group: Group,
    device: torch.device,
    options: RunOptions,
    show_progress: bool | None,
) -> RunResult:
    rundir = RunDir(results, spec.run_id)
    with ExitStack() as held:
        state, locked = "train", None
        if group.is_main:
            if rundir.spec_file.is_file():
                rundir.check_spec()  # never reuse or resume a directory whose spec is not this run's
            if rundir.is_done():
                state = "done"
            else:
                try:
                    held.enter_context(rundir.lock())
                except RunLocked as exc:
                    state, locked = "locked", exc
        state = group.broadcast_object(state)  # the other ranks follow rank 0's decision
        if state == "done":
            return rundir.verified_result()
        if state == "locked":
            raise locked or RunLocked(f"run {spec.run_id} is being trained by another process.")
        if group.is_main:
            held.enter_context(_log_to(rundir.log_file))
            for stale in rundir.remove_stale_temps():
                log.info("removed %s, left by a process killed while writing it", stale)
            atomic_write_json(rundir.spec_file, spec.model_dump(mode="json"))
            rundir.failed_file.unlink(missing_ok=True)
            if (
                options.slot is not None
            ):  # written under the lock: an executor that lost the race for this run cannot overwrite it
                _record_launch(rundir, options.slot)
            held.enter_context(
                curves.recording(rundir, spec, options.loggers)
            )  # each metrics.jsonl write also goes there
        try:
            result = _train(
                spec,
                rundir,
                results,
                device,
                options,
                group.is_main and (sys.stderr.isatty() if show_progress is None else show_progress),
                group,
            )
            group.barrier()  # rank 0 has written result.json
            return result
        except Exception as exc:
            if group.is_main:
                _record_failure(rundir, exc)
            log.error(
                "run %s failed%s: %s",
                spec.run_id,
                f" on rank {group.rank}" if group.active else "",
                exc,
            )
            raise


def _import(
    spec: RunSpec,
    rundir: RunDir,
    device: torch.device,
    options: RunOptions,
    group: Group,
) -> RunResult:
    """A teacher run whose weights come from a verified checkpoint file: load, evaluate once, record."""
    assert spec.checkpoint is not None
    data_dir = options.data_dir
    arrays = sources.dataset(spec, data_dir)
    path = checkpoints.locate(spec.checkpoint, data_dir)
    model, digest = checkpoints.load_into(
        models.create(spec.model, num_classes=arrays.num_classes),
        spec.checkpoint,
        path,
        spec.model,
        data_dir,
    )
    distiller = methods.get("ce")(
        model, None, methods.get("ce").Params(), data.example_images(arrays)
    ).to(device)
    started = time.time()
    loaders = data.make_loaders(
        options.loader, arrays, device=device, num_workers=options.workers, data_dir=data_dir
    )
    stats = evaluate(distiller, loaders.test(EVAL_BATCH, shard=group.shard), device, group)
    history = [EpochRecord.of(0, phase="imported", test=stats)]
    result = _summarise(spec, history, device, time.time() - started, group).model_copy(
        update={
            "imported": ImportedCheckpoint(
                path=str(path), sha256=digest, format=spec.checkpoint.format
            )  # full digest
        }
    )
    if group.is_main:
        rundir.write_metrics(history)
        rundir.save_torch(rundir.model_file, distiller.inference_state())
        rundir.write_result(result)
    log.info(
        "imported %s from %s (sha256 %s): test top-1 %.2f",
        spec.run_id,
        path,
        digest,
        stats.top1,
    )
    return result


def _train(
    spec: RunSpec,
    rundir: RunDir,
    results: Path,
    device: torch.device,
    options: RunOptions,
    show_progress: bool,
    group: Group,
) -> RunResult:
    """Set the run up, resume it, train each stage's remaining epochs (a checkpoint after each), and finish."""
    # Before anything runs on the device (an imported checkpoint's evaluation and the teacher cache's build too).
    precision = options.compute.resolve(device).apply_fp32_math(device)
    if spec.checkpoint is not None:
        return _import(spec, rundir, device, options, group)
    run = _set_up(spec, results, device, options, show_progress, group)
    run_stages = stages(spec, run.distiller)
    state = _resume(rundir, run.distiller, run_stages, run.compute.precision)
    group.broadcast_tensors(
        run.distiller.training_state().values()
    )  # every rank starts from rank 0's state
    if state.history and group.is_main:
        rundir.write_metrics(
            state.history
        )  # from the checkpoint: repairs a metrics.jsonl that was deleted as corrupted
    log.info(
        "run %s: %s %s on %s (%s), epochs %d..%d",
        spec.run_id,
        spec.method,
        spec.model,
        device,
        spec.profile,
        state.epochs_done["main"] + 1,
        spec.train.epochs,
    )
    feed = _feed(spec, run, options, group)
    started = time.time()
    with _progress_bar(show_progress) as bar:
        for stage in run_stages:
            for epoch in range(state.epochs_done[stage.name] + 1, stage.epochs + 1):
                record = _train_stage_epoch(spec, run, feed, stage, epoch, state, bar)
                _checkpoint(rundir, run, run_stages, state, group)
                _log_epoch(stage, record)
    return _finish(spec, rundir, run, state, precision, options, time.time() - started, group)


@dataclass
class _Setup:
    """A run's dataset, method, networks and compute, built before it resumes."""

    device: torch.device
    arrays: data.Dataset
    method: type[methods.Distiller]
    distiller: methods.Distiller
    compute: Compute
    networks: list[torch.nn.Module]  # the networks compute prepared (memory format, compile)
    cache: teacher_cache.TeacherCache | None
    cache_seconds: float


def _set_up(
    spec: RunSpec,
    results: Path,
    device: torch.device,
    options: RunOptions,
    show_progress: bool,
    group: Group,
) -> _Setup:
    """The dataset, the networks seeded from ``spec.seed`` (student, teacher, the method's own modules), their
    compute (memory format, compile) and the teacher cache."""
    arrays = sources.dataset(spec, options.data_dir)
    _check_processes(spec, methods.get(spec.method), group, len(arrays.y_test))
    torch.manual_seed(spec.seed)
    student = models.create(spec.model, num_classes=arrays.num_classes)
    teacher = None
    if spec.teacher is not None:
        teacher = sources.load_trained_model(
            results, spec.teacher.run_id, spec.teacher.model, arrays.num_classes
        )
    method = methods.get(spec.method)
    example = data.example_images(arrays)
    train_labels = torch.as_tensor(arrays.y_train) if method.needs.sample_indices else None
    distiller = method(
        student,
        teacher,
        method.Params(**spec.method_params),
        example,
        train_labels=train_labels,
        batch_size=spec.train.batch_size,
        label_smoothing=spec.train.label_smoothing,
        loss_chunk=spec.train.loss_chunk,
    ).to(device)
    if spec.train.bn_chunk is not None:
        emulate_per_gpu_batchnorm(
            distiller, spec.train.batch_size // group.world // spec.train.bn_chunk
        )
    if spec.init_from is not None:
        sources.start_from(distiller, results, spec.init_from.run_id)
    compute = options.compute.resolve(
        device,
        train_steps=spec.train.epochs * math.ceil(len(arrays.y_train) / spec.train.batch_size),
    )
    networks: list[torch.nn.Module] = [distiller.student]
    networks += [distiller.teacher] if distiller.teacher is not None else []
    compute.prepare(networks)
    cache, cache_seconds = _teacher_cache(
        spec, method, distiller, arrays, results, device, compute, show_progress
    )
    return _Setup(device, arrays, method, distiller, compute, networks, cache, cache_seconds)


@dataclass
class _Feed:
    """Where a stage's batches come from: the run's loaders, on its device, over its processes."""

    loaders: data.Loaders
    group: Group
    drop_last: bool
    global_sizes: list[
        int
    ]  # each step's global batch size: a rank weights its gradients by its share

    def train(self, spec: RunSpec, run: _Setup, data_epoch: int) -> Iterable:
        return self.loaders.train(
            spec.train.batch_size,
            seed=spec.seed,
            epoch=data_epoch,
            strong=run.method.needs.strong_view,
            drop_last=self.drop_last,
            shard=self.group.shard,
        )

    def test(self) -> Iterable:
        return self.loaders.test(EVAL_BATCH, shard=self.group.shard)


def _feed(spec: RunSpec, run: _Setup, options: RunOptions, group: Group) -> _Feed:
    loaders = data.make_loaders(
        options.loader,
        run.arrays,
        device=run.device,
        num_workers=options.workers,
        data_dir=options.data_dir,
    )
    log.info(
        "loader %s%s",
        loaders.kind,
        f", {group.world} processes ({group.backend})" if group.active else "",
    )
    drop_last = (
        spec.train.drop_last or run.method.needs.fixed_batch
    )  # the recipe's choice, or modules sized by the batch
    global_sizes = global_batch_sizes(
        len(run.arrays.y_train), spec.train.batch_size, drop_last, group.world
    )
    return _Feed(loaders, group, drop_last, global_sizes)


def _train_stage_epoch(
    spec: RunSpec,
    run: _Setup,
    feed: _Feed,
    stage: Stage,
    epoch: int,
    state: TrainState,
    bar: Progress | None,
) -> EpochRecord:
    """Epoch ``epoch`` of ``stage``: its LR, one pass over its data epoch, for a main stage an evaluation and the
    best epoch kept; its metrics record joins ``state.history`` and is returned."""
    optimizer = stage.optimizer
    if stage.lr_at is not None:
        lr = stage.lr_at(epoch)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
    views = (
        run.cache.for_epoch(data.epoch_plan(len(run.arrays.y_train), spec.seed, epoch))
        if run.cache is not None and stage.evaluates
        else None
    )
    train_stats = _train_epoch(
        stage.step,
        run.distiller,
        optimizer,
        feed.train(spec, run, stage.data_epoch_offset + epoch),
        run.device,
        epoch,
        bar,
        run.compute,
        views,
        feed.group,
        feed.global_sizes,
    )
    state.epochs_done[stage.name] = epoch
    if not stage.evaluates:
        # The pre-training stage has its own data epochs, apart from the main ones.
        lr = optimizer.param_groups[0]["lr"]
        state.history.append(EpochRecord.of(epoch, phase="init", lr=lr, train=train_stats))
        return state.history[-1]
    test_stats = evaluate(run.distiller, feed.test(), run.device, feed.group)
    lr = optimizer.param_groups[0]["lr"]
    state.history.append(EpochRecord.of(epoch, lr=lr, train=train_stats, test=test_stats))
    if spec.keep == "best" and (state.best is None or test_stats.top1 > state.best["top1"]):
        # Strictly better, as SimKD's train_teacher.py:224 (test_acc > best_acc): the first best epoch wins.
        state.best = {
            "epoch": epoch,
            "top1": test_stats.top1,
            "state": {
                k: v.detach().to("cpu", copy=True)
                for k, v in run.distiller.inference_state().items()
            },
        }
    return state.history[-1]


def _log_epoch(stage: Stage, record: EpochRecord) -> None:
    if not stage.evaluates:
        log.info("init epoch %d/%d loss %.4f", record.epoch, stage.epochs, record.loss)
        return
    main = record.test[MAIN_HEAD]
    log.info(
        "epoch %d/%d lr %.2g loss %.4f train %.2f test top-1 %.2f top-5 %.2f",
        record.epoch,
        stage.epochs,
        record.lr,
        record.loss,
        record.train_top1,
        main.top1,
        main.top5,
    )


# Each stage's keys in checkpoint.pt: its epochs done and its optimizer's state.
CHECKPOINT_KEYS = {"main": ("epoch", "optimizer"), "init": ("init_epoch", "init_optimizer")}


def _checkpoint(
    rundir: RunDir, run: _Setup, run_stages: list[Stage], state: TrainState, group: Group
) -> None:
    """Checkpoint first, metrics second: metrics.jsonl never lists an epoch a resume would redo.
    Rank 0 writes; the others wait, so a rank never runs ahead of the last checkpoint by more than an epoch."""
    if not group.is_main:
        group.barrier()
        return
    optimizers = {s.name: s.optimizer for s in run_stages}
    rundir.save_torch(
        rundir.checkpoint_file,
        {
            "epoch": state.epochs_done["main"],
            "init_epoch": state.epochs_done["init"],
            "state": run.distiller.training_state(),
            "optimizer": optimizers["main"].state_dict(),
            "init_optimizer": optimizers["init"].state_dict() if "init" in optimizers else None,
            "history": [h.to_json() for h in state.history],
            "precision": run.compute.precision,
            **({"best": state.best} if state.best is not None else {}),
        },
    )
    rundir.write_metrics(state.history)
    group.barrier()


def _finish(
    spec: RunSpec,
    rundir: RunDir,
    run: _Setup,
    state: TrainState,
    precision: PrecisionRecord,
    options: RunOptions,
    seconds: float,
    group: Group,
) -> RunResult:
    """The run's result (its main epochs, the compute it used, the epoch it keeps); rank 0 writes the final
    weights and, last, ``result.json``."""
    compute, best = run.compute, state.best
    done: dict[str, Any] = {
        "compute": ComputeResult(
            **{
                **asdict(compute),
                "teacher_cache": run.cache is not None,
                "teacher_cache_build_seconds": run.cache_seconds,
                "compiled": compiled_active(run.networks) if compute.compile else False,
                "compile_fallbacks": compile_fallbacks(run.networks),
                "requested": options.compute.to_json(),
            }
        ),
        # Part of what the result is: compare marks cells that pool precisions.
        "precision": PrecisionResult(**precision.to_json()),
    }
    if best is not None:
        done["kept"] = KeptWeights(
            keep="best", epoch=best["epoch"], top1=best["top1"], file=rundir.best_model_file.name
        )
    main_epochs = [h for h in state.history if h.is_main]
    result = _summarise(spec, main_epochs, run.device, seconds, group).model_copy(update=done)
    if group.is_main:
        rundir.save_torch(rundir.model_file, run.distiller.inference_state())
        if best is not None:
            rundir.save_torch(rundir.best_model_file, best["state"])
        rundir.write_result(result)  # last: its presence means "done"
    return result


def _record_failure(rundir: RunDir, exc: Exception) -> None:
    """Write ``failed.json``: the error, the last epoch whose checkpoint is kept, and for an out-of-memory error what to
    change. A failed write of it (disk full) is logged, and the run's own error is what the caller raises."""
    message = str(exc)
    if isinstance(exc, torch.OutOfMemoryError):
        message = (
            f"out of memory on the device ({message.splitlines()[0] if message else 'no detail'}); train fewer "
            "runs at once (--runs-per-gpu 1) or free the GPU, then run the same command again: it resumes."
        )
    try:
        last_good = rundir.epochs_done()
    except KdbenchError:
        last_good = None
    try:
        atomic_write_json(
            rundir.failed_file,
            {
                "run_id": rundir.run_id,
                "error": type(exc).__name__,
                "message": message,
                "last_good_epoch": last_good,
                "time": time.time(),
            },
        )
    except WriteFailed as write_exc:
        log.error("could not record the failure of run %s: %s", rundir.run_id, write_exc)


def _check_processes(
    spec: RunSpec, method: type[methods.Distiller], group: Group, test_size: int
) -> None:
    """Raise a clear error when this run cannot be split over ``group.world`` processes as the spec needs."""
    if not group.active:
        return
    world, batch = group.world, spec.train.batch_size
    if batch % world:
        raise KdbenchError(
            f"run {spec.run_id}: batch size {batch} does not split over {world} processes; use a process "
            f"count that divides it (the global batch is held constant across process counts)."
        )
    needs = method.needs
    if not needs.splits_over_processes:
        why = (
            "keeps per-sample state (a memory bank)"
            if needs.sample_indices
            else "sizes its modules by the batch size"
        )
        raise KdbenchError(
            f"run {spec.run_id}: method {spec.method} {why}, which kdbench does not split over processes; "
            f"train it with --nproc 1."
        )
    for name, chunk in (("loss", spec.train.loss_chunk), ("BatchNorm", spec.train.bn_chunk)):
        if chunk is not None and (batch // world) % chunk:
            raise KdbenchError(
                f"run {spec.run_id}: each of {world} processes gets {batch // world} samples, which cannot be "
                f"cut into the spec's {name} chunks of {chunk} (the original per-GPU batch); use a process "
                f"count that divides {batch // chunk}."
            )
    if test_size < world:
        raise KdbenchError(
            f"run {spec.run_id}: {test_size} test images cannot be split over {world} processes."
        )


def _teacher_cache(
    spec: RunSpec,
    method: type[methods.Distiller],
    distiller: methods.Distiller,
    arrays: data.Dataset,
    results: Path,
    device: torch.device,
    compute: Compute,
    show_progress: bool,
) -> tuple[teacher_cache.TeacherCache | None, float]:
    """The teacher-output cache of this run, if its options and its method allow one.

    ``auto`` uses it when it exists already, or when building it pays for itself within this run: at
    least as many epochs (one teacher pass per image each) as views per image (162 at padding 4), as
    in the papers' 240-epoch protocol. Short smoke/ci runs then keep the live teacher; ``on`` forces it."""
    if compute.teacher_cache == "off" or not method.needs.cacheable_teacher or spec.teacher is None:
        return None, 0.0
    if not isinstance(arrays, data.ImageArrays):
        log.info(
            "teacher cache not used: %s's random resized crops are not a finite set of views",
            spec.data.name,
        )
        return None, 0.0
    assert distiller.teacher is not None
    n = len(arrays.x_train)
    key = teacher_cache.CacheKey(
        spec.teacher.run_id,
        {**spec.data.model_dump(mode="json", exclude={"test_fraction"}), "n": n},
        data.epoch_plan(n, spec.seed, 1).padding,
    )
    views = teacher_cache.views_per_image(key.padding)
    if (
        compute.teacher_cache == "auto"
        and spec.train.epochs < views
        and not teacher_cache.cache_file(results, key).is_file()
    ):
        log.info(
            "teacher cache not built: %d epochs < %d views per image, so building it costs more teacher passes than "
            "it saves (--teacher-cache on builds it anyway)",
            spec.train.epochs,
            views,
        )
        return None, 0.0
    return teacher_cache.ensure(
        distiller.teacher, arrays, key, results, device, show_progress=show_progress
    )


@dataclass
class TrainState:
    """What is finished: each stage's epochs, the metrics of every epoch, and the best epoch kept so far."""

    epochs_done: dict[str, int] = field(default_factory=lambda: {"init": 0, "main": 0})
    history: list[EpochRecord] = field(default_factory=list)
    best: dict[str, Any] | None = (
        None  # keep "best": {"epoch", "top1", "state"} of the best epoch so far
    )


def _resume(
    rundir: RunDir, distiller: methods.Distiller, run_stages: list[Stage], precision: str
) -> TrainState:
    """The checkpoint's state, loaded into ``distiller`` and the stages' optimizers; a run resumes only in the
    precision it started in (its result records one precision; a checkpoint from before precisions were recorded
    is accepted)."""
    if not rundir.checkpoint_file.is_file():
        return TrainState()
    ckpt = rundir.load_torch(
        rundir.checkpoint_file
    )  # verified: a corrupted checkpoint fails the run, never resumes it
    started = ckpt.get("precision", precision)
    if started != precision:
        raise KdbenchError(
            f"checkpoint {rundir.checkpoint_file} was trained in precision {started}, and this run asks for "
            f"{precision}: resume it with --precision {started}, or delete the checkpoint to restart in {precision}."
        )
    missing, unexpected = distiller.load_state_dict(ckpt["state"], strict=False)
    if unexpected or any(not k.startswith("teacher.") for k in missing):
        raise KdbenchError(
            f"checkpoint {rundir.checkpoint_file} does not match this run's networks; delete it to restart the run."
        )
    for stage in run_stages:
        optimizer_state = ckpt.get(CHECKPOINT_KEYS[stage.name][1])
        if optimizer_state is not None:  # "optimizer" is always there; "init_optimizer" may be None
            stage.optimizer.load_state_dict(optimizer_state)
    log.info(
        "resuming %s after epoch %d (pre-training epochs done: %d)",
        rundir.run_id,
        ckpt["epoch"],
        ckpt.get("init_epoch", 0),
    )
    return TrainState(
        {"main": ckpt["epoch"], "init": ckpt.get("init_epoch", 0)},
        [EpochRecord.from_json(h) for h in ckpt["history"]],
        ckpt.get("best"),
    )


def _train_epoch(
    step,
    distiller: methods.Distiller,
    optimizer: torch.optim.Optimizer,
    batches: Iterable,
    device: torch.device,
    epoch: int,
    bar: Progress | None,
    compute: Compute,
    teacher_views: Callable[[torch.Tensor], torch.Tensor] | None = None,
    group: Group = SINGLE,
    global_sizes: list[int] | None = None,
) -> TrainStats:
    """One pass over ``batches``: ``step(images, targets, epoch, indices, strong) -> (logits | None, terms)``.

    ``teacher_views(indices)``: the cached teacher logits of the batch's views, passed to ``step`` as
    ``teacher_logits``; the networks run under ``compute``'s autocast and memory format.
    Over several processes each rank's gradients are weighted by its share of the step's global batch
    (``global_sizes[step]``) and summed, and the epoch's statistics are summed over ranks; rank 0's
    buffers (BatchNorm running statistics) are given to every rank at the end of the epoch."""
    distiller.train()
    sums: dict[str, torch.Tensor] = {}
    correct = torch.zeros((), device=device)
    seen, steps, started = 0, 0, time.time()
    task = (
        bar.add_task(f"epoch {epoch}", total=len(batches) if isinstance(batches, Sized) else None)
        if bar
        else None
    )
    for images, targets, indices, *strong in batches:
        cached = {"teacher_logits": teacher_views(indices)} if teacher_views is not None else {}
        images = compute.images(images.to(device, non_blocking=True))
        targets = targets.to(device, non_blocking=True)
        strong_images = compute.images(strong[0].to(device, non_blocking=True)) if strong else None
        compute.step_begin()

        def forward_backward() -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
            with compute.autocast(device):
                logits, terms = step(
                    images,  # noqa: B023 - called within this iteration
                    targets,  # noqa: B023 - called within this iteration
                    epoch,
                    indices.to(device, non_blocking=True),  # noqa: B023 - called within this iteration
                    strong_images,  # noqa: B023 - called within this iteration
                    **cached,  # noqa: B023 - called within this iteration
                )
            optimizer.zero_grad(set_to_none=True)
            sum(terms.values()).backward()
            return logits, terms

        # The first compiled step proves that the lazily compiled backward works too (else: eager, recorded).
        logits, terms = first_step(
            [distiller.student, distiller.teacher], distiller, forward_backward
        )
        if group.active:
            assert global_sizes is not None
            group.average_gradients(
                (p for g in optimizer.param_groups for p in g["params"]),
                targets.numel() / global_sizes[steps],
            )
        optimizer.step()
        for name, value in terms.items():  # accumulated on the device: no host sync inside the step
            sums[name] = sums.get(name, 0) + value.detach()
        if logits is not None:
            correct += (logits.argmax(1) == targets).sum()
        seen += targets.numel()
        steps += 1
        if bar is not None and task is not None:
            bar.advance(task)
    if bar is not None and task is not None:
        bar.remove_task(task)
    if group.active:
        group.broadcast_tensors(distiller.buffers())
        group.check_identical(distiller.training_state().values(), "weights")
        totals = group.sum({**sums, "correct": correct, "seen": torch.tensor(float(seen))})
        correct, seen = totals.pop("correct"), int(totals.pop("seen"))
        sums = {k: v / group.world for k, v in totals.items()}
    losses = {k: float(v) / steps for k, v in sums.items()}
    if not all(math.isfinite(v) for v in losses.values()):
        means = {f"loss_{k}": v for k, v in losses.items()}  # as metrics.jsonl names them
        raise TrainingDiverged(
            f"loss became non-finite in epoch {epoch} ({means}); last good epoch: {epoch - 1}."
        )
    return TrainStats(
        loss=sum(losses.values()),
        losses=losses,
        train_top1=100.0 * float(correct) / max(seen, 1),
        images_per_s=seen / max(time.time() - started, 1e-9),
    )


@torch.no_grad()
def evaluate(
    distiller: methods.Distiller, batches: Iterable, device: torch.device, group: Group = SINGLE
) -> TestStats:
    """Top-1 / top-5 accuracy (%) of the method's prediction (and of each extra head) on the test set.

    Over several processes each rank evaluates its shard and the counts are summed, so the metrics equal a
    single-process evaluation."""
    distiller.eval()
    hits: dict[str, torch.Tensor] = {}
    loss_sums: dict[str, torch.Tensor] = {}
    seen = 0
    for images, targets, _ in batches:
        images, targets = (
            images.to(device, non_blocking=True),
            targets.to(device, non_blocking=True),
        )
        for head, logits in distiller.forward_test_heads(images).items():
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices == targets[:, None]
            counts = torch.stack([top[:, 0].sum(), top.any(dim=1).sum()])
            hits[head] = hits.get(head, 0) + counts
        for name, value in distiller.forward_test_terms(
            images
        ).items():  # batch means, weighted by batch size
            loss_sums[name] = loss_sums.get(name, 0) + value * targets.numel()
        seen += targets.numel()
    if group.active:
        totals = group.sum(
            {
                **{f"hits/{k}": v for k, v in hits.items()},
                **{f"loss/{k}": v for k, v in loss_sums.items()},
                "seen": torch.tensor(float(seen)),
            }
        )
        seen = int(totals.pop("seen"))
        hits = {k.removeprefix("hits/"): v for k, v in totals.items() if k.startswith("hits/")}
        loss_sums = {k.removeprefix("loss/"): v for k, v in totals.items() if k.startswith("loss/")}
    return TestStats(
        test={
            head: TopK(top1=100.0 * float(counts[0]) / seen, top5=100.0 * float(counts[1]) / seen)
            for head, counts in hits.items()
        },
        test_losses={name: float(total) / seen for name, total in loss_sums.items()},
    )


def _summarise(
    spec: RunSpec, history: list[EpochRecord], device: torch.device, seconds: float, group: Group
) -> RunResult:
    """The result of the main epochs ``history`` (the first, best by main top-1, wins a tie)."""
    best = max(history, key=lambda h: h.test_top1)
    last = history[-1]
    extra_heads = sorted(head for head in last.test if head != MAIN_HEAD)
    return RunResult(
        heads={
            head: HeadResult(
                best_top1=max(h.test[head].top1 for h in history), last_top1=last.test[head].top1
            )
            for head in extra_heads
        },
        # Test-set loss terms at the best (by main top-1) and the last epoch, e.g. SimKD's ℓ2 loss (Table 5).
        test_losses={
            name: TestLossResult(best=best.test_losses[name], last=last.test_losses[name])
            for name in sorted(last.test_losses)
        },
        run_id=spec.run_id,
        model=spec.model,
        method=spec.method,
        profile=spec.profile,
        seed=spec.seed,
        epochs=len(history),
        best_top1=best.test_top1,
        best_top5=best.test_top5,
        best_epoch=best.epoch,
        last_top1=last.test_top1,
        last_top5=last.test_top5,
        train_images_per_s=_steady_images_per_s(history),
        wall_seconds=seconds,
        device=str(device),
        device_name=device_name(device),
        # Not in the spec: results depend on it only through per-process BatchNorm statistics.
        world_size=group.world,
        kdbench_version=__version__,
        torch_version=torch.__version__,
        python=platform.python_version(),
        kdbench_commit=source_commit(),  # None unless kdbench runs from a git checkout
    )


def _steady_images_per_s(history: list[EpochRecord]) -> float:
    """Mean training images/s over the epochs after the first: epoch 1 also pays for compiling (and cold caches),
    which would make short runs look slow to the cost estimates (``kdbench show``, kdbench/cost.py). A one-epoch run keeps it."""
    steady = [h for h in history if h.epoch != 1] or history
    return sum(h.images_per_s or 0.0 for h in steady) / len(steady)


def _record_launch(rundir: RunDir, slot: str) -> None:
    """``launch.json``, read by ``kdbench status``: where the run trains, since when, from which epoch (a resume starts later)."""
    try:
        before = rundir.epochs_done()
    except KdbenchError:  # corrupted metrics.jsonl: the run rewrites it from its checkpoint
        before = 0
    atomic_write_json(
        rundir.launch_file, {"slot": slot, "started": time.time(), "epochs_before": before}
    )


@contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Within the block, kdbench's log lines also go to the run's ``train.log``."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("kdbench")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Progress | None]:
    """A rich progress bar over the steps of each epoch (None when disabled: not an interactive terminal)."""
    if not enabled:
        yield None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    )
    bar.start()
    try:
        yield bar
    finally:
        bar.stop()
