"""Local executor on fake GPU slots: dependency order, parallel slots, failure isolation, reuse, locks."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from kdbench.execute.local.executor import LocalExecutor, ProcessPerRun, Slot
from kdbench.plan import DataSpec, RunSpec, TeacherRef, TrainSpec
from kdbench.store.run_dir import RunDir

from planted import finished

# A stand-in for `kdbench train`: records when and where it ran, fails for models named "fail*".
FAKE_TRAIN = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    spec_file, results, slot = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    spec = json.loads(spec_file.read_text())
    run = spec_file.parent
    start = time.time()
    time.sleep(0.3)
    (run / "trace.json").write_text(json.dumps({"start": start, "end": time.time(), "slot": slot,
                                                 "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}))
    if spec["model"].startswith("fail"):
        sys.exit(3)
    numbers = {"epochs": 1, "best_top1": 1.0, "best_top5": 1.0, "best_epoch": 1, "last_top1": 1.0}
    (run / "result.json").write_text(json.dumps({**numbers, "last_top5": 1.0}))
""")


def fake_command(spec_file: Path, results: Path, slot: Slot) -> list[str]:
    return [sys.executable, "-c", FAKE_TRAIN, str(spec_file), str(results), slot.name]


def spec(model: str, seed: int = 0, teacher: RunSpec | None = None) -> RunSpec:
    return RunSpec(
        profile="smoke",
        model=model,
        method="kd" if teacher else "ce",
        method_params={},
        teacher=TeacherRef(model=teacher.model, run_id=teacher.run_id) if teacher else None,
        data=DataSpec(name="synthetic"),
        seed=seed,
        train=TrainSpec(
            epochs=1,
            batch_size=8,
            lr=0.1,
            milestones=(),
            lr_decay=0.1,
            momentum=0.9,
            nesterov=False,
            weight_decay=0.0,
        ),
    )


def trace(results: Path, s: RunSpec) -> dict:
    return json.loads((RunDir(results, s.run_id).path / "trace.json").read_text())


GPUS = [Slot("gpu0", {"CUDA_VISIBLE_DEVICES": "0"}), Slot("gpu1", {"CUDA_VISIBLE_DEVICES": "1"})]


def test_teachers_before_students_and_slots_in_parallel(tmp_path):
    teacher = spec("teacher")
    students = [spec("student", seed, teacher) for seed in range(4)]
    events = []
    outcomes = LocalExecutor(
        GPUS, ProcessPerRun(fake_command), lambda e, s, m: events.append((e, s.run_id))
    ).execute([teacher, *students], tmp_path)
    assert all(o.status == "done" for o in outcomes.values())
    t = trace(tmp_path, teacher)
    traces = [trace(tmp_path, s) for s in students]
    assert all(tr["start"] >= t["end"] for tr in traces)
    assert {tr["gpu"] for tr in traces} == {"0", "1"} and {tr["slot"] for tr in traces} == {
        "gpu0",
        "gpu1",
    }
    overlapping = any(
        a["start"] < b["end"] and b["start"] < a["end"]
        for i, a in enumerate(traces)
        for b in traces[i + 1 :]
    )
    assert overlapping, "two slots should train two runs at once"
    assert events[0] == ("started", teacher.run_id)


def test_a_failed_run_does_not_stop_the_others(tmp_path):
    bad_teacher, good_teacher = spec("fail-teacher"), spec("teacher")
    orphans = [spec("student", seed, bad_teacher) for seed in range(2)]
    fine = [spec("student", seed, good_teacher) for seed in range(2)]
    outcomes = LocalExecutor(GPUS, ProcessPerRun(fake_command)).execute(
        [bad_teacher, good_teacher, *orphans, *fine], tmp_path
    )
    assert (
        outcomes[bad_teacher.run_id].status == "failed"
        and "exit code 3" in outcomes[bad_teacher.run_id].message
    )
    for s in orphans:
        assert outcomes[s.run_id].status == "skipped"
        assert (
            bad_teacher.run_id in outcomes[s.run_id].message
            and "failed" in outcomes[s.run_id].message
        )
        assert not RunDir(tmp_path, s.run_id).path.exists()
    assert all(outcomes[s.run_id].status == "done" for s in [good_teacher, *fine])


def test_finished_runs_are_reused_not_retrained(tmp_path):
    runs = [spec("a"), spec("b")]
    LocalExecutor([Slot("cpu")], ProcessPerRun(fake_command)).execute(runs, tmp_path)
    first = [trace(tmp_path, s) for s in runs]
    outcomes = LocalExecutor([Slot("cpu")], ProcessPerRun(fake_command)).execute(runs, tmp_path)
    assert all(o.reused for o in outcomes.values())
    assert [trace(tmp_path, s) for s in runs] == first


def test_a_run_locked_by_another_process_is_waited_for(tmp_path):
    run = spec("a")
    rundir = RunDir(tmp_path, run.run_id)
    events = []
    with rundir.lock():
        import threading

        def finish_elsewhere():
            import time

            time.sleep(0.5)
            rundir.result_file.write_text(json.dumps(finished().to_json()))

        threading.Thread(target=finish_elsewhere).start()
        # The lock is released when this block ends; the executor must not train the run itself.
        outcomes = {}

        def execute():
            outcomes.update(
                LocalExecutor(
                    [Slot("cpu")], ProcessPerRun(fake_command), lambda e, s, m: events.append(e)
                ).execute([run], tmp_path)
            )

        worker = threading.Thread(target=execute)
        worker.start()
        import time

        time.sleep(1.0)
    worker.join(timeout=10)
    assert outcomes[run.run_id].status == "done"
    assert "waiting" in events and "started" not in events
    assert not (rundir.path / "trace.json").exists()


def test_needs_a_slot():
    with pytest.raises(ValueError):
        LocalExecutor([], ProcessPerRun(fake_command))


def tiny_spec(seed: int, teacher: RunSpec | None = None, model: str = "resnet8") -> RunSpec:
    return RunSpec(
        profile="smoke",
        model=model,
        method="kd" if teacher else "ce",
        method_params=(
            {"ce_weight": 0.1, "kd_weight": 0.9, "kd_temperature": 4.0}
            if teacher
            else {"ce_weight": 1.0, "kd_weight": 0.0, "kd_temperature": 4.0}
        ),
        teacher=TeacherRef(model=teacher.model, run_id=teacher.run_id) if teacher else None,
        data=DataSpec(
            name="synthetic",
            options={"num_classes": 4, "image_size": 16, "train_size": 16, "test_size": 8},
        ),
        train=TrainSpec(
            epochs=1,
            batch_size=8,
            lr=0.1,
            milestones=(),
            lr_decay=0.1,
            momentum=0.9,
            nesterov=False,
            weight_decay=0.0,
        ),
        seed=seed,
    )


def test_slot_worker_trains_several_runs_and_survives_a_failing_one(tmp_path):
    from kdbench.execute.local.executor import SlotWorkers

    missing_teacher = tiny_spec(
        99
    )  # never trained: the student that needs it fails inside the worker
    runs = [tiny_spec(0), tiny_spec(1, teacher=missing_teacher), tiny_spec(2)]
    launcher = SlotWorkers()
    outcomes = LocalExecutor([Slot("cpu")], launcher).execute(runs, tmp_path)
    assert [outcomes[s.run_id].status for s in runs] == ["done", "failed", "done"]
    assert "has not finished" in outcomes[runs[1].run_id].message
    assert (
        len(list((tmp_path / "workers").glob("*.log"))) == 1 and not launcher.workers
    )  # closed after use


def test_a_dead_worker_fails_only_its_run_and_is_replaced(tmp_path):
    from kdbench.execute.local.executor import SlotWorkers

    class KillFirst(SlotWorkers):
        """Kills the worker right after sending it the first run."""

        killed = False

        def start(self, spec_file, results, slot):
            handle = super().start(spec_file, results, slot)
            if not self.killed:
                self.killed = True
                handle.worker.proc.kill()
            return handle

    runs = [tiny_spec(0), tiny_spec(1)]
    outcomes = LocalExecutor([Slot("cpu")], KillFirst()).execute(runs, tmp_path)
    assert (
        outcomes[runs[0].run_id].status == "failed"
        and "exit code" in outcomes[runs[0].run_id].message
    )
    assert outcomes[runs[1].run_id].status == "done"


# A stand-in for `kdbench train` that trains until the test lets it finish: it records its arguments and GPUs,
# then waits for a `release` file in its run directory. Models named "fail*" fail when released.
GATED_TRAIN = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    spec_file = Path(sys.argv[2])
    run = spec_file.parent
    (run / "trace.tmp").write_text(json.dumps({"argv": sys.argv[1:], "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}))
    os.replace(run / "trace.tmp", run / "trace.json")
    deadline = time.time() + 60
    while not (run / "release").exists() and time.time() < deadline:
        time.sleep(0.02)
    if json.loads(spec_file.read_text())["model"].startswith("fail"):
        sys.exit(3)
    numbers = {"epochs": 1, "best_top1": 1.0, "best_top5": 1.0, "best_epoch": 1, "last_top1": 1.0}
    (run / "result.json").write_text(json.dumps({**numbers, "last_top5": 1.0}))
""")


def gated_command(spec_file: Path, results: Path, slot: Slot) -> list[str]:
    """The real `kdbench train` command line (``--nproc`` included), run by the gated fake."""
    from kdbench.execute.local.executor import train_command

    return [sys.executable, "-c", GATED_TRAIN, *train_command(spec_file, results, slot)[3:]]


def imported(name: str) -> RunSpec:
    """An imported teacher: evaluated once, so it takes one process whatever --gpus-per-run says."""
    from kdbench.plan import CheckpointRef

    return spec(name).model_copy(
        update={
            "checkpoint": CheckpointRef(path=f"/w/{name}.pt", sha256="0" * 64, format="kdbench")
        }
    )


class Gate:
    """Runs an executor in a thread; lets the test release runs one by one and see what started where."""

    def __init__(self, results: Path, slots: list[Slot], runs: list[RunSpec], gpus_per_run: int):
        import threading

        self.results, self.events, self.lock = results, [], threading.Lock()
        self.executor = LocalExecutor(
            slots, ProcessPerRun(gated_command), self._record, gpus_per_run=gpus_per_run
        )
        self.outcomes: dict = {}
        self.thread = threading.Thread(
            target=lambda: self.outcomes.update(self.executor.execute(runs, results))
        )
        self.thread.start()

    def _record(self, event: str, s: RunSpec, message: str) -> None:
        with self.lock:
            self.events.append((event, s.model, message))

    def started(self) -> dict[str, str]:
        """{model: slot} of every run started so far, once the scheduler has settled."""
        import time

        time.sleep(0.6)  # three scheduler passes after the last change
        with self.lock:
            return {model: slot for event, model, slot in self.events if event == "started"}

    def release(self, s: RunSpec) -> None:
        import time

        (RunDir(self.results, s.run_id).path / "release").touch()
        deadline = time.time() + 30
        while (
            not any(e[0] in ("done", "failed") and e[1] == s.model for e in self.events)
            and time.time() < deadline
        ):
            time.sleep(0.02)

    def finish(self, runs: list[RunSpec]) -> dict:
        for s in runs:
            rundir = RunDir(self.results, s.run_id)
            rundir.path.mkdir(parents=True, exist_ok=True)
            (rundir.path / "release").touch()
        self.thread.join(timeout=60)
        return self.outcomes


def wait_trace(results: Path, s: RunSpec) -> dict:
    """The gated fake's trace, once its process has written it."""
    import time

    path = RunDir(results, s.run_id).path / "trace.json"
    deadline = time.time() + 30
    while not path.is_file() and time.time() < deadline:
        time.sleep(0.02)
    return json.loads(path.read_text())


def test_a_two_gpu_run_waits_for_two_whole_gpus_while_single_runs_fill_the_rest(tmp_path):
    """3 fake GPUs × 2 runs each; students train on 2 GPUs (DDP), imported teachers on one."""
    gpus = [
        Slot(f"gpu{g}.{k}", {"CUDA_VISIBLE_DEVICES": str(g)}) for g in range(3) for k in range(2)
    ]
    t = [imported(f"teacher{i}") for i in range(7)]
    ddp = spec("student", 0, t[0])
    runs = [*t[:6], ddp, t[6]]
    gate = Gate(tmp_path, gpus, runs, gpus_per_run=2)
    first = {
        "teacher0": "gpu0.0",
        "teacher1": "gpu1.0",
        "teacher2": "gpu2.0",
        "teacher3": "gpu0.1",
        "teacher4": "gpu1.1",
        "teacher5": "gpu2.1",
    }
    assert (
        gate.started() == first
    )  # spread over the GPUs, then doubled up; teacher6 waits for a slot
    gate.release(
        t[0]
    )  # busy 1/2/2: the student may start but no two GPUs are whole; it reserves gpu0 and gpu1
    assert gate.started() == first
    gate.release(t[4])  # busy 1/1/2: still reserved gpu0 + gpu1, and gpu2 is full: nothing starts
    assert gate.started() == first
    gate.release(
        t[5]
    )  # gpu2 has room and is not reserved: the single run fills it while the student waits
    assert gate.started() == {**first, "teacher6": "gpu2.1"}
    gate.release(t[3])  # gpu0 is whole; gpu1 still has teacher1
    assert "student" not in gate.started()
    gate.release(t[1])  # gpu0 and gpu1 are whole: the student starts on both, as one 2-process run
    assert gate.started()["student"] == "gpu0+gpu1"
    traced, single = wait_trace(tmp_path, ddp), wait_trace(tmp_path, t[6])
    assert traced["gpu"] == "0,1" and traced["argv"][traced["argv"].index("--nproc") + 1] == "2"
    assert "--nproc" not in single["argv"] and single["gpu"] == "2"
    outcomes = gate.finish(runs)
    assert all(o.status == "done" for o in outcomes.values())


def test_a_failed_ddp_run_does_not_stop_the_single_runs(tmp_path):
    gpus = [Slot(f"gpu{g}", {"CUDA_VISIBLE_DEVICES": str(g)}) for g in range(2)]
    teacher = imported("teacher")
    bad, good = spec("fail-student", 0, teacher), spec("student", 1, teacher)
    after_bad = spec("follower", 0).model_copy(
        update={"teacher": TeacherRef(model=bad.model, run_id=bad.run_id)}
    )
    others = [imported(f"other{i}") for i in range(2)]
    gate = Gate(tmp_path, gpus, [teacher, bad, good, after_bad, *others], gpus_per_run=2)
    assert gate.started() == {
        "teacher": "gpu0",
        "other0": "gpu1",
    }  # the students wait for their teacher
    gate.release(teacher)  # the failing student reserves both GPUs: other1 must wait behind it
    assert gate.started() == {"teacher": "gpu0", "other0": "gpu1"}
    gate.release(others[0])
    assert gate.started() == {"teacher": "gpu0", "other0": "gpu1", "fail-student": "gpu0+gpu1"}
    gate.release(
        bad
    )  # fails: its follower is skipped, the next student takes both GPUs, other1 waits behind it
    assert gate.started() == {
        "teacher": "gpu0",
        "other0": "gpu1",
        "fail-student": "gpu0+gpu1",
        "student": "gpu0+gpu1",
    }
    outcomes = gate.finish([good, *others])
    assert outcomes[bad.run_id].status == "failed" and "exit code 3" in outcomes[bad.run_id].message
    assert (
        outcomes[after_bad.run_id].status == "skipped"
        and bad.run_id in outcomes[after_bad.run_id].message
    )
    assert all(outcomes[s.run_id].status == "done" for s in [teacher, good, *others])


def test_more_gpus_per_run_than_gpus_fails_before_starting(tmp_path):
    from kdbench.errors import KdbenchError

    with pytest.raises(KdbenchError, match="needs 3 GPUs"):
        LocalExecutor(GPUS, ProcessPerRun(fake_command), gpus_per_run=3).execute(
            [spec("a")], tmp_path
        )
    assert not (tmp_path / "runs").exists()


def test_slot_workers_start_a_ddp_run_as_its_own_process_after_stopping_idle_workers_on_its_units(
    tmp_path,
):
    import time

    from kdbench.execute.local.executor import SlotWorkers
    from kdbench.execute.local.slots import SlotPool

    cpus = [Slot("cpu0", {"OMP_NUM_THREADS": "1"}), Slot("cpu1", {"OMP_NUM_THREADS": "1"})]
    first, ddp = tiny_spec(0), spec("student")
    launcher = SlotWorkers()
    launcher.per_run = ProcessPerRun(
        gated_command
    )  # stands in for `kdbench train --nproc 2` (the ddp branch's flag)
    for s in (first, ddp):
        RunDir(tmp_path, s.run_id).path.mkdir(parents=True)
        (RunDir(tmp_path, s.run_id).spec_file).write_text(s.model_dump_json())
    pool = SlotPool(cpus)
    [(_, slot)] = pool.assign([("first", 1)])
    handle = launcher.start(RunDir(tmp_path, first.run_id).spec_file, tmp_path, slot)
    deadline = time.time() + 120
    while handle.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert handle.poll() == 0 and list(launcher.workers) == ["cpu0"]
    pool.release(slot)
    [(_, group)] = pool.assign([("ddp", 2)])
    (RunDir(tmp_path, ddp.run_id).path / "release").touch()
    proc = launcher.start(RunDir(tmp_path, ddp.run_id).spec_file, tmp_path, group)
    assert launcher.workers == {}  # the idle worker on cpu0 was stopped first
    assert proc.wait(timeout=30) == 0
    argv = wait_trace(tmp_path, ddp)["argv"]
    assert argv[argv.index("--nproc") + 1] == "2" and argv[argv.index("--device") + 1] == "cpu"
    launcher.close()


def test_a_waited_for_run_that_ends_without_a_result_is_trained_here(tmp_path):
    """The other process was killed (or the lock was only probed by `kdbench status`): train the run here."""
    import threading
    import time

    run = spec("a")
    rundir = RunDir(tmp_path, run.run_id)
    events, outcomes, locked = [], {}, threading.Event()

    def hold_then_give_up():
        with rundir.lock():
            locked.set()
            time.sleep(0.6)

    holder = threading.Thread(target=hold_then_give_up)
    holder.start()
    locked.wait(5)
    outcomes.update(
        LocalExecutor(
            [Slot("cpu")], ProcessPerRun(fake_command), lambda e, s, m: events.append(e)
        ).execute([run], tmp_path)
    )
    holder.join()
    assert (
        events == ["waiting", "pending", "started", "done"]
        and outcomes[run.run_id].status == "done"
    )


def test_make_executor_builds_each_backend_by_name(monkeypatch):
    from kdbench.errors import KdbenchError, UnknownNameError
    from kdbench.execute.factory import EXECUTORS, ExecutorOptions, make_executor
    from kdbench.execute.local.executor import LocalOptions, SlotWorkers
    from kdbench.execute.slurm import executor as slurm
    from kdbench.plan import plan
    from kdbench.recipe import load_recipe
    from kdbench.train import ComputeOptions, RunOptions

    table = plan(load_recipe("simkd-table1"), "smoke")
    assert EXECUTORS.names() == ["local", "slurm"]
    options = ExecutorOptions(
        run=RunOptions(device="cpu", loader="torch", compute=ComputeOptions(precision="fp32")),
        local=LocalOptions(cpu_jobs=2),
    )
    local = make_executor("local", options, table)
    assert isinstance(local, LocalExecutor) and local.parallel == 2
    assert [s.name for s in local.slots] == ["cpu0", "cpu1"]
    assert isinstance(local.launcher, SlotWorkers)
    assert (local.launcher.options.loader, local.launcher.options.compute.precision) == (
        "torch",
        "fp32",
    )
    with pytest.raises(KdbenchError, match="--gpus-per-run 0 is for --executor slurm"):
        make_executor("local", ExecutorOptions(local=LocalOptions(gpus_per_run=0)), table)
    monkeypatch.setattr(slurm.shutil, "which", lambda name: None)
    with pytest.raises(KdbenchError, match="`sbatch` is not on PATH"):
        make_executor("slurm", options, table)
    with pytest.raises(UnknownNameError, match="Did you mean 'slurm'"):
        make_executor("slrum", options, table)


def test_the_cli_offers_the_executors_and_compute_modes_the_library_has():
    from typing import get_args

    from kdbench import cli
    from kdbench.execute.factory import EXECUTORS
    from kdbench.train import compute

    def choices(option) -> tuple[str, ...]:
        return get_args(get_args(option)[0])

    assert list(get_args(cli.ExecutorKind)) == EXECUTORS.names()
    assert choices(cli.PrecisionOpt) == compute.PRECISIONS
    assert choices(cli.CompileModeOpt) == compute.COMPILE_MODES
    assert choices(cli.TeacherCacheOpt) == compute.CACHE_MODES
