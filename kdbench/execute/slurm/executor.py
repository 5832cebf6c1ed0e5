"""SLURM executor: submit a plan's whole DAG up front through submitit, then wait for it.

Mapping (docs/references.md §Cluster and multi-process notes): a run is one job; the trials of one cell (runs that differ only
in their seed, so they share their dependencies) are one job array (``map_array``) limited to
``array_parallelism`` tasks at a time. A job depends ``afterok`` on the jobs of its teacher and of
the run it starts from, with ``kill-on-invalid-dep=yes`` so that SLURM cancels it when one of those
fails. An aggregate job (:class:`~kdbench.execute.slurm.jobs.AggregateJob`) depends ``afterok`` on
every job. Runs that are already done (``result.json``) are not submitted. Paths are fixed by run
id (``results/runs/<run-id>``), so a job needs nothing from its dependencies but their files; the
submitit folder is ``results/slurm/`` (it must be on the filesystem the nodes share).

Submitting again (after ``--no-wait``, a wait timeout, or a lost login shell) re-attaches: every job
id is recorded per run in ``results/slurm/jobs.json``, and a run whose recorded job is still queued
or running is followed, not submitted a second time (its dependents wait ``afterok`` on that job).
Submissions to one results directory are serialised by a lock on ``results/slurm/.submit.lock``.

Waiting trusts ``result.json`` and asks ``squeue`` which jobs are still queued or running (not
submitit's ``result()``, which never returns on clusters without accounting, §1.5). A run whose job
left the queue without a result is skipped if a dependency did not finish, else failed with its
``failed.json``, its SLURM state (``sacct``, when accounting is on) and the job's log. The outcomes
have the local executor's shape, so ``reproduce`` reports both alike.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kdbench.errors import KdbenchError
from kdbench.execute.base import Listener, Outcome, blocker, process_count, unusable
from kdbench.execute.slurm.jobs import AggregateJob, TrainJob
from kdbench.io import atomic_write_json, file_lock, read_json
from kdbench.plan import RunSpec
from kdbench.store.run_dir import RunDir
from kdbench.train.options import RunOptions

SUBMITIT_HINT = "pip install 'kdbench[slurm]'"
# squeue reason of a job whose dependency failed, on clusters that ignore kill-on-invalid-dep
NEVER_SATISFIED = "DependencyNeverSatisfied"
JOBS_FILE = (
    "jobs.json"  # under the submitit folder: run id -> the SLURM job id last submitted for it
)


@dataclass(frozen=True)
class SlurmOptions:
    """Cluster resources of every job (``kdbench reproduce --executor slurm`` flags)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 240
    constraint: str | None = None
    setup: tuple[str, ...] = ()  # shell lines before the job's command (e.g. module load)
    gpus_per_run: int = 1
    cpus_per_run: int | None = None
    mem_gb: float | None = None
    array_parallelism: int = 256
    max_timeouts: int = (
        20  # requeues after hitting the time limit (each resumes from the checkpoint)
    )

    def parameters(self) -> dict[str, Any]:
        """submitit ``update_parameters`` keywords shared by all jobs: one node, one task (DDP runs inside it)."""
        params: dict[str, Any] = {
            "timeout_min": self.time_min,
            "nodes": 1,
            "tasks_per_node": 1,
            "slurm_setup": list(self.setup),
        }
        if self.gpus_per_run:
            params["gpus_per_node"] = self.gpus_per_run
        optional = {
            "slurm_partition": self.partition,
            "slurm_account": self.account,
            "slurm_qos": self.qos,
            "slurm_constraint": self.constraint,
            "cpus_per_task": self.cpus_per_run,
            "mem_gb": self.mem_gb,
        }
        return params | {k: v for k, v in optional.items() if v is not None}


class JobLike(Protocol):
    """A submitted job: a submitit Job, or a :class:`SubmittedJob` still queued from an earlier run."""

    @property
    def job_id(self) -> str: ...


@dataclass(frozen=True)
class SubmittedJob:
    """A job submitted by an earlier ``reproduce`` that is still in the queue."""

    job_id: str


class SubmititExecutor(Protocol):
    """The part of ``submitit.AutoExecutor`` this module uses (tests pass a fake)."""

    def update_parameters(self, **kwargs: Any) -> None: ...

    def submit(self, fn: Callable[..., Any], *args: Any) -> JobLike: ...

    def map_array(self, fn: Callable[..., Any], *iterables: Sequence[Any]) -> Sequence[JobLike]: ...


def check_slurm() -> None:
    """A clear error when ``sbatch`` or submitit is missing."""
    if shutil.which("sbatch") is None:
        raise KdbenchError(
            "--executor slurm: `sbatch` is not on PATH. Run kdbench on a SLURM login node "
            "(or use --executor local)."
        )
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise KdbenchError(f"--executor slurm needs submitit: {SUBMITIT_HINT}.") from None


def submitit_executor(folder: Path, options: SlurmOptions) -> SubmititExecutor:
    """submitit's SLURM executor writing under ``folder`` (job folders ``<job id>/``)."""
    check_slurm()
    import submitit

    return submitit.AutoExecutor(
        folder=folder / "%j", cluster="slurm", slurm_max_num_timeout=options.max_timeouts
    )


def array_groups(specs: Sequence[RunSpec]) -> list[list[RunSpec]]:
    """Runs in submission order, grouped: runs equal but for the seed (a cell's trials) form one array.

    Runs that start from another run (``init_from``) differ per seed in that reference, so each is its
    own job, depending exactly on its own predecessor."""
    groups: dict[str, list[RunSpec]] = {}
    for spec in specs:
        key = json.dumps(spec.model_dump(mode="json", exclude={"seed"}), sort_keys=True)
        groups.setdefault(key, []).append(spec)
    return list(groups.values())


@dataclass
class Submission:
    """What was submitted: a job per run (array tasks are ``<array>_<index>``), runs reused, the aggregate.

    ``jobs`` also holds the runs in ``attached``: their jobs were submitted earlier and are still queued."""

    folder: Path
    specs: list[RunSpec]
    jobs: dict[str, JobLike] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    attached: list[str] = field(default_factory=list)
    aggregate: JobLike | None = None

    def job_ids(self) -> list[str]:
        return [job.job_id for job in self.jobs.values()] + (
            [self.aggregate.job_id] if self.aggregate else []
        )


QueueQuery = Callable[[list[str]], dict[str, tuple[str, str]]]
StateQuery = Callable[[list[str]], dict[str, str]]


def squeue(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """(state, reason) of each of ``job_ids`` still known to squeue (array tasks one by one)."""
    if not job_ids:
        return {}
    masters = sorted({j.split("_")[0] for j in job_ids})
    out = _slurm_command(["squeue", "-h", "-r", "-o", "%i|%T|%r", "--jobs", ",".join(masters)])
    if out is None:
        raise KdbenchError("squeue failed or timed out: is the SLURM controller reachable?")
    states = {}
    for line in out.splitlines():
        job_id, state, reason = (line.split("|") + ["", ""])[:3]
        states[job_id.strip()] = (state.strip(), reason.strip())
    return states


def sacct(job_ids: list[str]) -> dict[str, str]:
    """Final SLURM state of each job (e.g. ``CANCELLED``, ``FAILED``); empty without accounting."""
    out = (
        _slurm_command(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)])
        if job_ids
        else None
    )
    return dict(line.split("|", 1) for line in (out or "").splitlines() if "|" in line)


def _slurm_command(command: list[str], timeout: float = 60.0) -> str | None:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def scancel(job_ids: list[str]) -> None:
    if job_ids:
        _slurm_command(["scancel", *job_ids])


class SlurmExecutor:
    """Runs a DAG of specs as SLURM jobs (see the module doc)."""

    interrupted = "the SLURM jobs go on; the same command follows them again"

    def __init__(
        self,
        options: SlurmOptions,
        run_options: RunOptions | None = None,
        *,
        listener: Listener | None = None,
        aggregate: tuple[str, str] | None = None,
        make_executor: Callable[[Path, SlurmOptions], SubmititExecutor] = submitit_executor,
        queue: QueueQuery = squeue,
        states: StateQuery = sacct,
        cancel: Callable[[list[str]], None] = scancel,
        poll_seconds: float = 5.0,
        vanish_grace_s: float = 30.0,
        timeout_s: float | None = None,
        on_submitted: Callable[[Submission], None] | None = None,
    ):
        if make_executor is submitit_executor:
            check_slurm()  # before anything is recorded or submitted
        self.options, self.run_options = options, run_options or RunOptions()
        self.listener = listener or (lambda event, spec, message: None)
        self.aggregate = aggregate  # (recipe name, profile): submit an AggregateJob after the runs
        self.make_executor, self.queue, self.states, self.cancel = (
            make_executor,
            queue,
            states,
            cancel,
        )
        self.poll_seconds, self.vanish_grace_s, self.timeout_s = (
            poll_seconds,
            vanish_grace_s,
            timeout_s,
        )
        self.on_submitted = on_submitted or (lambda submission: None)

    @property
    def parallel(self) -> int:
        """The cluster decides; the ETA assumes a cell's array runs this many tasks at once."""
        return self.options.array_parallelism

    def execute(self, specs: Sequence[RunSpec], results: Path) -> dict[str, Outcome]:
        submission = self.submit(specs, results)
        self.on_submitted(submission)
        return self.wait(submission, results)

    def submit(self, specs: Sequence[RunSpec], results: Path) -> Submission:
        """Submit every run that is not done and has no job queued yet, in dependency order, and the aggregate job."""
        results = Path(results)
        folder = results / "slurm"
        with file_lock(
            folder / ".submit.lock"
        ):  # two submissions at once would both see no queued job
            submission = self._submit(specs, results, folder)
            _record_jobs(folder, {run_id: job.job_id for run_id, job in submission.jobs.items()})
        return submission

    def _submit(self, specs: Sequence[RunSpec], results: Path, folder: Path) -> Submission:
        submission = Submission(folder, list(specs))
        todo = []
        for spec in specs:
            rundir = RunDir(results, spec.run_id)
            # A corrupted or mismatched finished run is submitted again: its job fails with the repair command.
            if rundir.is_done() and not unusable(rundir):
                submission.reused.append(spec.run_id)
            else:
                todo.append(spec)
        queued = self._queued_jobs(todo, folder)
        for spec in todo:
            if spec.run_id in queued:
                submission.jobs[spec.run_id] = SubmittedJob(queued[spec.run_id])
                submission.attached.append(spec.run_id)
                self.listener(
                    "waiting", spec, f"SLURM job {queued[spec.run_id]} (submitted earlier)"
                )
        todo = [spec for spec in todo if spec.run_id not in queued]
        groups = array_groups(todo)
        _check_order(groups, submission, results)
        if not todo and self.aggregate is None:
            return submission
        executor = self.make_executor(folder, self.options)
        nproc = max(1, self.options.gpus_per_run)
        for group in groups:
            for spec in group:
                rundir = RunDir(results, spec.run_id)
                rundir.path.mkdir(parents=True, exist_ok=True)
                atomic_write_json(rundir.spec_file, spec.model_dump(mode="json"))
            deps = sorted(  # the others are finished (_check_order)
                {
                    submission.jobs[d].job_id
                    for s in group
                    for d in s.dependencies
                    if d in submission.jobs
                }
            )
            ranks = process_count(
                group[0], nproc
            )  # 1 for imported teachers and methods that cannot be split
            job = TrainJob(str(results), ranks, self.run_options.to_json())
            self._parameters(
                executor,
                deps,
                name=f"kdbench-{group[0].run_id}"
                if len(group) == 1
                else f"kdbench-{group[0].method}-{group[0].model}-x{len(group)}",
                array=len(group),
                gpus=ranks if self.options.gpus_per_run else 0,
            )
            jobs = (
                [executor.submit(job, group[0].run_id)]
                if len(group) == 1
                else executor.map_array(job, [s.run_id for s in group])
            )
            for spec, submitted in zip(group, jobs):
                submission.jobs[spec.run_id] = submitted
                self.listener("waiting", spec, f"SLURM job {submitted.job_id}")
        if self.aggregate is not None:
            recipe, profile = self.aggregate
            after = sorted({job.job_id.split("_")[0] for job in submission.jobs.values()})
            aggregator = self.make_executor(
                folder, self.options
            )  # a fresh executor: parameters persist, and it needs no GPU
            self._parameters(aggregator, after, name=f"kdbench-aggregate-{recipe}", array=1, gpus=0)
            submission.aggregate = aggregator.submit(AggregateJob(str(results), recipe, profile))
        return submission

    def _queued_jobs(self, specs: Sequence[RunSpec], folder: Path) -> dict[str, str]:
        """Run id -> job id of the runs whose recorded job is still queued or running (see the module doc).

        A recorded job that SLURM keeps pending forever (a dependency failed) is cancelled and not followed."""
        recorded = _recorded_jobs(folder)
        candidates = {s.run_id: recorded[s.run_id] for s in specs if s.run_id in recorded}
        if not candidates:
            return {}
        states = self.queue(sorted(set(candidates.values())))
        dead = sorted(
            {
                job
                for job in candidates.values()
                if job in states and states[job][1] == NEVER_SATISFIED
            }
        )
        self.cancel(dead)
        return {
            run_id: job for run_id, job in candidates.items() if job in states and job not in dead
        }

    def _parameters(
        self,
        executor: SubmititExecutor,
        after: list[str],
        *,
        name: str,
        array: int,
        gpus: int | None = None,
    ) -> None:
        dependency = (
            {"dependency": "afterok:" + ":".join(after), "kill-on-invalid-dep": "yes"}
            if after
            else {}
        )
        params = self.options.parameters()
        if gpus == 0:
            params.pop("gpus_per_node", None)
        elif gpus is not None:
            params["gpus_per_node"] = gpus
        executor.update_parameters(
            **params,
            name=name,
            slurm_additional_parameters=dependency,
            slurm_array_parallelism=min(array, self.options.array_parallelism),
        )

    def wait(self, submission: Submission, results: Path) -> dict[str, Outcome]:
        """Poll until every submitted run has an outcome (and the aggregate job has ended)."""
        results = Path(results)
        outcomes: dict[str, Outcome] = {}
        by_id = {s.run_id: s for s in submission.specs}
        for run_id in submission.reused:
            outcomes[run_id] = Outcome(run_id, "done", "already finished", reused=True)
            self.listener("reused", by_id[run_id], "")
        gone_since: dict[str, float] = {}
        started = time.monotonic()
        while True:
            pending = [s for s in submission.specs if s.run_id not in outcomes]
            ids = [submission.jobs[s.run_id].job_id for s in pending]
            aggregate = [submission.aggregate.job_id] if submission.aggregate is not None else []
            queued = self.queue(ids + aggregate)
            for (
                spec
            ) in pending:  # in dependency order: a teacher's outcome is known before its students'
                outcome = self._outcome(
                    spec, submission.jobs[spec.run_id].job_id, queued, outcomes, gone_since, results
                )
                if outcome is not None:
                    outcomes[spec.run_id] = outcome
                    self.listener(outcome.status, spec, outcome.message)
            if len(outcomes) == len(submission.specs) and not (
                aggregate and aggregate[0] in queued
            ):
                return outcomes
            if self.timeout_s is not None and time.monotonic() - started > self.timeout_s:
                raise KdbenchError(
                    f"waited {self.timeout_s:.0f} s; SLURM jobs {', '.join(sorted(queued))} are still queued or "
                    f"running and go on without this process. Later: kdbench compare {results} "
                    f"(re-running reproduce reuses every finished run and follows the queued jobs)."
                )
            time.sleep(self.poll_seconds)

    def _outcome(
        self,
        spec: RunSpec,
        job_id: str,
        queued: dict[str, tuple[str, str]],
        outcomes: dict[str, Outcome],
        gone_since: dict[str, float],
        results: Path,
    ) -> Outcome | None:
        rundir = RunDir(results, spec.run_id)
        if rundir.is_done():
            return Outcome(spec.run_id, "done")
        blocked = blocker(spec, outcomes)
        if job_id in queued:
            state, reason = queued[job_id]
            if blocked and reason == NEVER_SATISFIED:  # a cluster that ignores kill-on-invalid-dep
                self.cancel([job_id])
                return Outcome(spec.run_id, "skipped", f"{blocked} (SLURM job {job_id} cancelled)")
            return None
        if blocked:
            return Outcome(
                spec.run_id,
                "skipped",
                f"{blocked} (SLURM job {job_id} {self._state(job_id) or 'ended'})",
            )
        if rundir.is_failed():
            return Outcome(
                spec.run_id, "failed", _failure(rundir, job_id, self._state(job_id), results)
            )
        # Left the queue without a result: give the shared filesystem time to show the result file.
        first = gone_since.setdefault(spec.run_id, time.monotonic())
        if time.monotonic() - first < self.vanish_grace_s:
            return None
        state = self._state(job_id)
        return Outcome(
            spec.run_id,
            "failed",
            f"SLURM job {job_id} ended ({state or 'state unknown: no accounting'}) "
            f"without a result; {_log_hint(job_id, results)}",
        )

    def _state(self, job_id: str) -> str:
        return self.states([job_id]).get(job_id, "")


def _recorded_jobs(folder: Path) -> dict[str, str]:
    """``jobs.json``: the job id last submitted for each run (empty before the first submission)."""
    path = folder / JOBS_FILE
    if not path.is_file():
        return {}
    try:
        return dict(read_json(path))
    except KdbenchError:  # unreadable: forget it; at worst a queued run is submitted again and its job waits on the lock
        return {}


def _record_jobs(folder: Path, jobs: dict[str, str]) -> None:
    if jobs:
        atomic_write_json(folder / JOBS_FILE, _recorded_jobs(folder) | jobs)


def _check_order(groups: list[list[RunSpec]], submission: Submission, results: Path) -> None:
    """Refuse, before anything is submitted, a run whose dependency is neither finished nor submitted (or
    queued) before it: its job would start without waiting for that run."""
    before = set(submission.jobs) | set(submission.reused)
    for group in groups:
        for spec in group:
            for dep in spec.dependencies:
                if dep not in before and not RunDir(results, dep).is_done():
                    raise KdbenchError(
                        f"run {spec.run_id} depends on run {dep}, which is neither finished nor "
                        "submitted before it: pass the runs in dependency order (Plan.ordered()), "
                        "every dependency included."
                    )
        before.update(s.run_id for s in group)


def _failure(rundir: RunDir, job_id: str, state: str, results: Path) -> str:
    try:
        failure = rundir.failure()
        reason = f"{failure['error']}: {failure['message']}"
    except KdbenchError as exc:
        reason = str(exc)
    return f"{reason} (SLURM job {job_id}{' ' + state if state else ''}; log: {rundir.log_file}; {_log_hint(job_id, results)})"


def _log_hint(job_id: str, results: Path) -> str:
    return f"job output: {results / 'slurm' / job_id}/"
