"""Local scheduler: run a DAG of RunSpecs on device slots.

Slots are one per GPU (``CUDA_VISIBLE_DEVICES``) times ``runs_per_gpu``, or CPU slots. A run of g
processes (``gpus_per_run``, DDP) takes g whole GPUs; placement rules are in ``execute/local/slots.py``. Teachers
run before their students; a failed run is reported and its dependents are skipped with the
reason, while every other run goes on. A run that another process is already training (its lock
is held) is waited for, not trained twice. How a run is started is a :class:`Launcher`: by
default a long-lived worker process per slot (``execute/local/worker.py``), which pays torch's import
once; :class:`ProcessPerRun` starts one ``kdbench train`` subprocess per run, as the worker launcher
does for multi-process runs (``kdbench train SPEC --nproc g``).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Literal, Protocol

from kdbench import processes
from kdbench.errors import KdbenchError
from kdbench.execute.base import WAIT, Listener, Outcome, blocker, process_count, unusable
from kdbench.execute.local.slots import Slot, SlotPool, concurrency
from kdbench.execute.local.worker import REPLY_PREFIX
from kdbench.io import atomic_write_json
from kdbench.plan import RunSpec
from kdbench.processes import EXIT_FAILED, EXIT_LOCKED, usable_cores
from kdbench.store.run_dir import RunDir
from kdbench.train.compute import CPU_MALLOC_ENV
from kdbench.train.distributed import is_rank_variable
from kdbench.train.options import RunOptions

POLL_SECONDS = 0.2
# A run waited for (its lock was held) that ends with neither result nor failure record is started here again,
# resuming from its checkpoint: the other process was stopped, or the lock was only probed (`kdbench status`).
RESTARTS_AFTER_WAIT = 3


def detect_slots(
    device: str = "auto",
    runs_per_gpu: int | Literal["auto"] = 1,
    cpu_jobs: int = 1,
    specs: Iterable[RunSpec] = (),
    teacher_cache: str = "auto",
) -> list[Slot]:
    """One slot per visible GPU × ``runs_per_gpu`` (``auto``: as many of the largest of ``specs`` as fit in
    each GPU's free memory, execute/local/packing.py, with ``teacher_cache`` the runs' --teacher-cache); without GPUs
    (or with ``--device cpu``) ``cpu_jobs`` CPU slots that share the cores, and glibc malloc settings that
    keep activation buffers mapped (README, Fast path). Each slot's CUDA_VISIBLE_DEVICES names its GPU
    as the child must see it (execute/local/gpus.py), and every slot of several gets cores / slots CPU threads
    (:func:`thread_env`). Values already in the environment win."""
    import torch

    from kdbench.execute.local.gpus import free_memory, visible_gpus

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        threads = thread_env(cpu_jobs) if cpu_jobs > 1 else {}
        malloc = {k: v for k, v in CPU_MALLOC_ENV.items() if k not in os.environ}
        return [
            Slot("cpu" if cpu_jobs == 1 else f"cpu{k}", {**malloc, **threads})
            for k in range(cpu_jobs)
        ]
    gpus = visible_gpus(torch.cuda.device_count())
    if not gpus:
        raise KdbenchError(
            f"--device {device} but no GPU is visible (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}): make GPUs visible or pass --device cpu."
        )
    if device.startswith("cuda:"):
        index = int(device.split(":", 1)[1])
        if not 0 <= index < len(gpus):
            raise KdbenchError(
                f"--device {device}: this process sees {len(gpus)} GPU(s), cuda:0 to cuda:{len(gpus) - 1}."
            )
        gpus = [gpus[index]]
    if runs_per_gpu == "auto":
        from kdbench.execute.local.packing import auto_runs_per_gpu

        specs = list(specs)
        free = free_memory(gpus)
        per_gpu = {g.label: auto_runs_per_gpu(specs, free[g.label], teacher_cache) for g in gpus}
    else:
        per_gpu = {g.label: runs_per_gpu for g in gpus}
    threads = thread_env(sum(per_gpu.values()))
    return [
        Slot(
            g.name + (f".{k}" if per_gpu[g.label] > 1 else ""),
            {"CUDA_VISIBLE_DEVICES": g.label, **threads},
        )
        for g in gpus
        for k in range(per_gpu[g.label])
    ]


# The thread pools a training process sizes from the environment: OpenMP and MKL (torch's intra-op threads
# follow OMP_NUM_THREADS at start) and Inductor's compile workers (else min(32, cores) each).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCHINDUCTOR_COMPILE_THREADS")


def thread_env(slots: int) -> dict[str, str]:
    """Each of ``slots`` concurrent runs gets usable cores / slots threads (at least 1), so that 8 runs packed on
    a GPU do not each start a pool per core; a variable the user set is left as it is."""
    threads = str(max(1, usable_cores() // max(1, slots)))
    return {k: threads for k in THREAD_VARIABLES if k not in os.environ}


def child_environment(slot: Slot, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment a slot's process starts with: this one's without the rank variables of an enclosing
    srun/sbatch step or torchrun job (``distributed.RANK_VARIABLES``: a child that inherited them would join a
    process group that never forms and wait KDBENCH_DIST_TIMEOUT), plus the slot's own variables."""
    return {**{k: v for k, v in environ.items() if not is_rank_variable(k)}, **slot.env}


def slot_device(slot: Slot) -> str:
    return "cpu" if slot.name.startswith("cpu") else "cuda"


def train_command(
    spec_file: Path, results: Path, slot: Slot, options: RunOptions | None = None
) -> list[str]:
    """The command an executor runs for one spec: ``python -m kdbench train SPEC`` with ``options`` on the slot's
    device (``--nproc g`` on a slot of g units)."""
    options = (options or RunOptions()).replace(device=slot_device(slot), slot=slot.name)
    command = options.train_command(spec_file, results)
    return command + (["--nproc", str(slot.nproc)] if slot.nproc > 1 else [])


Command = Callable[[Path, Path, Slot], list[str]]


class Handle(Protocol):
    def poll(self) -> int | None:
        """The run's exit code once it has finished, else None."""


class Launcher(Protocol):
    def start(self, spec_file: Path, results: Path, slot: Slot) -> Handle: ...

    def close(self) -> None: ...


class ProcessPerRun:
    """One subprocess per run, from ``command`` (default: ``python -m kdbench train SPEC``)."""

    def __init__(self, command: Command = train_command):
        self.command = command
        self.started: list[subprocess.Popen] = []

    def start(self, spec_file: Path, results: Path, slot: Slot) -> subprocess.Popen:
        with open(spec_file.parent / "executor.log", "ab") as log:
            proc = processes.spawn(
                self.command(spec_file, results, slot),
                child_environment(slot),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.started.append(proc)
        return proc

    def close(self) -> None:
        """Stop the runs still training (the table was interrupted); finished ones have exited."""
        for proc in self.started:
            processes.stop(proc)
        self.started.clear()


class _Worker:
    """A ``kdbench worker`` process and a thread that collects its replies."""

    def __init__(self, slot: Slot, log_path: Path):
        self.slot = slot
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.proc = processes.spawn(
                [sys.executable, "-m", "kdbench", "worker"],
                child_environment(slot),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        self.log_path = log_path
        self.busy = False  # a run sent and not yet answered
        self.replies: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if line.startswith(REPLY_PREFIX):
                self.replies.put(json.loads(line[len(REPLY_PREFIX) :]))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, request: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        self.busy = True


class _WorkerRun:
    """One run sent to a worker; its code is the worker's reply, or the worker's exit if it died."""

    def __init__(self, worker: _Worker):
        self.worker = worker
        self.code: int | None = None

    def poll(self) -> int | None:
        if self.code is None:
            try:
                self.code = int(self.worker.replies.get_nowait()["code"])
            except queue.Empty:
                if not self.worker.alive():
                    self.code = self.worker.proc.returncode or EXIT_FAILED
            self.worker.busy = self.code is None
        return self.code


class SlotWorkers:
    """A long-lived worker process per slot, restarted if it dies. A multi-process run gets its own
    ``kdbench train --nproc g`` process; the idle workers of its units are stopped first, so that no
    CUDA context or cached memory of theirs stays on those GPUs."""

    def __init__(self, options: RunOptions | None = None):
        self.options = options or RunOptions()
        self.workers: dict[str, _Worker] = {}
        self.per_run = ProcessPerRun(partial(train_command, options=self.options))

    def start(self, spec_file: Path, results: Path, slot: Slot) -> Handle:
        if slot.nproc > 1:
            self._stop([name for name, w in self.workers.items() if w.slot.unit in slot.units])
            return self.per_run.start(spec_file, results, slot)
        worker = self.workers.get(slot.name)
        if worker is None or not worker.alive():
            worker = self.workers[slot.name] = _Worker(
                slot, Path(results) / "workers" / f"{slot.name}.log"
            )
        options = self.options.replace(device=slot_device(slot), slot=slot.name)
        worker.send(
            {"spec_file": str(spec_file), "results": str(results), "options": options.to_json()}
        )
        return _WorkerRun(worker)

    def close(self) -> None:
        """End every worker (a busy one only when the table was interrupted) and any multi-process run."""
        self._stop(list(self.workers))
        self.per_run.close()

    def _stop(self, names: list[str]) -> None:
        """End the workers ``names``: an idle one exits at the end of its requests, a busy one is stopped."""
        stopping = [self.workers.pop(name) for name in names]
        for worker in stopping:
            if worker.busy:  # still training: the table was interrupted
                processes.stop(worker.proc)
            elif worker.alive() and worker.proc.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    worker.proc.stdin.close()  # end of requests: the worker exits
        for worker in stopping:
            try:
                worker.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                processes.stop(worker.proc)


@dataclass(frozen=True)
class LocalOptions:
    """The local executor's own options (``kdbench reproduce``'s "Local executor" flags, and --gpus-per-run)."""

    runs_per_gpu: int | Literal["auto"] = "auto"  # auto: as many as fit (execute/local/packing.py)
    cpu_jobs: int = 1  # without GPUs: runs at once, sharing the cores
    gpus_per_run: int = 1  # DDP processes per run; each takes whole GPUs (or CPU slots)


class LocalExecutor:
    """Runs specs in dependency order on a fixed set of slots; each trained run takes ``gpus_per_run`` units."""

    interrupted = "the runs in progress were stopped; each resumes from its last checkpointed epoch"

    def __init__(
        self,
        slots: Sequence[Slot],
        launcher: Launcher | None = None,
        listener: Listener | None = None,
        gpus_per_run: int = 1,
    ):
        if not slots:
            raise ValueError("at least one slot is needed")
        self.slots = list(slots)
        self.launcher = launcher if launcher is not None else SlotWorkers()
        self.listener = listener or (lambda event, spec, message: None)
        self.gpus_per_run = gpus_per_run

    @property
    def parallel(self) -> int:
        """Runs of ``gpus_per_run`` processes the slots train at once."""
        return concurrency(self.slots, self.gpus_per_run)

    def execute(self, specs: Sequence[RunSpec], results: Path) -> dict[str, Outcome]:
        try:
            return self._execute(specs, Path(results))
        finally:
            self.launcher.close()

    def _execute(self, specs: Sequence[RunSpec], results: Path) -> dict[str, Outcome]:
        pool = SlotPool(self.slots)
        for nproc in sorted({process_count(s, self.gpus_per_run) for s in specs}):
            pool.check(
                nproc
            )  # before anything starts: a run that can never be placed would wait forever
        by_id = {s.run_id: s for s in specs}
        order = {run_id: k for k, run_id in enumerate(by_id)}
        restarts = dict.fromkeys(by_id, 0)
        outcomes: dict[str, Outcome] = {}
        pending = list(specs)
        running: dict[str, tuple[Handle | None, Slot]] = {}  # None: trained by another process
        while pending or running:
            for run_id, (handle, slot) in list(running.items()):
                if (
                    handle is not None and handle.poll() == EXIT_LOCKED
                ):  # lost a race to another process: wait for it
                    running[run_id] = (None, Slot("elsewhere"))
                    pool.release(slot)
                    self.listener("waiting", by_id[run_id], "being trained by another process")
                    continue
                outcome = self._poll(by_id[run_id], handle, results)
                if outcome is not None:
                    del running[run_id]
                    if handle is not None:
                        pool.release(slot)
                    elif (
                        outcome.status == "failed"
                        and not RunDir(results, run_id).failed_file.is_file()
                        and restarts[run_id] < RESTARTS_AFTER_WAIT
                    ):
                        restarts[run_id] += 1
                        pending = sorted([*pending, by_id[run_id]], key=lambda s: order[s.run_id])
                        self.listener(
                            "pending",
                            by_id[run_id],
                            "the other process stopped without a result: training it here",
                        )
                        continue
                    outcomes[run_id] = outcome
                    self.listener(outcome.status, by_id[run_id], outcome.message)
            ready = []
            for spec in list(pending):
                blocked = blocker(spec, outcomes, by_id)
                if blocked == WAIT:
                    continue
                rundir = RunDir(results, spec.run_id)
                if blocked:
                    outcomes[spec.run_id] = Outcome(spec.run_id, "skipped", blocked)
                    self.listener("skipped", spec, blocked)
                elif rundir.is_done() and (corrupted := unusable(rundir)):
                    outcomes[spec.run_id] = Outcome(spec.run_id, "failed", corrupted)
                    self.listener("failed", spec, corrupted)
                elif rundir.is_done():
                    outcomes[spec.run_id] = Outcome(
                        spec.run_id, "done", "already finished", reused=True
                    )
                    self.listener(
                        "reused", spec, rundir.unverified()
                    )  # '' unless its files have no checksum
                elif rundir.is_locked():
                    running[spec.run_id] = (None, Slot("elsewhere"))
                    self.listener("waiting", spec, "being trained by another process")
                else:
                    ready.append(spec)  # needs a slot: placed below, in this order
                    continue
                pending.remove(spec)
            for spec, slot in pool.assign(
                [(s, process_count(s, self.gpus_per_run)) for s in ready]
            ):
                running[spec.run_id] = (
                    self._launch(spec, RunDir(results, spec.run_id), results, slot),
                    slot,
                )
                pending.remove(spec)
                self.listener("started", spec, slot.name)
            if running:
                time.sleep(POLL_SECONDS)
        return outcomes

    def _launch(self, spec: RunSpec, rundir: RunDir, results: Path, slot: Slot) -> Handle:
        rundir.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(rundir.spec_file, spec.model_dump(mode="json"))
        return self.launcher.start(
            rundir.spec_file, results, slot
        )  # the trainer records launch.json under the lock

    @staticmethod
    def _poll(spec: RunSpec, handle: Handle | None, results: Path) -> Outcome | None:
        rundir = RunDir(results, spec.run_id)
        code = None
        if handle is None:  # another process holds the lock: wait for it to let go
            if rundir.is_locked():
                return None
        else:
            code = handle.poll()
            if code is None:
                return None
        if rundir.is_done():
            return Outcome(spec.run_id, "done")
        return Outcome(spec.run_id, "failed", _failure_message(rundir, code))


def _failure_message(rundir: RunDir, code: int | None) -> str:
    if rundir.failed_file.is_file():
        try:
            failure = rundir.failure()
            return f"{failure['error']}: {failure['message']} (log: {rundir.log_file})"
        except Exception:
            pass
    reason = (
        f"exit code {code}" if code is not None else "the other process stopped without a result"
    )
    log = rundir.path / "executor.log"
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
    return f"{reason}{': ' + tail[0] if tail else ''} (log: {log})"
