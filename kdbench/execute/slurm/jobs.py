"""What runs inside a SLURM job: one run's training, or the table's aggregate.

These callables are pickled by submitit and unpickled in the job, so they hold only plain data
(paths, and the run options as :meth:`~kdbench.train.options.RunOptions.to_json` wrote them) and import kdbench's heavy modules when called. :class:`TrainJob` is
checkpointable: on preemption or timeout submitit calls :meth:`TrainJob.checkpoint`, requeues the
job with the returned submission, and the requeued job resumes from the run's own checkpoint
(``results/runs/<run-id>/checkpoint.pt``; ``train.run`` resumes from it), so no state is pickled.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdbench.errors import KdbenchError
from kdbench.store.records import RunResult
from kdbench.store.run_dir import RunDir, RunLocked

if TYPE_CHECKING:
    from kdbench.train.options import RunOptions

LOCK_POLL_SECONDS = 5.0


@dataclass(frozen=True)
class TrainJob:
    """Train a run of ``results`` (its spec.json is written before submission) on ``nproc`` GPUs.

    The run id is the call's argument, so one TrainJob serves every task of a job array."""

    results: str
    nproc: int = 1
    options: dict[str, Any] = field(default_factory=dict)  # RunOptions.to_json(): how it trains

    def __call__(self, run_id: str) -> RunResult:
        rundir = RunDir(Path(self.results), run_id)
        while True:
            try:
                return self._train(rundir)
            except (
                RunLocked
            ):  # another job or process trains this run: wait for it, then reuse or resume
                while rundir.is_locked():
                    time.sleep(LOCK_POLL_SECONDS)

    def checkpoint(self, run_id: str) -> Any:
        """Requeue the same call: the run resumes from its checkpoint (submitit's preemption protocol)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, run_id)

    def _train(self, rundir: RunDir) -> RunResult:
        from kdbench import train
        from kdbench.train.options import RunOptions

        options = RunOptions.from_json(self.options)
        if self.nproc > 1:
            return ddp_train(rundir.spec_file, Path(self.results), self.nproc, options)
        spec = train.load_spec(str(rundir.spec_file), Path(self.results))
        return train.run(spec, Path(self.results), options, show_progress=False)


def ddp_train(spec_file: Path, results: Path, nproc: int, options: RunOptions) -> RunResult:
    """One run as ``nproc`` DDP processes: ``kdbench train SPEC --nproc N`` (the agreed multi-GPU entry point)."""
    from kdbench.processes import EXIT_LOCKED

    device = (
        "cpu" if options.device == "cpu" else "cuda"
    )  # the job's own GPUs (SLURM sets the visible ones)
    command = options.replace(device=device, slot=device).train_command(spec_file, results)
    command += ["--nproc", str(nproc)]
    code = subprocess.run(command, check=False).returncode
    if code == EXIT_LOCKED:
        raise RunLocked(f"run {spec_file.parent.name} is being trained by another process.")
    rundir = RunDir(results, spec_file.parent.name)
    if code != 0 or not rundir.is_done():
        raise KdbenchError(
            f"`{' '.join(command)}` exited {code} without a result (log: {rundir.log_file})."
        )
    return rundir.result()


@dataclass(frozen=True)
class AggregateJob:
    """After every run of a table: write its comparison beside the table record, as Markdown and CSV."""

    results: str
    recipe: str  # the recipe's name
    profile: str

    def __call__(self) -> list[str]:
        from kdbench.io import atomic_write_bytes
        from kdbench.results import render
        from kdbench.results.compare import compare
        from kdbench.store.run_dir import tables_dir

        tables = [
            c
            for c in compare(Path(self.results))
            if c.recipe.name == self.recipe and c.profile == self.profile
        ]
        if not tables:
            raise KdbenchError(
                f"no table record {self.recipe}--{self.profile}.json under {tables_dir(Path(self.results))}."
            )
        written = []
        for suffix, text in (
            (".md", "\n".join(render.to_markdown(c) for c in tables)),
            (".csv", render.to_csv(tables)),
        ):
            path = self.outputs(suffix)
            atomic_write_bytes(path, text.encode())
            written.append(str(path))
        return written

    def outputs(self, suffix: str) -> Path:
        from kdbench.store.run_dir import tables_dir

        return tables_dir(Path(self.results)) / f"{self.recipe}--{self.profile}{suffix}"
