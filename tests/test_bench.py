"""`kdbench bench` end to end with tiny settings (no timing assertions: the host is shared and noisy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from kdbench import methods, models
from kdbench.tools.bench import BenchConfig, bench, forward_flops
from kdbench.train.compute import ComputeOptions

TINY = [
    "--teacher",
    "resnet8",
    "--student",
    "resnet8",
    "--images",
    "8",
    "--batch-size",
    "4",
    "--steps",
    "2",
    "--rounds",
    "1",
    "--warmup",
    "0",
]


@pytest.mark.e2e
def test_bench_cli_prints_both_paths_and_the_ratio(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdbench",
            "bench",
            *TINY,
            "--results",
            str(tmp_path),
            "--json",
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "ratio kdbench / reference: best" in proc.stdout and "unknown peak" in proc.stdout
    assert "teacher cache built in" in proc.stdout and "glibc malloc settings:" in proc.stdout
    report = json.loads(out.read_text())
    assert set(report["paths"]) == {"kdbench", "reference"} and report["ratio_best"] > 0
    # The cached path skips the teacher's forward pass: its FLOPs per image are the student's training FLOPs only.
    assert (
        report["paths"]["kdbench"]["flops_per_image"]
        < report["paths"]["reference"]["flops_per_image"]
    )


def test_bench_runs_the_teacher_live_for_methods_that_need_its_features(tmp_path):
    config = BenchConfig(
        teacher="resnet8",
        student="resnet8",
        method="fitnet",
        batch_size=4,
        steps=1,
        rounds=1,
        warmup=0,
        images=8,
        results=tmp_path,
        compute=ComputeOptions(),
    )
    report = bench(config)
    assert report.teacher_cache.startswith("not used") and not list(
        tmp_path.glob("teacher_cache/*.npy")
    )
    assert report.kdbench.flops_per_image == report.reference.flops_per_image
    assert len(report.kdbench.images_per_s) == len(report.reference.images_per_s) == 1


def test_bench_measures_mlkd_with_strong_views_on_both_paths(tmp_path, monkeypatch):
    """MLKD: the reference path's loader adds a per-sample PIL strong view, kdbench's makes them batched."""
    seen = []
    original = methods.get("mlkd").distill

    def spy(self, student, teacher, step):
        seen.append(step.strong.shape)
        return original(self, student, teacher, step)

    monkeypatch.setattr(methods.get("mlkd"), "distill", spy)
    config = BenchConfig(
        teacher="resnet8",
        student="resnet8",
        method="mlkd",
        batch_size=4,
        steps=1,
        rounds=1,
        warmup=0,
        images=8,
        results=tmp_path,
        compute=ComputeOptions(),
    )
    report = bench(config)
    assert report.teacher_cache.startswith("not used")
    assert (
        seen == [torch.Size([4, 3, 32, 32])] * 2
    )  # one step per path, each with a batch of strong views
    forward = forward_flops(
        models.create("resnet8", num_classes=100), 32
    )  # synthetic data: 100 classes, 32 px
    assert (
        report.kdbench.flops_per_image
        == report.reference.flops_per_image
        == 2 * (3 * forward + forward)
    )
