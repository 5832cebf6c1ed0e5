"""Precision is part of a result: the ``faithful`` option and its TF32 flags, what ``result.json`` records, how the
option travels to the trainer (CLI flags, worker JSON, SLURM jobs), and compare's marking of cells that pool trials
of different precision."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from kdbench import cli, train
from kdbench.errors import KdbenchError
from kdbench.execute.local import worker
from kdbench.execute.slurm.jobs import TrainJob
from kdbench.io import atomic_write_json
from kdbench.plan import DataSpec, RunSpec, TrainSpec, plan
from kdbench.recipe import Recipe
from kdbench.results import render
from kdbench.results.compare import compare
from kdbench.results.tables import record_table
from kdbench.store.run_dir import RunDir
from kdbench.train.compute import FP32_MATH, ComputeOptions, fp32_math_flags, set_fp32_math
from kdbench.train.options import RunOptions
from typer.testing import CliRunner

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a CUDA device object needs no GPU


@pytest.fixture
def restore_tf32():
    """The TF32 flags are global to the process: put back what they were."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_faithful_turns_tf32_off_for_convolutions_and_matmuls(restore_tf32):
    set_fp32_math("tf32", "tf32")  # start from everything allowed
    record = ComputeOptions(precision="faithful").resolve(CUDA).apply_fp32_math(CUDA)
    assert fp32_math_flags() == {
        "cudnn_allow_tf32": False,
        "matmul_allow_tf32": False,
        "float32_matmul_precision": "highest",
    }
    assert (record.cudnn_allow_tf32, record.matmul_allow_tf32, record.float32_matmul_precision) == (
        False,
        False,
        "highest",
    )
    assert (
        record.precision == "faithful"
        and record.autocast_dtype is None
        and record.loss_dtype == "float32"
    )


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fp32_and_bf16_keep_pytorchs_defaults_tf32_convolutions_and_ieee_matmuls(
    precision, restore_tf32
):
    set_fp32_math("ieee", "tf32")  # the opposite of PyTorch's defaults
    record = ComputeOptions(precision=precision).resolve(CUDA).apply_fp32_math(CUDA)
    assert (record.cudnn_allow_tf32, record.matmul_allow_tf32, record.float32_matmul_precision) == (
        True,
        False,
        "highest",
    )
    assert record.autocast_dtype == ("bfloat16" if precision == "bf16" else None)
    assert FP32_MATH[precision] == ("tf32", "ieee")


def test_on_cpu_no_flag_is_set_and_the_tf32_fields_are_none(restore_tf32):
    set_fp32_math("tf32", "tf32")
    record = ComputeOptions(precision="faithful").resolve(CPU).apply_fp32_math(CPU)
    assert (record.cudnn_allow_tf32, record.matmul_allow_tf32, record.float32_matmul_precision) == (
        None,
        None,
        None,
    )
    assert fp32_math_flags()["matmul_allow_tf32"] is True  # untouched


def test_precisions_resolve_per_device_and_faithful_never_autocasts():
    assert (
        ComputeOptions().resolve(CUDA).precision == "bf16"
        and ComputeOptions().resolve(CPU).precision == "fp32"
    )
    faithful = ComputeOptions(precision="faithful")
    assert faithful.resolve(CUDA).precision == faithful.resolve(CPU).precision == "faithful"
    with faithful.resolve(CPU).autocast(CPU):
        assert not torch.is_autocast_enabled("cpu")
    with ComputeOptions(precision="bf16").resolve(CPU).autocast(CPU):
        assert (
            torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        )
    with pytest.raises(KdbenchError, match="unknown precision 'tf32'"):
        ComputeOptions(precision="tf32")


# --- result.json ---------------------------------------------------------------------------------------------------


def tiny_spec(seed: int = 1) -> RunSpec:
    dataset = DataSpec(
        name="synthetic",
        options={"num_classes": 10, "image_size": 32, "train_size": 16, "test_size": 8},
    )
    schedule = TrainSpec(
        epochs=1,
        batch_size=8,
        lr=0.05,
        milestones=(),
        lr_decay=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=5e-4,
    )
    return RunSpec(
        profile="smoke",
        model="resnet8",
        method="ce",
        method_params={},
        teacher=None,
        data=dataset,
        train=schedule,
        seed=seed,
    )


@pytest.mark.parametrize(
    "precision, autocast", [("fp32", None), ("bf16", "bfloat16"), ("faithful", None)]
)
def test_result_json_records_the_precision_on_cpu(tmp_path, precision, autocast):
    result = train.run(
        tiny_spec(),
        tmp_path,
        RunOptions(device="cpu", compute=ComputeOptions(precision=precision)),
        show_progress=False,
    )
    written = json.loads(RunDir(tmp_path, tiny_spec().run_id).result_file.read_text())
    assert (
        written["precision"]
        == result.precision.model_dump()
        == {
            "precision": precision,
            "autocast_dtype": autocast,
            "cudnn_allow_tf32": None,
            "matmul_allow_tf32": None,
            "float32_matmul_precision": None,
            "loss_dtype": "float32",
        }
    )
    assert written["compute"]["precision"] == precision


# --- the option's way to the trainer -------------------------------------------------------------------------------


def captured_compute(monkeypatch) -> list[ComputeOptions]:
    seen: list[ComputeOptions] = []

    def fake_run(spec, results, options, **kwargs):
        seen.append(options.compute)
        return {"best_top1": 0.0, "last_top1": 0.0, "run_id": spec.run_id}

    monkeypatch.setattr(train, "run", fake_run)
    return seen


def test_faithful_travels_through_the_train_flags(tmp_path, monkeypatch):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(tiny_spec().model_dump(mode="json")))
    seen = captured_compute(monkeypatch)
    flags = RunOptions(
        device="cpu",
        compute=ComputeOptions(precision="faithful", channels_last=False, compile=False),
    ).to_argv()
    assert flags[flags.index("--precision") + 1] == "faithful"
    outcome = CliRunner().invoke(
        cli.app, ["train", str(spec_file), "--results", str(tmp_path), "--device", "cpu", *flags]
    )
    assert seen and seen[0].precision == "faithful", outcome.output


def test_faithful_travels_through_the_worker_request_and_slurm_options(tmp_path, monkeypatch):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(tiny_spec().model_dump(mode="json")))
    seen = captured_compute(monkeypatch)
    request = {
        "spec_file": str(spec_file),
        "results": str(tmp_path),
        "options": RunOptions(device="cpu", compute=ComputeOptions(precision="faithful")).to_json(),
    }
    worker.serve(io.StringIO(json.dumps(request) + "\n"), io.StringIO())
    atomic_write_json(
        RunDir(tmp_path, tiny_spec().run_id).spec_file, tiny_spec().model_dump(mode="json")
    )
    TrainJob(
        str(tmp_path),
        options=RunOptions(device="cpu", compute=ComputeOptions(precision="faithful")).to_json(),
    )._train(RunDir(tmp_path, tiny_spec().run_id))
    assert [c.precision for c in seen] == ["faithful", "faithful"]


# --- compare ---------------------------------------------------------------------------------------------------------

RECIPE = Recipe.model_validate(
    {
        "name": "precisions",
        "paper": "A test paper",
        "table": "Table P",
        "title": "planted results",
        "source": "test",
        "protocol": {"name": "test", "follows": "test"},
        "dataset": {"name": "cifar100"},
        "training": {"epochs": 240, "batch_size": 64, "lr": 0.05, "milestones": [150, 180, 210]},
        "trials": 2,
        "paper_trials": 2,
        "teachers": {"t": {"model": "resnet32x4", "label": "ResNet-32x4"}},
        "columns": [{"id": "a", "teacher": "t", "student": "resnet8x4", "label": "ResNet-8x4"}],
        "rows": [
            {"label": "Student", "method": "ce", "paper": {"a": "70.00 ± 0.20"}},
            {"label": "KD", "method": "kd", "paper": {"a": "72.00 ± 0.30"}},
        ],
    }
)


def planted(results: Path, precisions: dict[str, list[str | None]]) -> None:
    """Finished trials of each row with the given precisions (``None``: a result.json written before the record)."""
    p = plan(RECIPE, "full")
    record_table(results, RECIPE, "full", p.trials, {})
    for cell in p.cells:
        for run_id, precision in zip(cell.run_ids, precisions.get(cell.row, [])):
            run = RunDir(results, run_id)
            atomic_write_json(run.spec_file, p.specs[run_id].model_dump(mode="json"))
            result = {
                "best_top1": 70.0,
                "best_top5": 99.0,
                "best_epoch": 200,
                "last_top1": 70.0,
                "last_top5": 99.0,
                "epochs": 240,
                "compute": {"precision": precision or "bf16"},
            }
            if precision is not None:
                result["precision"] = {"precision": precision, "autocast_dtype": None}
            atomic_write_json(run.result_file, result)


def test_compare_marks_a_cell_that_pools_precisions(tmp_path):
    planted(tmp_path, {"Student": ["bf16", "faithful"], "KD": [None, "bf16"]})
    (comp,) = compare(tmp_path)
    cells = {r["row"]: r for _, r in comp.cells.iterrows()}
    assert cells["Student"]["precision"] == "bf16+faithful"
    assert cells["KD"]["precision"] == "bf16"  # an older result.json: its compute record says bf16
    assert "[mixed precision: bf16+faithful]" in render.ours_text(comp, cells["Student"])
    assert "mixed precision" not in render.ours_text(comp, cells["KD"])
    assert "WARNING: 1 cell pool trials of different precision" in render.summary_text(comp)
    assert "[mixed precision: bf16+faithful]" in render.to_markdown(comp)
    rows = {r["row"]: r for r in csv.DictReader(io.StringIO(render.to_csv([comp])))}
    assert rows["Student"]["precision"] == "bf16+faithful" and rows["KD"]["precision"] == "bf16"


def test_one_precision_is_not_marked(tmp_path):
    planted(tmp_path, {"Student": ["faithful", "faithful"]})
    (comp,) = compare(tmp_path)
    cells = {r["row"]: r for _, r in comp.cells.iterrows()}
    assert (
        cells["Student"]["precision"] == "faithful" and cells["KD"]["precision"] == ""
    )  # KD: nothing finished
    assert "WARNING" not in render.summary_text(comp)


def test_a_run_resumes_only_in_the_precision_it_started_in(tmp_path):
    """One run, one precision: a checkpoint trained in fp32 is not resumed in bf16 (the result would pool both)."""
    spec = tiny_spec()
    train.run(
        spec,
        tmp_path,
        RunOptions(device="cpu", compute=ComputeOptions(precision="fp32")),
        show_progress=False,
    )
    run = RunDir(tmp_path, spec.run_id)
    run.result_file.unlink()  # as if interrupted after its last checkpoint
    with pytest.raises(
        KdbenchError,
        match="trained in precision fp32, and this run asks for bf16: resume it with --precision fp32",
    ):
        train.run(
            spec,
            tmp_path,
            RunOptions(device="cpu", compute=ComputeOptions(precision="bf16")),
            show_progress=False,
        )
    resumed = train.run(
        spec,
        tmp_path,
        RunOptions(device="cpu", compute=ComputeOptions(precision="fp32")),
        show_progress=False,
    )
    assert resumed.precision.precision == "fp32"


def test_reproduce_names_the_finished_runs_it_reuses_from_another_precision(tmp_path):
    from kdbench.execute.reproduce import reused_in_other_precisions

    planted(tmp_path, {"Student": ["bf16", "faithful"], "KD": [None]})
    table = plan(RECIPE, "full")
    other = reused_in_other_precisions(table.ordered(), tmp_path, "faithful")
    assert sorted(other.values()) == [
        "bf16",
        "bf16",
    ]  # the Student's bf16 trial and KD's older bf16 result
    assert reused_in_other_precisions(table.ordered(), tmp_path, "bf16") == {
        next(c for c in table.cells if c.row == "Student").run_ids[1]: "faithful"
    }
