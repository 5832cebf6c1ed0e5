"""`kdbench clean`: failed, orphaned and named runs and stray temp files go; running and finished runs stay."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from kdbench import cli
from kdbench.io import atomic_write_json
from kdbench.plan import plan
from kdbench.recipe import Recipe
from kdbench.results.tables import record_table
from kdbench.store.run_dir import RunDir
from typer.testing import CliRunner

RECIPE = Recipe.model_validate(
    {
        "name": "tiny",
        "paper": "t",
        "table": "T",
        "title": "t",
        "source": "tests/test_clean.py",
        "protocol": {"name": "t", "follows": "t"},
        "dataset": {"name": "synthetic"},
        "training": {"epochs": 1, "batch_size": 16, "lr": 0.05},
        "trials": 3,
        "teachers": {"t": {"model": "resnet20", "label": "T"}},
        "columns": [{"id": "c", "teacher": "t", "student": "resnet8", "label": "S"}],
        "rows": [{"label": "KD", "method": "kd"}],
    }
)


def make_run(results: Path, spec, state: str) -> RunDir:
    """A run directory in ``state``: done, failed, incomplete (a checkpoint, no result) or bare (no spec.json)."""
    run = RunDir(results, spec.run_id)
    run.path.mkdir(parents=True)
    if state != "bare":
        atomic_write_json(run.spec_file, spec.model_dump(mode="json"))
    if state == "done":
        atomic_write_json(run.result_file, {"run_id": spec.run_id})
    elif state == "failed":
        atomic_write_json(
            run.failed_file, {"error": "TrainingDiverged", "message": "loss became non-finite"}
        )
    elif state == "incomplete":
        (run.path / "checkpoint.pt").write_bytes(b"resume point")
    return run


@pytest.fixture()
def store(tmp_path: Path) -> dict[str, RunDir]:
    """A results dir with a recorded table (teacher done, seed 0 failed, seed 1 incomplete) and runs outside it."""
    results = tmp_path / "results"
    table = plan(RECIPE, "smoke", trials=2)
    record_table(results, RECIPE, "smoke", 2, {})
    teacher = next(s for s in table.specs.values() if s.teacher is None)
    seed0, seed1 = sorted((s for s in table.specs.values() if s.teacher), key=lambda s: s.seed)
    other = [s for s in plan(RECIPE, "smoke", trials=3).specs.values() if s.seed == 2][
        0
    ]  # in no recorded table
    other_done = plan(RECIPE, "ci", trials=1).specs
    done_ci = next(iter(other_done.values()))
    runs = {
        "teacher": make_run(results, teacher, "done"),
        "failed": make_run(results, seed0, "failed"),
        "incomplete": make_run(results, seed1, "incomplete"),
        "orphan": make_run(results, other, "incomplete"),
        "finished_orphan": make_run(results, done_ci, "done"),
        "bare": make_run(
            results, next(s for s in other_done.values() if s.run_id != done_ci.run_id), "bare"
        ),
    }
    (runs["teacher"].path / ".result.json.abc123.tmp").write_text("{half")
    (results / "tables" / ".tiny--smoke.json.xyz.tmp").write_text("{half")
    return runs


def clean(results: Path, *args: str, input: str | None = None):
    result = CliRunner().invoke(cli.app, ["clean", "--results", str(results), *args], input=input)
    return result, " ".join(result.output.split())


def results_of(runs: dict[str, RunDir]) -> Path:
    return runs["teacher"].path.parent.parent


def temps(results: Path) -> list[Path]:
    return sorted(results.rglob(".*.tmp"))


def test_dry_run_lists_everything_and_removes_nothing(store):
    results = results_of(store)
    before = sorted(results.rglob("*"))
    result, out = clean(results, "--dry-run")
    assert result.exit_code == 0, out
    for key in ("failed", "orphan", "bare"):
        assert f"would remove {store[key].path}" in out
    assert (
        "loss became non-finite" in out
        and "no recorded table refers to it" in out
        and "no spec.json" in out
    )
    assert (
        "stray temp file" in out and "5 item(s) would be removed (dry run)" in out
    )  # 3 runs, 2 temp files
    assert f"remove it with --run {store['finished_orphan'].run_id}" in out
    assert sorted(results.rglob("*")) == before


def test_failed_only(store):
    result, out = clean(results_of(store), "--failed")
    assert result.exit_code == 0, out
    assert not store["failed"].path.exists()
    assert all(
        store[k].path.is_dir()
        for k in ("teacher", "incomplete", "orphan", "finished_orphan", "bare")
    )
    assert len(temps(results_of(store))) == 2


def test_orphaned_runs_and_temp_files(store):
    results = results_of(store)
    result, out = clean(results, "--orphaned")
    assert result.exit_code == 0, out
    assert (
        not store["orphan"].path.exists()
        and not store["bare"].path.exists()
        and temps(results) == []
    )
    # the failed run is not orphaned, the resumable run is in the table, finished runs are never removed unnamed
    assert all(
        store[k].path.is_dir() for k in ("teacher", "failed", "incomplete", "finished_orphan")
    )
    assert store["teacher"].result_file.is_file()


def test_a_finished_run_goes_only_when_named_and_confirmed(store):
    results, run = results_of(store), store["finished_orphan"]
    result, out = clean(results, "--run", run.run_id, input="n\n")
    assert result.exit_code == 1 and run.path.is_dir() and "Their results are lost" in out
    result, out = clean(results, "--run", run.run_id, "--yes")
    assert result.exit_code == 0 and not run.path.exists() and f"removed {run.path}" in out
    assert store["failed"].path.is_dir()  # --run alone removes only what it names


def test_an_unknown_run_names_the_status_command(store):
    result, out = clean(results_of(store), "--run", "kd-resnet8-s0-000000000000")
    assert (
        result.exit_code == 2
        and "no run kd-resnet8-s0-000000000000 under" in out
        and "kdbench status" in out
    )


HOLD_LOCK = """
import sys
from kdbench.store.run_dir import RunDir
with RunDir(sys.argv[1], sys.argv[2]).lock():
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_running_run_is_never_touched(store):
    results = results_of(store)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    holders = [
        subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(results), store[k].run_id],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for k in ("failed", "orphan")
    ]
    try:
        for holder in holders:
            assert holder.stdout.readline().strip() == "locked"
        (store["orphan"].path / ".metrics.jsonl.q1.tmp").write_text("being written")
        result, out = clean(
            results, "--failed", "--orphaned", "--run", store["failed"].run_id, "--yes"
        )
        assert result.exit_code == 0, out
        assert store["failed"].failed_file.is_file() and store["orphan"].path.is_dir()
        assert (store["orphan"].path / ".metrics.jsonl.q1.tmp").is_file()
        assert (
            f"left alone: {store['failed'].run_id}: running" in out
            and f"left alone: {store['orphan'].run_id}: running" in out
        )
        assert not store["bare"].path.exists()  # the rest is still cleaned
    finally:
        for holder in holders:
            holder.stdin.close()
            holder.wait(timeout=30)


def test_a_symlinked_run_dir_is_left_alone(store, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "failed.json").write_text("{}")
    link = store["teacher"].path.parent / "kd-resnet8-s9-000000000000"
    link.symlink_to(outside)
    result, out = clean(results_of(store), "--failed", "--orphaned")
    assert result.exit_code == 0 and (outside / "failed.json").is_file() and link.is_symlink()
    assert "a symlink, left alone" in out
