"""Reading results: compare at any terminal width, --json for scripts, --pairs/--methods, failed cells counted apart,
and `kdbench report` (one self-contained HTML page). Results are planted (tests/test_compare.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kdbench.io import atomic_write_json
from kdbench.plan import plan
from kdbench.provenance import source_commit
from kdbench.results import render
from kdbench.results.compare import compare, summary
from kdbench.store.records import EpochRecord, RunResult
from kdbench.store.run_dir import RunDir
from rich.cells import cell_len

from planted import epoch as record
from test_compare import RECIPE, plant

ROOT = Path(__file__).resolve().parent.parent


def _curve(best: float, seed: int, epochs: int = 240, best_epoch: int = 200) -> list[EpochRecord]:
    """A rising test top-1 that peaks at ``best`` on ``best_epoch`` and ends 0.1 below it (the planted result); the
    seed shifts the climb, so that trials differ."""
    history = []
    for epoch in range(1, epochs + 1):
        climb = (30.0 + 3 * seed) * (1 - epoch / best_epoch) ** (2 + seed / 4)
        top1 = best - climb if epoch <= best_epoch else best - 0.1 * (epoch - best_epoch) / 40
        history.append(record(epoch, round(top1, 4), 99.0, images_per_s=1000.0))
    return history


def plant_with_curves(results: Path) -> None:
    """The planted table, every finished run with a metrics.jsonl and the provenance a GPU run records; its recipe as
    ``planted.yaml`` beside ``results`` (commands that take a recipe name take its file)."""
    plant(results)
    (results.parent / "planted.yaml").write_text(
        yaml.safe_dump(RECIPE.model_dump(mode="json"), sort_keys=False)
    )
    for run_id in [p.name for p in (results / "runs").iterdir()]:
        run = RunDir(results, run_id)
        result = run.result()
        seed = json.loads(run.spec_file.read_text())["seed"]
        run.write_metrics(_curve(result.best_top1, seed))
        provenance = dict(
            kdbench_version="0.1.0",
            kdbench_commit="0123456789abcdef0123456789abcdef01234567",
            torch_version="2.5.1+cu124",
            device="cuda:0",
            device_name="NVIDIA H200",
            wall_seconds=5400.0,
            world_size=1,
            compute={"precision": "bf16"},
        )
        # checksummed, as the trainer writes it
        run.write_result(RunResult.from_json({**result.to_json(), **provenance}))


@pytest.fixture
def results(tmp_path) -> Path:
    plant_with_curves(tmp_path / "results")
    return tmp_path / "results"


def kdbench(*args: str, columns: int = 200) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kdbench", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": str(columns)},
        timeout=300,
    )


def _widest(text: str) -> int:
    return max(cell_len(line.rstrip()) for line in text.splitlines())


@pytest.mark.e2e
@pytest.mark.parametrize("columns", [80, 200])
def test_compare_fits_the_terminal_and_cuts_nothing(results, columns):
    out = kdbench("compare", str(results), columns=columns)
    assert out.returncode == 0, out.stderr
    assert _widest(out.stdout) <= columns and "…" not in out.stdout
    for mark in ("✓", "▲", "▼", "?"):
        assert mark in out.stdout
    if columns == 80:  # the compact grid: one line per cell, the legend once
        assert re.search(r"Student +70\.05±0\.13 \+0\.05 ✓ +75\.15±0\.26 \+5\.15 ▲", out.stdout)
        assert (
            out.stdout.count("marks: ✓ reproduced") == 1
            and "a = ResNet-32x4 → ResNet-8x4" in out.stdout
        )
    else:  # wide: every cell's full text
        assert (
            "✓ reproduced [-0.19, +0.29]" in out.stdout
            and "? inconclusive; needs ≥ 2 trials" in out.stdout
        )


@pytest.mark.e2e
def test_a_many_pair_table_splits_into_bands_of_pairs(tmp_path):
    out = kdbench("compare", str(tmp_path), "--recipe", "simkd-table1", columns=80)
    assert out.returncode == 0, out.stderr
    assert _widest(out.stdout) <= 80 and "…" not in out.stdout
    assert out.stdout.count("method ") == 2  # seven pairs: two bands at 80 columns
    assert "res32x4_shuv2 = ResNet-32x4 → ShuffleNetV2" in out.stdout


@pytest.mark.e2e
@pytest.mark.parametrize(
    "command",
    [
        ["list"],
        ["methods"],
        ["show", "simkd-table1", "--profile", "smoke"],
        ["status"],
        ["status", "PLANTED"],
        ["clean", "--dry-run"],
    ],
)
@pytest.mark.parametrize("columns", [80, 200])
def test_listings_fit_the_terminal_and_never_cut_a_run_id(results, command, columns):
    command = [str(results.parent / "planted.yaml") if c == "PLANTED" else c for c in command]
    options = [] if command[0] in ("list", "methods") else ["--results", str(results)]
    failed = _fail_one(results) if command[0] == "clean" else None
    out = kdbench(*command, *options, columns=columns)
    assert out.returncode == 0, out.stderr
    # A path longer than the terminal keeps a line of its own (never cut); every other line fits.
    assert all(
        cell_len(line.rstrip()) <= columns or " " not in line.strip()
        for line in out.stdout.splitlines()
    )
    assert "…" not in out.stdout
    if failed is not None:
        assert f"would remove {results / 'runs' / failed}" in " ".join(out.stdout.split())
        assert "1 item(s) would be removed" in out.stdout
    else:
        assert _widest(out.stdout) <= columns
    if command[0] == "show":
        plan_runs = json.loads(kdbench(*command, "--results", str(results), "--json").stdout)[
            "runs"
        ]
        assert all(r["run_id"] in out.stdout for r in plan_runs)
    if command == ["status"]:
        assert all(p.name in out.stdout for p in (results / "runs").iterdir())


@pytest.mark.e2e
def test_json_output_is_json_and_nothing_else(results):
    out = kdbench("compare", str(results), "--json")
    assert out.returncode == 0, out.stderr
    (table,) = json.loads(out.stdout)
    assert table["kind"] == "comparison" and table["recipe"] == "planted" and table["margin"] == 1.0
    assert table["summary"] == {
        "reproduced": 1,
        "not reproduced": 2,
        "inconclusive": 3,
        "failed": 0,
        "not run": 0,
    }
    cell = next(c for c in table["cells"] if (c["row"], c["column"]) == ("Student", "a"))
    assert cell["verdict"] == "reproduced" and cell["ci_low"] == pytest.approx(-0.188501, abs=1e-5)
    assert (
        next(c for c in table["cells"] if c["row"] == "Teacher")["ours_std"] is None
    )  # NaN → null
    shown = json.loads(
        kdbench(
            "show", "simkd-table1", "--profile", "smoke", "--results", str(results), "--json"
        ).stdout
    )
    assert (
        shown["kind"] == "plan"
        and len(shown["runs"]) == shown["total"]
        and shown["pairs"][0]["id"] == "wrn40-2_wrn40-1"
    )
    status = json.loads(kdbench("status", "--results", str(results), "--json").stdout)
    assert (
        status["kind"] == "status" and status["counts"]["done"] == 14 and len(status["runs"]) == 14
    )


@pytest.mark.e2e
def test_pairs_and_methods_filter_the_comparison(results):
    (table,) = json.loads(
        kdbench("compare", str(results), "--json", "--pairs", "a", "--methods", "KD,ce").stdout
    )
    assert {(c["row"], c["column"]) for c in table["cells"]} == {("Student", "a"), ("KD", "a")}
    bad = kdbench("compare", str(results), "--pairs", "zz")
    assert bad.returncode == 2 and "has no pair 'zz'; it has: a, b" in bad.stderr


def _fail_one(results: Path) -> str:
    """Turn KD × b's one finished trial into a failed run (its only trial): the cell then has no result."""
    p = plan(RECIPE, "full")
    cell = next(c for c in p.cells if (c.row, c.column) == ("KD", "b"))
    run = RunDir(results, cell.run_ids[0])
    run.result_file.unlink()
    atomic_write_json(
        run.failed_file, {"run_id": run.run_id, "error": "RuntimeError", "message": "boom"}
    )
    return run.run_id


def test_failed_cells_are_counted_as_failed_not_as_not_run(results):
    _fail_one(results)
    (comp,) = compare(results)
    assert summary(comp)["failed"] == 1 and summary(comp)["not run"] == 0
    assert "1 failed, 0 not run" in render.summary_text(comp)
    assert (
        render.compact_text(
            comp, comp.cells[(comp.cells["row"] == "KD") & (comp.cells["column"] == "b")].iloc[0]
        )
        == "✗ failed"
    )


def test_result_json_carries_the_source_commit():
    import torch
    from kdbench.train import loop
    from kdbench.train.distributed import SINGLE

    spec = next(iter(plan(RECIPE, "full").specs.values()))
    history = [record(1, 50.0, 80.0, images_per_s=10.0)]
    assert (
        loop._summarise(spec, history, torch.device("cpu"), 1.0, SINGLE).kdbench_commit
        == source_commit()
    )


@pytest.mark.e2e
def test_the_report_is_one_self_contained_page(results, tmp_path):
    page_path = tmp_path / "out" / "report.html"
    out = kdbench(
        "report",
        str(results.parent / "planted.yaml"),
        "--results",
        str(results),
        "-o",
        str(page_path),
    )
    assert out.returncode == 0, out.stderr
    page = page_path.read_text()
    assert "<style>" in page and not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2  # the plot and the training curves
    import base64

    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    for klass in ("reproduced", "above", "below", "inconclusive"):
        assert f'<td class="{klass}">' in page
    assert "Margin δ = <b>1</b>" in page and "✓ reproduced [-0.19, +0.29]" in page
    assert (
        "0123456789abcdef0123456789abcdef01234567" in page
        and "2.5.1+cu124 / 124" in page
        and "NVIDIA H200" in page
    )
    assert "bf16" in page and "1h30m" in page and "1.50" in page  # wall time and GPU-hours of a run
    assert "17 runs; 21.00 GPU-hours" in page and "Protocol <b>test</b>" in page
    if shutil.which("chromium"):  # optional: the page renders in a real browser
        shot = tmp_path / "shot.png"
        subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--screenshot={shot}",
                "--window-size=1400,2000",
                page_path.as_uri(),
            ],
            capture_output=True,
            timeout=120,
        )
        assert shot.is_file() and shot.stat().st_size > 10_000


def test_result_json_records_the_source_commit_of_a_checkout():
    top = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--show-toplevel"], capture_output=True, text=True
    )
    if top.returncode or Path(top.stdout.strip()).resolve() != ROOT:
        assert source_commit() is None
        return
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert source_commit() in (head, head + "+dirty")
