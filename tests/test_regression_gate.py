"""The CI regression gate (`compare --baseline`) fails closed: every baseline cell must be found again.

Each case below passed as "no regression" before the gate checked that the baseline's cells were found:
another profile, another metric, a renamed recipe, a reproduction that finished no run.
"""

from __future__ import annotations

import pandas as pd
import pytest
from kdbench.plan import plan
from kdbench.results.tables import record_table
from kdbench.store.run_dir import RunDir

from test_compare import RECIPE, kdbench, plant

pytestmark = pytest.mark.e2e  # every case runs `kdbench compare` in subprocesses


@pytest.fixture
def gate(tmp_path):
    """A planted results directory and a baseline CSV written from it."""
    results = tmp_path / "results"
    plant(results)
    baseline = tmp_path / "baseline.csv"
    assert kdbench("compare", str(results), "--format", "csv", "-o", str(baseline)).returncode == 0
    return results, baseline


def _edit(baseline, **column_values) -> None:
    frame = pd.read_csv(baseline)
    for column, value in column_values.items():
        frame[column] = value
    frame.to_csv(baseline, index=False)


def test_the_same_results_pass_and_say_how_many_cells_were_checked(gate):
    results, baseline = gate
    proc = kdbench("compare", str(results), "--baseline", str(baseline))
    assert proc.returncode == 0, proc.stderr
    assert "no regression" in proc.stderr and "checked" in proc.stderr


@pytest.mark.parametrize(
    "edit, why",
    [
        ({"profile": "ci"}, "a baseline of another profile"),
        ({"recipe": "planted-renamed"}, "a renamed recipe"),
        ({"metric": "last"}, "a baseline of another metric"),
    ],
)
def test_a_baseline_whose_cells_are_not_found_fails_and_names_them(gate, edit, why):
    results, baseline = gate
    _edit(baseline, **edit)
    proc = kdbench("compare", str(results), "--baseline", str(baseline))
    assert proc.returncode == 3, why
    assert "baseline cell(s) not found" in proc.stderr and "Student × a" in proc.stderr, proc.stderr
    assert "--allow-missing" in proc.stderr
    assert (
        kdbench("compare", str(results), "--baseline", str(baseline), "--allow-missing").returncode
        == 0
    )


def test_comparing_under_another_metric_than_the_baseline_fails(gate):
    results, baseline = gate
    proc = kdbench("compare", str(results), "--metric", "last", "--baseline", str(baseline))
    assert proc.returncode == 3 and "not found" in proc.stderr


def test_a_reproduction_that_finished_no_run_fails(tmp_path, gate):
    _, baseline = gate
    crashed = tmp_path / "crashed"  # the table was recorded, then every run failed or never started
    record_table(crashed, RECIPE, "full", plan(RECIPE, "full").trials, {})
    proc = kdbench("compare", str(crashed), "--baseline", str(baseline))
    assert proc.returncode == 3 and "now no result" in proc.stderr
    empty = tmp_path / "empty"  # reproduce crashed before it recorded the table
    empty.mkdir()
    assert kdbench("compare", str(empty), "--baseline", str(baseline)).returncode != 0


def test_a_partly_missing_table_is_a_regression_not_a_pass(gate):
    results, baseline = gate
    p = plan(RECIPE, "full")
    for cell in p.cells:
        if cell.column == "b":
            for run_id in cell.run_ids:
                RunDir(results, run_id).result_file.unlink(missing_ok=True)
    proc = kdbench("compare", str(results), "--baseline", str(baseline))
    assert proc.returncode == 3 and "× b" in proc.stderr


def test_a_baseline_with_no_result_at_all_is_refused(gate):
    results, baseline = gate
    _edit(baseline, n=0)
    proc = kdbench("compare", str(results), "--baseline", str(baseline))
    assert proc.returncode == 2 and "would check nothing" in proc.stderr
