"""Cost before you launch: FLOPs of a plan, and GPU-hours priced from measured throughput."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kdbench import cost
from kdbench.io import atomic_write_json
from kdbench.plan import plan
from kdbench.recipe import load_recipe
from kdbench.store.run_dir import RunDir

from planted import finished


@pytest.fixture(scope="module")
def smoke_plan():
    return plan(load_recipe("simkd-table1"), "smoke")


def _finish(results: Path, spec, images_per_s: float, device: str) -> None:
    """A finished run as train.run leaves it, with the throughput it measured."""
    run = RunDir(results, spec.run_id)
    run.path.mkdir(parents=True)
    atomic_write_json(run.spec_file, spec.model_dump(mode="json"))
    atomic_write_json(
        run.result_file,
        finished(
            run_id=spec.run_id, train_images_per_s=images_per_s, device="cuda", device_name=device
        ).to_json(),
    )


def _per_image(spec) -> float:
    size, classes = spec.data.options["image_size"], spec.data.options["num_classes"]
    teacher = cost.forward_flops(spec.teacher.model, classes, size) if spec.teacher else 0.0
    return 3 * cost.forward_flops(spec.model, classes, size) + teacher


def test_measured_runs_price_the_same_pair_exactly_and_others_by_median_flops(tmp_path, smoke_plan):
    students = [s for s in smoke_plan.ordered() if s.teacher is not None]
    kd = next(s for s in students if s.method == "kd")
    _finish(tmp_path, kd, 1000.0, "GPU-X")
    measured = cost.measured_throughputs(tmp_path)
    assert [(m.device, m.method, m.images_per_s) for m in measured] == [("GPU-X", "kd", 1000.0)]
    assert measured[0].flops_per_image == pytest.approx(_per_image(kd))

    other = next(
        s
        for s in students
        if s.method != "kd" and (s.model, s.teacher.model) != (kd.model, kd.teacher.model)
    )
    [estimate] = cost.estimate_by_device(smoke_plan, [kd.run_id, other.run_id], measured)
    rate = 1000.0 * _per_image(kd)
    flops = [cost.estimate(smoke_plan, [rid]).train_flops for rid in (kd.run_id, other.run_id)]
    assert estimate.device == "GPU-X" and (estimate.exact_runs, estimate.scaled_runs) == (1, 1)
    assert estimate.hours == pytest.approx(sum(flops) / rate / 3600)


def test_bench_records_count_per_device(tmp_path, smoke_plan):
    spec = next(s for s in smoke_plan.ordered() if s.method == "kd")
    record = {
        "device": "GPU-Y",
        "paths": {"kdbench": {"best": 500.0, "flops_per_image": 2e9}},
        "config": {"method": "kd", "teacher": spec.teacher.model, "student": spec.model},
    }
    (tmp_path / cost.BENCH_DIR).mkdir()
    (tmp_path / cost.BENCH_DIR / "r.json").write_text(json.dumps(record))
    _finish(tmp_path, spec, 100.0, "GPU-X")
    estimates = {
        e.device: e
        for e in cost.estimate_by_device(
            smoke_plan, [spec.run_id], cost.measured_throughputs(tmp_path)
        )
    }
    flops = cost.estimate(smoke_plan, [spec.run_id]).train_flops
    assert estimates["GPU-Y"].hours == pytest.approx(flops / (500.0 * 2e9) / 3600)
    assert estimates["GPU-X"].hours == pytest.approx(flops / (100.0 * _per_image(spec)) / 3600)


def test_imported_and_unfinished_runs_are_not_measurements(tmp_path, smoke_plan):
    spec = smoke_plan.ordered()[0]
    _finish(tmp_path, spec, 0.0, "GPU-X")  # e.g. an imported teacher: no training throughput
    RunDir(tmp_path, "half-done").path.mkdir(parents=True)
    assert cost.measured_throughputs(tmp_path) == []


@pytest.mark.e2e
def test_show_prices_the_remaining_runs_from_measurements(tmp_path, smoke_plan):
    import subprocess
    import sys

    def show() -> str:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "kdbench",
                "show",
                "simkd-table1",
                "--profile",
                "smoke",
                "--results",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            check=True,
            env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"},
        ).stdout

    assert "No measured throughput" in show()
    _finish(tmp_path, next(s for s in smoke_plan.ordered() if s.method == "kd"), 100.0, "GPU-X")
    out = " ".join(show().split())
    remaining = len(smoke_plan.specs) - 1  # the measured run is done
    assert "Estimate on GPU-X:" in out and "GPU-hours for the remaining runs" in out
    assert (
        f"0 priced by measurements of the same method and pair, {remaining} by the median achieved"
        in out
    )
