"""Training curves where researchers already look: TensorBoard (default), Weights & Biases, MLflow.

``metrics.jsonl`` stays the source of truth. :func:`recording` listens to :meth:`RunDir.write_metrics`
(called after each epoch's checkpoint) and sends every record that was not in ``metrics.jsonl`` before
to each backend, as the scalars of one step (:func:`scalars`). Curves therefore show exactly the
recorded epochs, each once: an epoch is sent only after its checkpoint is saved, so a resumed run never
redoes (or re-sends) an epoch, and an epoch checkpointed but not yet recorded when a run was killed is
sent by the next attempt. Only rank 0 records (``train/loop.py``), so a DDP run has one set of curves.

Backends are imported when a run opens them; ``kdbench train``/``reproduce`` call :func:`require` first,
so a missing extra is one error before anything trains. A backend that fails later (disk full, server
gone) is logged once and dropped: the run goes on and ``metrics.jsonl`` has every epoch.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kdbench.errors import KdbenchError
from kdbench.io import CorruptedFile
from kdbench.store.records import EpochRecord
from kdbench.store.run_dir import RunDir

if TYPE_CHECKING:
    from kdbench.plan import RunSpec

log = logging.getLogger("kdbench.curves")

DEFAULT = ("tensorboard",)
NONE = "none"  # `--log-to none`: metrics.jsonl only
MLFLOW_RUN_FILE = (
    "mlflow_run_id"  # the MLflow run this run logs to, so that a resumed attempt continues it
)
# Each backend: the module it imports, and how to install it.
MODULES = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
INSTALL = {
    "tensorboard": "pip install tensorboard (a kdbench dependency: reinstall kdbench)",
    "wandb": "pip install 'kdbench[wandb]'",
    "mlflow": "pip install 'kdbench[mlflow]'",
}


def parse(value: str) -> tuple[str, ...]:
    """The backends a ``--log-to`` value names: comma-separated, ``none`` for metrics.jsonl only."""
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if names == (NONE,):
        return ()
    unknown = [n for n in names if n not in MODULES]
    if unknown or not names:
        raise KdbenchError(
            f"--log-to {value!r}: choose one or more of {', '.join(MODULES)} (comma-separated), or "
            f"{NONE}; unknown: {', '.join(unknown) or 'nothing given'}."
        )
    return names


def flag(loggers: Sequence[str]) -> str:
    """The ``--log-to`` value that asks for ``loggers``."""
    return ",".join(loggers) or NONE


def require(loggers: Sequence[str]) -> None:
    """Import each backend now: a missing one is a KdbenchError naming what to install."""
    for name in loggers:
        _module(name)


def _module(name: str) -> Any:
    if name not in MODULES:
        raise KdbenchError(f"unknown curve logger {name!r}; choose from {', '.join(MODULES)}.")
    try:
        return importlib.import_module(MODULES[name])
    except ImportError as exc:
        raise KdbenchError(
            f"--log-to {name} needs the {MODULES[name].split('.')[-1]} package, which does not import "
            f"here ({exc}): {INSTALL[name]}, or leave {name} out of --log-to."
        ) from None


def tag(key: str) -> str:
    """The curve name of a metrics.jsonl key: ``loss`` → ``loss/total``, ``loss_kd`` → ``loss/kd``,
    ``test_top1_aux`` → ``test/top1_aux``, ``test_loss_l2`` → ``test_loss/l2``, ``lr`` → ``train/lr``."""
    if key == "loss":
        return "loss/total"
    for prefix in ("test_loss", "loss", "test", "train"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1 :]}"
    return f"train/{key}"


def scalars(record: EpochRecord) -> dict[str, float]:
    """The curve points of one metrics.jsonl record; a pre-training-stage epoch's are under ``init/``."""
    prefix = "init/" if record.phase == "init" else ""
    return {prefix + tag(k): float(v) for k, v in record.values().items()}


@dataclass(frozen=True)
class Point:
    """One record's curve points: ``step`` is its epoch; ``index`` its line in metrics.jsonl (only grows,
    for a backend with a single step axis across the pre-training stage and the main epochs)."""

    step: int
    index: int
    scalars: dict[str, float]


class Logger(Protocol):
    """A curve backend of one run."""

    name: str

    def log(self, point: Point) -> None: ...

    def close(self, failed: bool) -> None: ...


class TensorBoard:
    """Event files in ``<run>/tb/``, one per attempt; each point is flushed with its epoch."""

    name = "tensorboard"

    def __init__(self, rundir: RunDir, spec: RunSpec):
        self.writer = _module(self.name).SummaryWriter(log_dir=str(rundir.tb_dir))

    def log(self, point: Point) -> None:
        for key, value in point.scalars.items():
            self.writer.add_scalar(key, value, global_step=point.step)
        self.writer.flush()

    def close(self, failed: bool) -> None:
        self.writer.close()


class WandB:
    """A W&B run whose id is the run id, resumed by every attempt (``resume="allow"``). The project is
    ``$WANDB_PROJECT``, else ``kdbench``; entity, mode and key come from wandb's own variables."""

    name = "wandb"

    def __init__(self, rundir: RunDir, spec: RunSpec):
        self.run = _module(self.name).init(
            project=os.environ.get("WANDB_PROJECT", "kdbench"),
            id=spec.run_id,
            name=spec.run_id,
            resume="allow",
            dir=str(rundir.path),
            config=spec.model_dump(mode="json"),
        )

    def log(self, point: Point) -> None:
        self.run.log({**point.scalars, "epoch": point.step}, step=point.index)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class MLflow:
    """An MLflow run (tracking server: ``$MLFLOW_TRACKING_URI``; experiment ``$MLFLOW_EXPERIMENT_NAME``, else
    ``kdbench``) named by the run id; its MLflow id is kept in ``<run>/mlflow_run_id`` so that a resumed
    attempt logs to the same MLflow run."""

    name = "mlflow"

    def __init__(self, rundir: RunDir, spec: RunSpec):
        self.mlflow = _module(self.name)
        if not {"MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"} & os.environ.keys():
            self.mlflow.set_experiment("kdbench")
        id_file = rundir.path / MLFLOW_RUN_FILE
        if id_file.is_file():
            self.mlflow.start_run(run_id=id_file.read_text().strip())
        else:
            active = self.mlflow.start_run(
                run_name=spec.run_id,
                tags={
                    "kdbench.run_id": spec.run_id,
                    "method": spec.method,
                    "model": spec.model,
                    "profile": spec.profile,
                    "seed": str(spec.seed),
                },
            )
            id_file.write_text(active.info.run_id + "\n")

    def log(self, point: Point) -> None:
        self.mlflow.log_metrics(point.scalars, step=point.step)

    def close(self, failed: bool) -> None:
        self.mlflow.end_run(status="FAILED" if failed else "FINISHED")


BACKENDS: dict[str, Callable[[RunDir, RunSpec], Logger]] = {
    "tensorboard": TensorBoard,
    "wandb": WandB,
    "mlflow": MLflow,
}


class Curves:
    """The open backends of one attempt, fed the history each time metrics.jsonl is rewritten."""

    def __init__(self, backends: list[Logger], recorded: list[EpochRecord]):
        self.backends = backends
        self.sent = recorded  # what metrics.jsonl held: already sent by the attempt that wrote it

    def __call__(self, history: list[EpochRecord]) -> None:
        """Send the records of ``history`` past its common start with what was sent (a restart from no
        checkpoint shares none, so its new epochs replace the old ones: TensorBoard shows the latest per step)."""
        same = 0
        while same < min(len(history), len(self.sent)) and history[same] == self.sent[same]:
            same += 1
        for index in range(same, len(history)):
            record = history[index]
            point = Point(record.epoch, index, scalars(record))
            for backend in list(self.backends):
                self._guard(backend, f"epoch {point.step}", backend.log, point)
        self.sent = list(history)

    def close(self, failed: bool) -> None:
        for backend in list(self.backends):
            self._guard(backend, "closing", backend.close, failed)
        self.backends.clear()

    def _guard(self, backend: Logger, when: str, call: Callable[..., None], *args: Any) -> None:
        """Run ``call``; if it raises, log it once and drop the backend (the run and metrics.jsonl go on)."""
        try:
            call(*args)
        except Exception as exc:  # any failure of a curve backend must not fail the run
            log.warning(
                "curves to %s stopped (%s: %s: %s); the run goes on and metrics.jsonl has every epoch",
                backend.name,
                when,
                type(exc).__name__,
                exc,
            )
            if backend in self.backends:
                self.backends.remove(backend)
                # Release its files and threads; the failure was reported above, and a second
                # error of the same broken backend adds nothing.
                with contextlib.suppress(Exception):
                    backend.close(True)


def _recorded(rundir: RunDir) -> list[EpochRecord]:
    try:
        return rundir.read_metrics()
    except CorruptedFile:  # rewritten from the checkpoint by the run: its epochs are sent again
        return []


@contextmanager
def recording(rundir: RunDir, spec: RunSpec, loggers: Sequence[str]) -> Iterator[None]:
    """Within the block, every :meth:`RunDir.write_metrics` of ``rundir`` also goes to ``loggers``; call
    while holding the run's lock. A backend that fails to open is logged and left out."""
    curves = Curves([], _recorded(rundir))
    for name in loggers:
        _module(name)  # a missing package is an error (require() normally caught it before)
        try:
            curves.backends.append(BACKENDS[name](rundir, spec))
        except (
            Exception
        ) as exc:  # a backend that cannot start (no server, no login) must not stop the run
            log.warning(
                "curves to %s not recorded: it failed to start (%s: %s); the run goes on and metrics.jsonl has "
                "every epoch",
                name,
                type(exc).__name__,
                exc,
            )
    rundir.metrics_listeners.append(curves)
    failed = True
    try:
        yield
        failed = False
    finally:
        rundir.metrics_listeners.remove(curves)
        curves.close(failed)
