"""ImageNet recipes end to end on the synthetic ImageNet-shaped folder: smoke plan, cost, training runs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from kdbench import train
from kdbench.cli import app
from kdbench.cost import dataset_sizes, estimate
from kdbench.data.datasets.imagenet import SMOKE_IMAGENET_DATA
from kdbench.io import atomic_write_json
from kdbench.plan import (
    DataSpec,
    RunSpec,
    TeacherRef,
    TrainSpec,
    plan,
)
from kdbench.recipe import DatasetRef, load_recipe
from kdbench.train.compute import ComputeOptions
from kdbench.train.options import RunOptions
from typer.testing import CliRunner

DATA = {"num_classes": 4, "train_per_class": 16, "val_per_class": 8, "image_size": 32}


def spec(method: str, teacher: str | None = None, params: dict | None = None) -> RunSpec:
    return RunSpec(
        profile="smoke",
        model="resnet8",
        method=method,
        seed=1,
        method_params=params or {"ce_weight": 1.0, "kd_weight": 0.0, "kd_temperature": 4.0},
        teacher=TeacherRef(model="resnet8", run_id=teacher) if teacher else None,
        data=DataSpec(name="imagenet_synthetic", options=DATA),
        train=TrainSpec(
            epochs=2,
            batch_size=16,
            lr=0.05,
            milestones=(1,),
            lr_decay=0.1,
            momentum=0.9,
            nesterov=False,
            weight_decay=5e-4,
        ),
    )


def test_smoke_profile_of_an_imagenet_recipe_reads_the_synthetic_folder() -> None:
    recipe = load_recipe("simkd-table1")
    imagenet = recipe.model_copy(
        update={"dataset": DatasetRef(name="imagenet", options={"crop_scale": [0.1, 1.0]})}
    )
    smoke = plan(imagenet, "smoke").specs.values()
    assert {s.data.name for s in smoke} == {"imagenet_synthetic"}
    assert all(s.data.options == {**SMOKE_IMAGENET_DATA, "crop_scale": [0.1, 1.0]} for s in smoke)
    assert {s.data.name for s in plan(recipe, "smoke").specs.values()} == {
        "synthetic"
    }  # CIFAR recipes unchanged
    full = plan(imagenet, "full")
    assert dataset_sizes(next(iter(full.specs.values())).data) == (1_281_167, 50_000)

    def first_teacher_flops(image_size: int) -> float:
        options = {"image_size": image_size} if image_size != 224 else {}
        table = plan(
            recipe.model_copy(update={"dataset": DatasetRef(name="imagenet", options=options)}),
            "full",
        )
        first = min((s for s in table.specs.values() if s.teacher is None), key=lambda s: s.model)
        return estimate(table, [first.run_id]).train_flops

    assert first_teacher_flops(224) / first_teacher_flops(112) == pytest.approx(
        4.0, rel=0.05
    )  # FLOPs at the crop size
    assert dataset_sizes(DataSpec(name="imagenet_synthetic", options=DATA)) == (64, 32)


@pytest.mark.e2e
def test_teacher_and_student_train_on_the_image_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    results, data_dir = tmp_path / "results", tmp_path / "data"
    teacher = spec("ce")
    atomic_write_json(tmp_path / "teacher.json", teacher.model_dump(mode="json"))
    cli = CliRunner().invoke(
        app,
        [
            "train",
            str(tmp_path / "teacher.json"),
            "--results",
            str(results),
            "--device",
            "cpu",
            "--data-dir",
            str(data_dir),
            "--loader",
            "auto",
        ],
    )
    assert cli.exit_code == 0, cli.output
    student = spec(
        "kd", teacher.run_id, {"ce_weight": 0.5, "kd_weight": 0.5, "kd_temperature": 1.0}
    )
    with caplog.at_level(logging.INFO, logger="kdbench"):
        result = train.run(
            student,
            results,
            RunOptions(device="cpu", data_dir=data_dir, compute=ComputeOptions(teacher_cache="on")),
            show_progress=False,
        )
    assert "teacher cache not used" in caplog.text and "loader torch" in caplog.text
    assert result.epochs == 2 and not result.compute.teacher_cache
    assert 0.0 <= result.last_top1 <= 100.0


@pytest.mark.e2e
def test_smoke_imagenet_recipe_reproduces_with_two_ddp_ranks_on_cpu(tmp_path: Path) -> None:
    """Issue 6's end-to-end check: an ImageNet recipe's smoke profile (ImageNet models on the synthetic folder)
    through the local scheduler with 2 gloo ranks per run, then compare reads the table."""
    import json
    import os
    import subprocess
    import sys

    results, data_dir = tmp_path / "results", tmp_path / "data"
    env = {**os.environ, "COLUMNS": "200"}
    kdbench = [sys.executable, "-m", "kdbench"]
    proc = subprocess.run(
        [
            *kdbench,
            "reproduce",
            "dist-table9",
            "--profile",
            "smoke",
            "--pairs",
            "with_cls",
            "--methods",
            "DIST",
            "--gpus-per-run",
            "2",
            "--cpu-jobs",
            "2",
            "--results",
            str(results),
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "on cpu0+cpu1" in proc.stdout and "2 of 2 runs done" in proc.stdout
    finished = [json.loads(p.read_text()) for p in results.glob("runs/*/result.json")]
    assert sorted(r["model"] for r in finished) == ["imagenet/resnet18", "imagenet/resnet34"]
    assert all(r["world_size"] == 2 for r in finished)
    table = subprocess.run(
        [*kdbench, "compare", str(results), "--recipe", "dist-table9", "--format", "csv"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    ).stdout
    dist = next(line for line in table.splitlines() if ",DIST," in line and "with_cls" in line)
    assert ",1,1," in dist  # n = 1 of 1 planned run
