"""`kdbench status` and the live view: states read from the store (a real lock held by another process), ETA."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kdbench.cli import app
from kdbench.execute.progress import RunProgress
from kdbench.io import atomic_write_json
from kdbench.plan import DataSpec, RunSpec, TeacherRef, TrainSpec
from kdbench.results.overview import RunRow, estimate
from kdbench.store.run_dir import RunDir
from rich.console import Console
from typer.testing import CliRunner

from planted import epoch, finished

HOLD_LOCK = "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()"


def spec(model: str, seed: int = 0, teacher: RunSpec | None = None, epochs: int = 5) -> RunSpec:
    return RunSpec(
        profile="smoke",
        model=model,
        method="kd" if teacher else "ce",
        method_params={},
        teacher=TeacherRef(model=teacher.model, run_id=teacher.run_id) if teacher else None,
        data=DataSpec(name="synthetic"),
        seed=seed,
        train=TrainSpec(
            epochs=epochs,
            batch_size=8,
            lr=0.1,
            milestones=(),
            lr_decay=0.1,
            momentum=0.9,
            nesterov=False,
            weight_decay=0.0,
        ),
    )


def write_run(results: Path, s: RunSpec, epochs: int = 0) -> RunDir:
    rundir = RunDir(results, s.run_id)
    atomic_write_json(rundir.spec_file, s.model_dump(mode="json"))
    rundir.write_metrics([epoch(e, 1.0) for e in range(1, epochs + 1)])
    return rundir


@pytest.fixture
def store(tmp_path):
    """A results dir with a run in every state; 'running' holds its lock in another process."""
    done, failed = spec("done-teacher"), spec("failed-teacher")
    running, skipped, pending = (
        spec("student", 0, done),
        spec("student", 1, failed),
        spec("student", 2, done),
    )
    rundir = write_run(tmp_path, done, 5)
    atomic_write_json(rundir.launch_file, {"slot": "gpu0", "started": 0.0, "epochs_before": 0})
    atomic_write_json(rundir.result_file, finished(wall_seconds=10.0, epochs=5).to_json())
    atomic_write_json(
        write_run(tmp_path, failed, 1).failed_file,
        {"error": "ValueError", "message": "loss is nan"},
    )
    rundir = write_run(tmp_path, running, 2)
    atomic_write_json(
        rundir.launch_file, {"slot": "gpu1.1", "started": time.time() - 60, "epochs_before": 1}
    )
    write_run(tmp_path, pending)
    write_run(
        tmp_path, skipped
    )  # made by hand: the executor would never create the directory of a skipped run
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(rundir.lock_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    yield (
        tmp_path,
        {
            "done": done,
            "failed": failed,
            "running": running,
            "skipped": skipped,
            "pending": pending,
        },
        holder,
    )
    if holder.poll() is None:
        holder.communicate("")


def test_status_shows_every_state_from_the_store(store):
    results, runs, _ = store
    out = CliRunner().invoke(app, ["status", "--results", str(results)], env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    assert "1 done  1 running  1 failed  1 skipped  1 pending" in out.output
    lines = {
        line.split()[0]: line
        for line in out.output.splitlines()
        if line.split() and line.split()[0] in runs
    }
    assert (
        runs["running"].run_id in lines["running"]
        and "2/5" in lines["running"]
        and "gpu1.1 for 1m0" in lines["running"]
    )
    assert runs["failed"].run_id in lines["failed"] and "ValueError: loss is nan" in lines["failed"]
    assert runs["skipped"].run_id in lines["skipped"] and "depends on failed" in lines["skipped"]
    assert runs["pending"].run_id in lines["pending"] and runs["done"].run_id in lines["done"]
    # 5 epochs in 10 s (done) + 1 epoch in ~60 s since launch (running: one epoch was done before it) = 70 s / 6 epochs
    # (a few seconds pass between writing launch.json and reading it)
    found = re.search(
        r"ETA \S+: 8 epochs left × (\d+\.\d) s/epoch \(mean of 6 epochs trained\) ÷ 1 in parallel",
        out.output,
    )
    assert found and 70 / 6 - 0.1 < float(found.group(1)) < 70 / 6 + 1.0, out.output


def test_the_running_state_is_the_lock(store):
    results, runs, holder = store
    assert RunDir(results, runs["running"].run_id).is_locked()
    holder.communicate(
        ""
    )  # the other process ends: its run is interrupted, and pending again (it will resume)
    out = CliRunner().invoke(app, ["status", "--results", str(results)], env={"COLUMNS": "250"})
    assert "1 done  0 running  1 failed  1 skipped  2 pending" in out.output, out.output


def test_eta_is_remaining_epochs_times_measured_seconds_per_epoch_over_parallel_runs():
    rows = [
        RunRow("a", "a", 10, "done", seconds=40.0, epochs_before=2),  # 8 epochs in 40 s
        RunRow("b", "b", 10, "running", epoch=4, started=100.0),  # 4 epochs in 20 s (now = 120)
        RunRow("c", "c", 10, "pending"),
        RunRow("d", "d", 10, "failed", epoch=3),
    ]
    eta = estimate(rows, parallel=4, now=120.0)
    assert (eta.seconds_per_epoch, eta.epochs_left, eta.measured_epochs, eta.parallel) == (
        5.0,
        16,
        12,
        2,
    )
    assert eta.seconds == 16 * 5.0 / 2
    assert estimate([RunRow("c", "c", 10, "pending")], parallel=2).seconds is None


def test_plain_output_off_a_terminal(tmp_path):
    teacher = spec("teacher", epochs=2)
    students = [spec("student", seed, teacher, epochs=2) for seed in range(2)]
    buffer = io.StringIO()
    progress = RunProgress(
        Console(file=buffer, force_terminal=False, width=100), [teacher, *students], tmp_path, 2
    )
    assert progress.live is None
    with progress:
        progress.event("started", teacher, "cpu0")
        rundir = write_run(tmp_path, teacher, 2)
        atomic_write_json(rundir.result_file, finished(wall_seconds=4.0, epochs=2).to_json())
        progress.event("done", teacher, "")
        progress.event("skipped", students[0], "teacher run x failed: boom")
    lines = buffer.getvalue().splitlines()
    assert lines[0].split() == [
        "started",
        "ce",
        "teacher",
        "s0",
        f"({teacher.run_id})",
        "on",
        "cpu0",
    ]
    assert lines[1].split()[:4] == ["done", "ce", "teacher", "s0"]
    assert lines[2].strip() == (
        "1 done, 0 running, 0 failed, 0 skipped, 2 pending; ETA 0m04s: 4 epochs left × 2.0 s/epoch "
        "(mean of 2 epochs trained) ÷ 2 in parallel"
    )
    assert lines[3].split()[0] == "skipped" and lines[3].endswith(": teacher run x failed: boom")


def test_live_panel_reads_the_running_runs_epochs(tmp_path):
    teacher = spec("teacher", epochs=3)
    progress = RunProgress(
        Console(file=io.StringIO(), force_terminal=True, width=150), [teacher], tmp_path, 1, "demo"
    )
    assert progress.live is not None
    progress.event("started", teacher, "gpu0")
    rundir = write_run(tmp_path, teacher, 1)
    atomic_write_json(
        rundir.launch_file, {"slot": "gpu0", "started": time.time() - 30, "epochs_before": 0}
    )
    capture = Console(file=io.StringIO(), width=150, record=True)
    capture.print(progress.renderable())
    text = capture.export_text()
    # 1 epoch in 30 s since launch: 2 epochs left take 1 min (a second of slack for a loaded machine)
    assert "0 done  1 running" in text
    assert re.search(
        rf"ce teacher s0 \({teacher.run_id}\)  gpu0  1/3    0m3[01]s    1m0[0-2]s", text
    ), text
    assert re.search(
        r"ETA 1m0[0-2]s: 2 epochs left × 3[01]\.\d s/epoch \(mean of 1 epoch trained\) ÷ 1 in parallel",
        text,
    ), text


def test_status_of_a_table_replans_the_recorded_snapshot(tmp_path):
    from kdbench.plan import plan
    from kdbench.recipe import load_recipe
    from kdbench.results.tables import record_table

    recipe = load_recipe("simkd-table1")
    record_table(tmp_path, recipe, "smoke", 1, {})
    runs = plan(recipe, "smoke", trials=1).ordered()
    atomic_write_json(
        write_run(tmp_path, runs[0], 2).result_file,
        finished(wall_seconds=1.0, epochs=2).to_json(),
    )
    out = CliRunner().invoke(
        app, ["status", "simkd-table1", "--results", str(tmp_path)], env={"COLUMNS": "250"}
    )
    assert out.exit_code == 0, out.output
    assert out.output.startswith(f"simkd-table1 (smoke) in {tmp_path}")
    assert f"1 done  0 running  0 failed  0 skipped  {len(runs) - 1} pending" in out.output


def test_more_gpus_per_run_than_cpu_slots_is_a_clear_error(tmp_path):
    out = CliRunner().invoke(
        app,
        [
            "reproduce",
            "simkd-table1",
            "--profile",
            "smoke",
            "--results",
            str(tmp_path),
            "--device",
            "cpu",
            "--gpus-per-run",
            "2",
        ],
        env={"COLUMNS": "250"},
    )
    assert out.exit_code == 2 and "--cpu-jobs 2" in out.output and not (tmp_path / "runs").exists()


def test_a_run_with_an_unreadable_spec_is_counted_not_fatal(store):
    results, runs, _ = store
    RunDir(results, runs["pending"].run_id).spec_file.write_text('{"version": 1, "model": ')
    out = CliRunner().invoke(app, ["status", "--results", str(results)], env={"COLUMNS": "250"})
    assert out.exit_code == 0 and "(1 with an unreadable spec.json not shown)" in out.output, (
        out.output
    )
    assert "1 done  1 running  1 failed  1 skipped  0 pending" in out.output
