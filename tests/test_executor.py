"""Local executor on fake GPU slots: dependency order, parallel slots, failure isolation, reuse, locks."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from kdbench.execute.local import LocalExecutor, ProcessPerRun, Slot
from kdbench.plan import DataSpec, RunSpec, TeacherRef, TrainSpec
from kdbench.results.store import RunDir

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
    (run / "result.json").write_text(json.dumps({"best_top1": 1.0}))
""")


def fake_command(spec_file: Path, results: Path, slot: Slot) -> list[str]:
    return [sys.executable, "-c", FAKE_TRAIN, str(spec_file), str(results), slot.name]


def spec(model: str, seed: int = 0, teacher: RunSpec | None = None) -> RunSpec:
    return RunSpec(
        profile="smoke", model=model, method="kd" if teacher else "ce", method_params={},
        teacher=TeacherRef(model=teacher.model, run_id=teacher.run_id) if teacher else None,
        data=DataSpec(name="synthetic"), seed=seed,
        train=TrainSpec(epochs=1, batch_size=8, lr=0.1, milestones=(), lr_decay=0.1, momentum=0.9, nesterov=False, weight_decay=0.0),
    )


def trace(results: Path, s: RunSpec) -> dict:
    return json.loads((RunDir(results, s.run_id).path / "trace.json").read_text())


GPUS = [Slot("gpu0", {"CUDA_VISIBLE_DEVICES": "0"}), Slot("gpu1", {"CUDA_VISIBLE_DEVICES": "1"})]


def test_teachers_before_students_and_slots_in_parallel(tmp_path):
    teacher = spec("teacher")
    students = [spec("student", seed, teacher) for seed in range(4)]
    events = []
    outcomes = LocalExecutor(GPUS, ProcessPerRun(fake_command), lambda e, s, m: events.append((e, s.run_id))).execute([teacher, *students], tmp_path)
    assert all(o.status == "done" for o in outcomes.values())
    t = trace(tmp_path, teacher)
    traces = [trace(tmp_path, s) for s in students]
    assert all(tr["start"] >= t["end"] for tr in traces)
    assert {tr["gpu"] for tr in traces} == {"0", "1"} and {tr["slot"] for tr in traces} == {"gpu0", "gpu1"}
    overlapping = any(a["start"] < b["end"] and b["start"] < a["end"] for i, a in enumerate(traces) for b in traces[i + 1:])
    assert overlapping, "two slots should train two runs at once"
    assert events[0] == ("started", teacher.run_id)


def test_a_failed_run_does_not_stop_the_others(tmp_path):
    bad_teacher, good_teacher = spec("fail-teacher"), spec("teacher")
    orphans = [spec("student", seed, bad_teacher) for seed in range(2)]
    fine = [spec("student", seed, good_teacher) for seed in range(2)]
    outcomes = LocalExecutor(GPUS, ProcessPerRun(fake_command)).execute([bad_teacher, good_teacher, *orphans, *fine], tmp_path)
    assert outcomes[bad_teacher.run_id].status == "failed" and "exit code 3" in outcomes[bad_teacher.run_id].message
    for s in orphans:
        assert outcomes[s.run_id].status == "skipped"
        assert bad_teacher.run_id in outcomes[s.run_id].message and "failed" in outcomes[s.run_id].message
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
            rundir.result_file.write_text("{}")

        threading.Thread(target=finish_elsewhere).start()
        # The lock is released when this block ends; the executor must not train the run itself.
        outcomes = {}

        def execute():
            outcomes.update(LocalExecutor([Slot("cpu")], ProcessPerRun(fake_command), lambda e, s, m: events.append(e)).execute([run], tmp_path))

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
        profile="smoke", model=model, method="kd" if teacher else "ce",
        method_params=({"ce_weight": 0.1, "kd_weight": 0.9, "kd_temperature": 4.0} if teacher
                       else {"ce_weight": 1.0, "kd_weight": 0.0, "kd_temperature": 4.0}),
        teacher=TeacherRef(model=teacher.model, run_id=teacher.run_id) if teacher else None,
        data=DataSpec(name="synthetic", options={"num_classes": 4, "image_size": 16, "train_size": 16, "test_size": 8}),
        train=TrainSpec(epochs=1, batch_size=8, lr=0.1, milestones=(), lr_decay=0.1, momentum=0.9, nesterov=False, weight_decay=0.0),
        seed=seed,
    )


def test_slot_worker_trains_several_runs_and_survives_a_failing_one(tmp_path):
    from kdbench.execute.local import SlotWorkers

    missing_teacher = tiny_spec(99)  # never trained: the student that needs it fails inside the worker
    runs = [tiny_spec(0), tiny_spec(1, teacher=missing_teacher), tiny_spec(2)]
    launcher = SlotWorkers()
    outcomes = LocalExecutor([Slot("cpu")], launcher).execute(runs, tmp_path)
    assert [outcomes[s.run_id].status for s in runs] == ["done", "failed", "done"]
    assert "has not finished" in outcomes[runs[1].run_id].message
    assert len(list((tmp_path / "workers").glob("*.log"))) == 1 and not launcher.workers  # closed after use


def test_a_dead_worker_fails_only_its_run_and_is_replaced(tmp_path):
    from kdbench.execute.local import SlotWorkers

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
    assert outcomes[runs[0].run_id].status == "failed" and "exit code" in outcomes[runs[0].run_id].message
    assert outcomes[runs[1].run_id].status == "done"
