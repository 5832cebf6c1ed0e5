"""compare on planted results with known means: verdicts, every format, the plot, regression mode."""

from __future__ import annotations

import csv
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdbench.plan import plan
from kdbench.recipe import Recipe
from kdbench.results import render
from kdbench.results.compare import compare, summary
from kdbench.results.store import RunDir, atomic_write_json
from kdbench.results.tables import record_table

RECIPE = Recipe.model_validate({
    "name": "planted", "paper": "Planted: a test paper", "table": "Table P", "title": "planted results", "source": "test",
    "protocol": {"name": "test", "follows": "test"}, "dataset": {"name": "cifar100"},
    "training": {"epochs": 240, "batch_size": 64, "lr": 0.05, "milestones": [150, 180, 210]},
    "trials": 4, "paper_trials": 4,
    "teachers": {"t": {"model": "resnet32x4", "label": "ResNet-32x4"}},
    "columns": [{"id": "a", "teacher": "t", "student": "resnet8x4", "label": "ResNet-8x4"},
                {"id": "b", "teacher": "t", "student": "resnet20", "label": "ResNet-20"}],
    "rows": [
        {"label": "Student", "method": "ce", "paper": {"a": "70.00 ± 0.20", "b": "70.00 ± 0.20"}},
        {"label": "KD", "method": "kd", "literature": "Hinton et al.", "paper": {"a": "72.00 ± 0.30", "b": 71.0}},
        {"label": "Teacher", "method": "teacher", "paper": {"a": 79.42, "b": 79.42}},
    ],
})
PLANTED = {  # (row, column) → best top-1 of each trial
    ("Student", "a"): [70.1, 69.9, 70.0, 70.2],  # reproduced
    ("KD", "a"): [68.0, 68.2, 67.9, 68.1],  # below
    ("Student", "b"): [75.0, 75.5, 75.2, 74.9],  # above
    ("KD", "b"): [71.3],  # one trial: inconclusive
}


def plant(results: Path) -> None:
    p = plan(RECIPE, "full")
    record_table(results, RECIPE, "full", p.trials, {})
    cells = {(c.row, c.column): c for c in p.cells}
    for key, values in PLANTED.items():
        for run_id, value in zip(cells[key].run_ids, values):
            _finish(results, p.specs[run_id], value)
    teacher = cells[("Teacher", "a")].run_ids[0]
    _finish(results, p.specs[teacher], 79.0)


def _finish(results: Path, spec, best: float) -> None:
    run = RunDir(results, spec.run_id)
    atomic_write_json(run.spec_file, spec.model_dump(mode="json"))
    atomic_write_json(run.result_file, {"best_top1": best, "best_top5": 99.0, "best_epoch": 200,
                                        "last_top1": best - 0.1, "last_top5": 99.0, "epochs": 240})


@pytest.fixture
def results(tmp_path) -> Path:
    plant(tmp_path)
    return tmp_path


def cells_of(results: Path, **kw) -> dict:
    (comp,) = compare(results, **kw)
    return {(r["row"], r["column"]): r for _, r in comp.cells.iterrows()}


def test_verdicts_follow_the_stated_tests(results):
    cells = cells_of(results)
    assert cells[("Student", "a")]["verdict"] == "reproduced" and cells[("Student", "a")]["test"] == "Welch t"
    assert cells[("KD", "a")]["verdict"] == "below" and cells[("KD", "a")]["p_value"] < 1e-4
    assert cells[("Student", "b")]["verdict"] == "above"
    assert cells[("KD", "b")]["verdict"] == "inconclusive"  # one trial
    assert cells[("Teacher", "a")]["verdict"] == "inconclusive" and cells[("Teacher", "a")]["n"] == 1
    assert cells[("KD", "a")]["literature"] == "Hinton et al." and cells[("KD", "a")]["paper_n"] == 4
    student_a = cells[("Student", "a")]
    assert student_a["ours_mean"] == pytest.approx(70.05) and student_a["delta"] == pytest.approx(0.05)
    (comp,) = compare(results)
    assert summary(comp) == {"reproduced": 1, "not reproduced": 2, "inconclusive": 3, "not run": 0}


def test_metric_last_uses_the_last_epoch(results):
    assert cells_of(results, metric="last")[("Student", "a")]["ours_mean"] == pytest.approx(69.95)


def test_every_format_carries_numbers_and_verdicts(results):
    (comp,) = compare(results)
    md = render.to_markdown(comp)
    assert "✓ reproduced" in md and "▼ below" in md and "paper 72.00 ± 0.30 [lit.]" in md and "1 reproduced, 2 not reproduced" in md
    latex = render.to_latex(comp)
    assert r"\begin{tabular}{lcc}" in latex and r"70.05$\pm$0.13" in latex
    page = render.to_html(comp)
    assert page.count("<tr>") == 4 and 'class="below"' in page
    rows = list(csv.DictReader(io.StringIO(render.to_csv([comp]))))
    assert len(rows) == 6
    required = "recipe,table,teacher,student,method,metric,paper_mean,paper_std,ours_mean,ours_std,n,delta,verdict".split(",")
    assert set(required) <= set(rows[0])


def test_published_numbers_round_trip_into_the_csv(tmp_path):
    (comp,) = compare(tmp_path, recipe="simkd-table1")
    for row in comp.recipe.rows:
        for column, value in row.paper.items():
            cell = comp.cells[(comp.cells["row"] == row.label) & (comp.cells["column"] == column)].iloc[0]
            assert cell["paper_mean"] == value.mean
            assert (math.isnan(cell["paper_std"]) and value.std is None) or cell["paper_std"] == value.std


def kdbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdbench", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=300)


def test_plot_is_a_png(results, tmp_path):
    out = tmp_path / "figs" / "table.png"
    proc = kdbench("compare", str(results), "--plot", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_regression_mode_fails_on_a_planted_regression(results, tmp_path):
    baseline = tmp_path / "baseline.csv"
    assert kdbench("compare", str(results), "--format", "csv", "-o", str(baseline)).returncode == 0
    assert kdbench("compare", str(results), "--baseline", str(baseline)).returncode == 0
    # Plant a regression: every Student × a trial loses 2 points; one KD × b run disappears.
    p = plan(RECIPE, "full")
    cells = {(c.row, c.column): c for c in p.cells}
    for run_id, value in zip(cells[("Student", "a")].run_ids, PLANTED[("Student", "a")]):
        _finish(results, p.specs[run_id], value - 2.0)
    RunDir(results, cells[("KD", "b")].run_ids[0]).result_file.unlink()
    proc = kdbench("compare", str(results), "--baseline", str(baseline), "--tolerance", "1.0")
    assert proc.returncode == 3
    assert "2 regressed cell(s)" in proc.stderr and "Student × a" in proc.stderr and "KD × b" in proc.stderr
    assert "68.05 < baseline 70.05" in proc.stderr and "now no result" in proc.stderr
    proc = kdbench("compare", str(results), "--baseline", str(tmp_path / "missing.csv"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
