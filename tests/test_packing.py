"""``--runs-per-gpu auto``: the per-run memory estimate and the runs-per-GPU formula (fake numbers, no GPU);
CPU slots' malloc settings; compute options reaching the train command."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdbench.compute import CPU_MALLOC_ENV, ComputeOptions
from kdbench.execute import local, packing
from kdbench.execute.packing import CONTEXT_BYTES, Footprint, run_bytes, runs_per_gpu

GIB = 1 << 30


def test_run_bytes_counts_weights_activations_and_context():
    fp = Footprint(student_params=1_000_000, teacher_params=2_000_000, student_activations=100_000,
                   teacher_activations=300_000, batch_size=64)
    expected = 16 * 1_000_000 + 4 * 2_000_000 + 64 * (8 * 100_000 + 4 * 300_000) + CONTEXT_BYTES
    assert run_bytes(fp) == expected


@pytest.mark.parametrize(("free", "per_run", "expected"), [
    (80 * GIB, 2 * GIB, 8),     # 32 would fit: capped at MAX_RUNS_PER_GPU
    (10 * GIB, 2 * GIB, 4),     # 0.8 · 10 / 2 = 4
    (9 * GIB, 2 * GIB, 3),      # 0.8 · 9 / 2 = 3.6 → 3
    (1 * GIB, 2 * GIB, 1),      # never below one run: a run that does not fit fails with CUDA's own message
    (80 * GIB, 2 * GIB, 2),     # with max_runs=2
])
def test_runs_per_gpu_formula(free, per_run, expected):
    kwargs = {"max_runs": 2} if expected == 2 else {}
    assert runs_per_gpu(free, per_run, **kwargs) == expected


def test_model_size_matches_the_published_parameter_counts():
    params, activations = packing.model_size("resnet8x4", 100, 32)
    assert params == 1_233_540 and 500_000 < activations < 2_000_000


def test_auto_slots_use_free_memory(monkeypatch):
    from kdbench.plan import DataSpec, RunSpec, TeacherRef, TrainSpec

    spec = RunSpec(profile="full", model="resnet8x4", method="kd", method_params={}, seed=0,
                   teacher=TeacherRef(model="resnet32x4", run_id="t"), data=DataSpec(name="cifar100"),
                   train=TrainSpec(epochs=1, batch_size=64, lr=0.05, milestones=(), lr_decay=0.1, momentum=0.9,
                                   nesterov=False, weight_decay=5e-4))
    per_run = run_bytes(packing.footprint(spec))
    assert 1.5 * GIB < per_run < 4 * GIB  # resnet32x4 → resnet8x4 at batch 64
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    monkeypatch.setattr("torch.cuda.mem_get_info", lambda gpu: ((3 * per_run, 80 * GIB) if gpu == 0 else (80 * GIB, 80 * GIB)))
    slots = local.detect_slots("auto", "auto", specs=[spec])
    assert [s.name for s in slots].count("gpu0.0") == 1 and sum(s.name.startswith("gpu0") for s in slots) == 2
    assert sum(s.name.startswith("gpu1") for s in slots) == packing.MAX_RUNS_PER_GPU


def test_cpu_slots_get_the_malloc_settings(monkeypatch):
    for key in CPU_MALLOC_ENV:
        monkeypatch.delenv(key, raising=False)
    (slot,) = local.detect_slots("cpu")
    assert {k: slot.env[k] for k in CPU_MALLOC_ENV} == CPU_MALLOC_ENV
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "123")
    (slot,) = local.detect_slots("cpu")
    assert "MALLOC_MMAP_THRESHOLD_" not in slot.env  # the caller's own setting wins


def test_train_command_carries_the_compute_options():
    command = local.train_command(Path("spec.json"), Path("results"), local.Slot("cpu"),
                                  compute=ComputeOptions(precision="bf16", compile=False, teacher_cache="off"))
    assert command[-5:] == ["--precision", "bf16", "--teacher-cache", "off", "--no-compile"]
