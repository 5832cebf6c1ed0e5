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
from kdbench.io import atomic_write_json
from kdbench.plan import plan
from kdbench.recipe import Recipe
from kdbench.results import render
from kdbench.results.compare import compare, summary
from kdbench.results.tables import record_table
from kdbench.store.records import RunResult
from kdbench.store.run_dir import RunDir

RECIPE = Recipe.model_validate(
    {
        "name": "planted",
        "paper": "Planted: a test paper",
        "table": "Table P",
        "title": "planted results",
        "source": "test",
        "protocol": {"name": "test", "follows": "test"},
        "dataset": {"name": "cifar100"},
        "training": {"epochs": 240, "batch_size": 64, "lr": 0.05, "milestones": [150, 180, 210]},
        "trials": 4,
        "paper_trials": 4,
        "teachers": {"t": {"model": "resnet32x4", "label": "ResNet-32x4"}},
        "columns": [
            {"id": "a", "teacher": "t", "student": "resnet8x4", "label": "ResNet-8x4"},
            {"id": "b", "teacher": "t", "student": "resnet20", "label": "ResNet-20"},
        ],
        "rows": [
            {
                "label": "Student",
                "method": "ce",
                "paper": {"a": "70.00 ± 0.20", "b": "70.00 ± 0.20"},
            },
            {
                "label": "KD",
                "method": "kd",
                "literature": "Hinton et al.",
                "paper": {"a": "72.00 ± 0.30", "b": 71.0},
            },
            {"label": "Teacher", "method": "teacher", "paper": {"a": 79.42, "b": 79.42}},
        ],
    }
)
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
    run.write_result(
        RunResult(
            best_top1=best,
            best_top5=99.0,
            best_epoch=200,  # checksummed, as a trainer writes it
            last_top1=best - 0.1,
            last_top5=99.0,
            epochs=240,
        )
    )


@pytest.fixture
def results(tmp_path) -> Path:
    plant(tmp_path)
    return tmp_path


def cells_of(results: Path, **kw) -> dict:
    (comp,) = compare(results, **kw)
    return {(r["row"], r["column"]): r for _, r in comp.cells.iterrows()}


def test_verdicts_follow_the_stated_tests(results):
    cells = cells_of(results)
    assert (
        cells[("Student", "a")]["verdict"] == "reproduced"
        and cells[("Student", "a")]["test"] == "Welch t"
    )
    assert cells[("KD", "a")]["verdict"] == "below" and cells[("KD", "a")]["p_value"] < 1e-4
    assert cells[("Student", "b")]["verdict"] == "above"
    assert cells[("KD", "b")]["verdict"] == "inconclusive"  # one trial
    assert (
        cells[("Teacher", "a")]["verdict"] == "inconclusive" and cells[("Teacher", "a")]["n"] == 1
    )
    assert (
        cells[("KD", "a")]["literature"] == "Hinton et al." and cells[("KD", "a")]["paper_n"] == 4
    )
    student_a = cells[("Student", "a")]
    assert student_a["ours_mean"] == pytest.approx(70.05) and student_a["delta"] == pytest.approx(
        0.05
    )
    (comp,) = compare(results)
    assert summary(comp) == {
        "reproduced": 1,
        "not reproduced": 2,
        "inconclusive": 3,
        "failed": 0,
        "not run": 0,
    }


def test_metric_last_uses_the_last_epoch(results):
    assert cells_of(results, metric="last")[("Student", "a")]["ours_mean"] == pytest.approx(69.95)


def test_every_format_carries_numbers_and_verdicts(results):
    (comp,) = compare(results)
    md = render.to_markdown(comp)
    assert (
        "✓ reproduced" in md
        and "▼ below" in md
        and "paper 72.00 ± 0.30 [lit.]" in md
        and "1 reproduced, 2 not reproduced" in md
    )
    latex = render.to_latex(comp)
    assert r"\begin{tabular}{lcc}" in latex and r"70.05$\pm$0.13" in latex
    page = render.to_html(comp)
    assert page.count("<tr>") == 4 and 'class="below"' in page
    rows = list(csv.DictReader(io.StringIO(render.to_csv([comp]))))
    assert len(rows) == 6
    required = [
        "recipe",
        "table",
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
        "verdict",
    ]
    assert set(required) <= set(rows[0])


def test_published_numbers_round_trip_into_the_csv(tmp_path):
    (comp,) = compare(tmp_path, recipe="simkd-table1")
    for row in comp.recipe.rows:
        for column, value in row.paper.items():
            cell = comp.cells[
                (comp.cells["row"] == row.label) & (comp.cells["column"] == column)
            ].iloc[0]
            assert cell["paper_mean"] == value.mean
            assert (math.isnan(cell["paper_std"]) and value.std is None) or cell[
                "paper_std"
            ] == value.std


def kdbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kdbench", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=300,
    )


@pytest.mark.e2e
def test_plot_is_a_png(results, tmp_path):
    out = tmp_path / "figs" / "table.png"
    proc = kdbench("compare", str(results), "--plot", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


@pytest.mark.e2e
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
    assert (
        "2 regressed cell(s)" in proc.stderr
        and "Student × a" in proc.stderr
        and "KD × b" in proc.stderr
    )
    assert "68.05 < baseline 70.05" in proc.stderr and "now no result" in proc.stderr
    proc = kdbench("compare", str(results), "--baseline", str(tmp_path / "missing.csv"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_margin_decides_and_is_printed_with_the_interval(results):
    # Student × a: 70.05 ± 0.1291 (n=4) against 70.00 ± 0.20 (n=4): Welch ν = 5.130178, SE = 0.119024,
    # t(0.95; 5.130178) by mpmath → 90% CI [−0.188501, +0.288501] (tests/test_verdict.py says how).
    cell = cells_of(results)[("Student", "a")]
    assert cell["margin"] == 1.0 and cell["ci_level"] == pytest.approx(0.9)
    assert (cell["ci_low"], cell["ci_high"]) == (
        pytest.approx(-0.188501, abs=1e-5),
        pytest.approx(0.288501, abs=1e-5),
    )
    assert (
        cells_of(results, margin=0.25)[("Student", "a")]["verdict"] == "inconclusive"
    )  # 0.2885 > 0.25
    # The recipe's own margin, and --margin over it.
    record_table(results, RECIPE.model_copy(update={"margin": 0.25}), "full", 4, {})
    assert cells_of(results)[("Student", "a")]["verdict"] == "inconclusive"
    assert cells_of(results, margin=0.3)[("Student", "a")]["verdict"] == "reproduced"
    (comp,) = compare(results)
    assert "margin δ = 0.25" in render.title(
        comp
    ) and "90% CI of ours − paper inside ±0.25" in render.title(comp)
    for text in (render.to_markdown(comp), render.to_latex(comp), render.to_html(comp)):
        assert "0.25" in text.split("\n\n")[0][:400]  # the header states δ
    rows = {(r["row"], r["column"]): r for r in csv.DictReader(io.StringIO(render.to_csv([comp])))}
    student = rows[("Student", "a")]
    assert (student["margin"], student["ci_low"], student["ci_high"]) == (
        "0.2500",
        "-0.1885",
        "0.2885",
    )
    assert (
        "90% CI of ours − paper [-0.19, +0.29] neither inside nor beyond ±0.25" in student["detail"]
    )
    # The paper's own SE (0.1, ν → 3) keeps the half-width above 2.353·0.1 = 0.235 > 0.25 − 0.05: never.
    assert (
        student["trials_needed"] == ""
        and "no number of trials of ours up to 1000" in student["detail"]
    )
    assert rows[("KD", "b")]["trials_needed"] == "" and rows[("KD", "b")]["detail"].startswith(
        "needs ≥ 2 trials"
    )


def test_cells_say_why_they_are_inconclusive(results):
    (comp,) = compare(results, margin=0.25)
    md = render.to_markdown(comp)
    assert "? inconclusive [-0.19, +0.29]; more trials will not settle it" in md
    assert "? inconclusive; needs ≥ 2 trials" in md  # KD × b: one trial, no published std
    assert "▼ below [" in md and "(p=" in md


def test_the_issue_example_in_a_table_is_not_reproduced(tmp_path):
    # Two trials at 74.0 ± 1.5 against 76.0 ± 0.3 over 4: Welch's p = 0.31 used to say "reproduced".
    p = plan(RECIPE, "full")
    recipe = RECIPE.model_copy(
        update={
            "rows": [
                RECIPE.rows[0].model_copy(
                    update={
                        "paper": {
                            "a": RECIPE.rows[0]
                            .paper["a"]
                            .model_copy(update={"mean": 76.0, "std": 0.3})
                        }
                    }
                )
            ]
            + RECIPE.rows[1:]
        }
    )
    record_table(tmp_path, recipe, "full", p.trials, {})
    cell = next(c for c in p.cells if (c.row, c.column) == ("Student", "a"))
    for run_id, value in zip(cell.run_ids, [72.93934, 75.06066]):  # mean 74.0, sample std 1.5
        _finish(tmp_path, p.specs[run_id], value)
    student = cells_of(tmp_path)[("Student", "a")]
    assert student["n"] == 2 and student["ours_std"] == pytest.approx(1.5, abs=1e-4)
    assert student["verdict"] == "inconclusive" and student["p_value"] == pytest.approx(
        0.3056, abs=1e-3
    )
    assert student["trials_needed"] == 9  # tests/test_verdict.py computes it by hand
    (comp,) = compare(tmp_path)
    assert "? inconclusive [-8.34, +4.34]; ≈9 trials settle it" in render.to_markdown(comp)
    assert (
        next(
            r for r in csv.DictReader(io.StringIO(render.to_csv([comp]))) if r["row"] == "Student"
        )["trials_needed"]
        == "9"
    )


def test_a_row_reads_its_own_epoch(results):
    # KD's published numbers are last-epoch ones: its cells read last_top1 (= best − 0.1 here), the others best.
    rows = [r.model_copy(update={"metric": "last"}) if r.label == "KD" else r for r in RECIPE.rows]
    record_table(results, RECIPE.model_copy(update={"rows": rows}), "full", 4, {})
    cells = cells_of(results)
    assert cells[("KD", "a")]["metric"] == "last" and cells[("KD", "a")][
        "ours_mean"
    ] == pytest.approx(67.95)
    assert cells[("Student", "a")]["metric"] == "best" and cells[("Student", "a")][
        "ours_mean"
    ] == pytest.approx(70.05)
    (comp,) = compare(results)
    assert "68.00 ± 0.13 (n=4) [last epoch]" not in render.to_markdown(comp)
    assert "67.95 ± 0.13 (n=4) [last epoch]" in render.to_markdown(comp)
    assert "(n=4) [best epoch]" not in render.to_markdown(comp)
    # --metric overrides every cell, the row's own included.
    overridden = cells_of(results, metric="best")
    assert overridden[("KD", "a")]["metric"] == "best" and overridden[("KD", "a")][
        "ours_mean"
    ] == pytest.approx(68.05)
    (comp,) = compare(results, metric="best")
    assert "[last epoch]" not in render.to_markdown(comp)


def test_a_row_and_a_column_that_disagree_on_the_metric_are_an_error():
    data = RECIPE.model_dump(mode="json")
    data["columns"][0]["metric"] = "best"
    data["rows"][1]["metric"] = "last"
    with pytest.raises(ValueError, match="a cell reads one epoch"):
        Recipe.model_validate(data)
    data["rows"][1]["metric"] = "best"
    agreed = Recipe.model_validate(data)
    assert agreed.cell_metric(agreed.rows[1], agreed.columns[0]) == "best"
    assert (
        agreed.cell_metric(agreed.rows[0], agreed.columns[1]) == agreed.metric
    )  # neither says: the recipe's


def test_bad_margin_and_alpha_are_errors(results):
    from kdbench.errors import KdbenchError

    with pytest.raises(KdbenchError, match="--margin"):
        compare(results, margin=0.0)
    with pytest.raises(KdbenchError, match="--alpha"):
        compare(results, alpha=0.5)


@pytest.mark.e2e
def test_cli_margin_reaches_the_csv_and_the_header(results):
    out = kdbench("compare", str(results), "--margin", "0.25", "--format", "csv")
    assert out.returncode == 0, out.stderr
    rows = {(r["row"], r["column"]): r for r in csv.DictReader(io.StringIO(out.stdout))}
    assert (
        rows[("Student", "a")]["margin"] == "0.2500"
        and rows[("Student", "a")]["verdict"] == "inconclusive"
    )
    assert (
        "margin δ = 0.25"
        in kdbench("compare", str(results), "--margin", "0.25", "--format", "markdown").stdout
    )
    bad = kdbench("compare", str(results), "--margin", "-1")
    assert bad.returncode == 2 and "--margin -1" in bad.stderr
