"""End to end through the command line: the smoke reproduction of SimKD Table 1, compare, reuse."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kdbench import methods
from kdbench.plan import plan
from kdbench.recipe import load_recipe


def kdbench(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "kdbench", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"kdbench {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


SMOKE_RUNS = len(plan(load_recipe("simkd-table1"), "smoke").specs)
ROWS = [r for r in load_recipe("simkd-table1").rows]
IMPLEMENTED_ROWS = {r.label for r in ROWS if r.is_teacher_row or methods.is_implemented(r.method)}


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory) -> Path:
    """The whole smoke table, reproduced once for this module (what `make demo` runs): every run trains
    stably (the smoke teachers' longer, gentler schedule, kdbench/plan.py), so every run is done."""
    results = tmp_path_factory.mktemp("results")
    proc = kdbench(
        "reproduce",
        "simkd-table1",
        "--profile",
        "smoke",
        "--results",
        str(results),
        "--cpu-jobs",
        "2",
        check=False,
    )
    failed = {p.parent.name: p.read_text() for p in results.glob("runs/*/failed.json")}
    assert not failed and proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{failed}"
    assert (
        len(list(results.glob("runs/*/result.json"))) == SMOKE_RUNS
        and f"{SMOKE_RUNS} of {SMOKE_RUNS} runs done" in proc.stdout
    )
    return results


@pytest.mark.e2e
def test_smoke_reproduction_fills_every_implemented_cell(smoke_results):
    proc = kdbench("compare", str(smoke_results), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == 11 * 7
    by_status = {}
    for row in rows:
        by_status.setdefault(row["status"], set()).add(row["row"])
        assert row["profile"] == "smoke" and row["paper_mean"] != ""
    assert set(by_status) <= {"done", "not implemented"}  # no failed cell
    assert by_status.get("not implemented", set()) == {r.label for r in ROWS} - IMPLEMENTED_ROWS
    assert by_status["done"] == IMPLEMENTED_ROWS
    done = [r for r in rows if r["status"] == "done"]
    assert all(
        0 <= float(r["ours_mean"]) <= 100 and r["n"] == "1" and r["n_failed"] == "0" for r in done
    )
    assert all(
        abs(float(r["delta"]) - (float(r["ours_mean"]) - float(r["paper_mean"]))) < 1e-3
        for r in done
    )


@pytest.mark.e2e
def test_every_format_renders_the_paper_layout(smoke_results):
    table = kdbench("compare", str(smoke_results)).stdout
    assert "ResNet-32x4" in table and "smoke profile" in table
    markdown = kdbench("compare", str(smoke_results), "--format", "markdown").stdout
    assert markdown.count("\n| ") == 1 + 11 and "paper 78.08 ± 0.15" in markdown
    latex = kdbench("compare", str(smoke_results), "--format", "latex", "--metric", "last").stdout
    assert (
        r"\begin{tabular}{lccccccc}" in latex
        and r"78.08$\pm$0.15" in latex
        and "last epoch" in latex
    )


@pytest.mark.e2e
def test_second_reproduce_trains_nothing(smoke_results):
    results = sorted(smoke_results.glob("runs/*/result.json"))
    before = {p: p.stat().st_mtime_ns for p in results}
    done = len(results)
    proc = kdbench(
        "reproduce",
        "simkd-table1",
        "--profile",
        "smoke",
        "--results",
        str(smoke_results),
        check=False,
    )
    assert (
        proc.stdout.count("already done") == done
        and f"{done} of {SMOKE_RUNS} runs done" in proc.stdout
    )
    assert {p: p.stat().st_mtime_ns for p in results} == before


@pytest.mark.e2e
def test_show_lists_runs_with_status_and_cost(smoke_results):
    out = kdbench(
        "show", "simkd-table1", "--profile", "smoke", "--results", str(smoke_results)
    ).stdout
    done = len(list(smoke_results.glob("runs/*/result.json")))
    assert f"{done} of {SMOKE_RUNS} runs done" in out and "H100-hours" in out


def test_compare_without_results_lists_the_published_numbers(tmp_path):
    out = kdbench(
        "compare", str(tmp_path / "empty"), "--recipe", "simkd-table1", "--format", "csv"
    ).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 77 and {r["status"] for r in rows} <= {"not run", "not implemented"}
    simkd = next(r for r in rows if r["row"] == "SimKD" and r["column"] == "res32x4_res8x4")
    assert (simkd["paper_mean"], simkd["paper_std"], simkd["ours_mean"], simkd["n"]) == (
        "78.0800",
        "0.1500",
        "",
        "0",
    )
    required = [
        "recipe",
        "teacher",
        "student",
        "method",
        "metric",
        "paper_mean",
        "paper_std",
        "ours_mean",
        "ours_std",
        "n",
        "delta",
    ]
    assert set(required) <= set(rows[0])


@pytest.mark.e2e
def test_dry_run_trains_nothing(tmp_path):
    out = kdbench("reproduce", "simkd-table1", "--dry-run", "--results", str(tmp_path)).stdout
    expected = len(plan(load_recipe("simkd-table1"), "full").specs)
    assert f"Runs ({expected})" in out and not (tmp_path / "runs").exists()


@pytest.mark.e2e
def test_helpful_errors(tmp_path):
    proc = kdbench("reproduce", "simkd-tabel1", check=False)
    assert proc.returncode == 2 and "Did you mean 'simkd-table1'" in proc.stderr
    proc = kdbench("compare", str(tmp_path), "--format", "xls", check=False)
    assert proc.returncode == 2 and "unknown format 'xls'" in proc.stderr
    assert "reproduce" in kdbench("--help").stdout
    assert "simkd-table1" in kdbench("list").stdout


CI_RECIPE = """
name: tiny-real
paper: "kdbench test table"
table: "Table T"
title: "KD on real CIFAR-100 images (a subset)"
source: "tests/test_cli.py"
protocol: {name: test, follows: "kdbench defaults"}
dataset: {name: npz, options: {path: cifar100-real-sample.npz, num_classes: 100}}
training: {epochs: 240, batch_size: 64, lr: 0.05, milestones: [150, 180, 210]}
trials: 2
teachers: {r20: {model: resnet20, label: ResNet-20, paper: 69.06}}
columns: [{id: r20_r8, teacher: r20, student: resnet8, label: ResNet-8}]
rows:
  - {label: Student, method: ce, paper: {r20_r8: "60.00 ± 1.00"}}
  - {label: KD, method: kd, paper: {r20_r8: "61.00 ± 1.00"}}
  - {label: Teacher, method: teacher, paper: {r20_r8: 69.06}}
profiles:
  ci: {train_fraction: 0.5, test_fraction: 0.5, epochs: 1}
"""


@pytest.mark.e2e
def test_ci_profile_on_real_images_from_a_recipe_file(tmp_path, shared_data):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(CI_RECIPE)
    results = tmp_path / "results"
    out = kdbench(
        "reproduce",
        str(recipe),
        "--profile",
        "ci",
        "--results",
        str(results),
        "--data-dir",
        str(shared_data),
    ).stdout
    assert "5 of 5 runs done" in out
    spec = json.loads(next(results.glob("runs/kd-resnet8-*/spec.json")).read_text())
    assert (
        spec["profile"] == "ci"
        and spec["data"]["train_fraction"] == 0.5
        and spec["train"]["epochs"] == 1
    )
    rows = list(
        csv.DictReader(io.StringIO(kdbench("compare", str(results), "--format", "csv").stdout))
    )
    assert [(r["row"], r["status"], r["n"]) for r in rows] == [
        ("Student", "done", "2"),
        ("KD", "done", "2"),
        ("Teacher", "done", "1"),
    ]
    assert "ci profile" in kdbench("compare", str(results)).stdout


def test_methods_command_lists_every_method_with_paper_and_variants():
    out = kdbench("methods").stdout
    for name in methods.names():
        assert name in out
    assert "released-cifar" in out and "Huang et al." in out


def test_version_prints_the_package_version_and_matches_the_installed_metadata():
    from importlib.metadata import version

    from kdbench import __version__

    out = kdbench("--version").stdout.strip()
    assert out == f"kdbench {__version__}"
    assert version("kdbench") == __version__  # pyproject reads it from kdbench.__version__


def test_reproduce_help_groups_its_options_by_executor_within_80_columns():
    from kdbench.cli import app
    from typer.testing import CliRunner

    out = CliRunner().invoke(app, ["reproduce", "--help"], env={"COLUMNS": "80"}).output
    lines = out.splitlines()
    headings = [line for line in lines if line.endswith(":") and not line.startswith(" ")]
    assert headings == ["Arguments:", "Options:", "Compute:", "Local executor:", "SLURM executor:"]
    assert max(map(len, lines)) <= 80
    local = out.split("Local executor:")[1].split("SLURM executor:")[0]
    assert "--runs-per-gpu" in local and "--cpu-jobs" in local and "--partition" not in local
    assert "--precision <auto|fp32|bf16|faithful>" in out.split("Compute:")[1]
