"""``--runs-per-gpu auto``: the per-run memory estimate and the runs-per-GPU formula (fake numbers, no GPU);
CPU slots' malloc settings; compute options reaching the train command. Free memory and GPU labels:
test_gpu_env.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from kdbench.execute.local import executor as local
from kdbench.execute.local import packing
from kdbench.execute.local.packing import (
    CONTEXT_BYTES,
    WORKSPACE_BYTES,
    Footprint,
    run_bytes,
    runs_per_gpu,
)
from kdbench.train.compute import CPU_MALLOC_ENV, ComputeOptions
from kdbench.train.options import RunOptions

GIB = 1 << 30


def test_run_bytes_counts_weights_activations_buffers_and_context():
    fp = Footprint(
        student_params=1_000_000,
        teacher_params=2_000_000,
        student_activations=100_000,
        teacher_activations=300_000,
        batch_size=64,
        dataset_bytes=7,
        teacher_cache_bytes=11,
        method_bytes=13,
    )
    expected = (
        16 * 1_000_000
        + 4 * 2_000_000
        + 64 * (8 * 100_000 + 4 * 300_000)
        + 7
        + 11
        + 13
        + CONTEXT_BYTES
        + WORKSPACE_BYTES
    )
    assert run_bytes(fp) == expected


@pytest.mark.parametrize(
    ("free", "per_run", "expected"),
    [
        (80 * GIB, 2 * GIB, 8),  # 32 would fit: capped at MAX_RUNS_PER_GPU
        (10 * GIB, 2 * GIB, 4),  # 0.8 · 10 / 2 = 4
        (9 * GIB, 2 * GIB, 3),  # 0.8 · 9 / 2 = 3.6 → 3
        (
            1 * GIB,
            2 * GIB,
            1,
        ),  # never below one run: a run that does not fit fails with CUDA's own message
        (80 * GIB, 2 * GIB, 2),  # with max_runs=2
    ],
)
def test_runs_per_gpu_formula(free, per_run, expected):
    kwargs = {"max_runs": 2} if expected == 2 else {}
    assert runs_per_gpu(free, per_run, **kwargs) == expected


def test_model_size_matches_the_published_parameter_counts():
    params, activations = packing.model_size("resnet8x4", 100, 32)
    assert params == 1_233_540 and 500_000 < activations < 2_000_000


def kd_spec(method: str = "kd", data: str = "cifar100", **params):
    from kdbench.plan import DataSpec, RunSpec, TeacherRef, TrainSpec

    return RunSpec(
        profile="full",
        model="resnet8x4",
        method=method,
        method_params=params,
        seed=0,
        teacher=TeacherRef(model="resnet32x4", run_id="t"),
        data=DataSpec(name=data),
        train=TrainSpec(
            epochs=240,
            batch_size=64,
            lr=0.05,
            milestones=(),
            lr_decay=0.1,
            momentum=0.9,
            nesterov=False,
            weight_decay=5e-4,
        ),
    )


def test_the_estimate_counts_the_teacher_cache_and_the_resident_dataset():
    """CIFAR-100 KD: the epoch's fp32 (N, 100) teacher logits (train/teacher_cache.py; its whole table stays on the host)
    and the tensor loader's padded uint8 train split (40×40) plus test split (32×32); --teacher-cache off drops
    only the logits."""
    on, off = packing.footprint(kd_spec()), packing.footprint(kd_spec(), teacher_cache="off")
    assert on.teacher_cache_bytes == 4 * 50_000 * 100  # 20 MB (not the 3.24 GB table)
    assert on.dataset_bytes == off.dataset_bytes == 50_000 * 3 * 40 * 40 + 10_000 * 3 * 32 * 32
    assert off.teacher_cache_bytes == 0 and run_bytes(on) - run_bytes(off) == on.teacher_cache_bytes
    fitnet = packing.footprint(kd_spec("fitnet"))  # reads features: no cache
    assert fitnet.teacher_cache_bytes == 0 and fitnet.dataset_bytes == on.dataset_bytes


def test_the_estimate_counts_crd_banks_and_sampling_transients():
    crd = packing.footprint(kd_spec("crd"))
    assert crd.method_bytes == 2 * 4 * 50_000 * 128 + 64 * 50_000 * packing.SAMPLE_PAIR_BYTES
    assert (
        packing.footprint(kd_spec("crd", feat_dim=64)).method_bytes
        == 2 * 4 * 50_000 * 64 + 64 * 50_000 * 25
    )


def test_image_folders_are_not_resident():
    fp = packing.footprint(kd_spec(data="imagenet_synthetic"))
    assert fp.dataset_bytes == fp.teacher_cache_bytes == 0


def test_cpu_slots_get_the_malloc_settings(monkeypatch):
    for key in CPU_MALLOC_ENV:
        monkeypatch.delenv(key, raising=False)
    (slot,) = local.detect_slots("cpu")
    assert {k: slot.env[k] for k in CPU_MALLOC_ENV} == CPU_MALLOC_ENV
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "123")
    (slot,) = local.detect_slots("cpu")
    assert "MALLOC_MMAP_THRESHOLD_" not in slot.env  # the caller's own setting wins


def test_train_command_carries_the_compute_options():
    command = local.train_command(
        Path("spec.json"),
        Path("results"),
        local.Slot("cpu"),
        RunOptions(compute=ComputeOptions(precision="bf16", compile=False, teacher_cache="off")),
    )
    assert command[-5:] == ["--precision", "bf16", "--teacher-cache", "off", "--no-compile"]
