"""Fidelity gate of the fast path: bf16, channels_last, compile and the teacher cache change no result
beyond a stated floating-point tolerance (no timing assertions here)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from kdbench import data, methods, models, train
from kdbench.data.augment.epoch_plan import crop_and_flip, to_normalized_tensor
from kdbench.plan import DataSpec, RunSpec, TeacherRef, TrainSpec
from kdbench.train import compute as compute_module
from kdbench.train import loop, teacher_cache
from kdbench.train.compute import CompiledOrEager, ComputeOptions
from kdbench.train.options import RunOptions
from torch._inductor.exc import InvalidCxxCompiler

# bf16 keeps 8 mantissa bits (relative rounding 2^-8 ≈ 4e-3 per op). On this fixed batch through two
# random-init ResNet-8s the loss terms differ from fp32 by at most 0.2 % (measured); the gate is 1 %.
BF16_RTOL = 1e-2
FP32_RTOL, FP32_ATOL = 1e-4, 1e-5


def tiny_arrays(n: int = 6) -> data.ImageArrays:
    arrays = data.load_dataset("synthetic", num_classes=10, train_size=64, test_size=16)
    return dataclasses.replace(arrays, x_train=arrays.x_train[:n], y_train=arrays.y_train[:n])


def networks(seed: int = 0) -> tuple[models.KDModel, models.KDModel]:
    torch.manual_seed(seed)
    return models.create("resnet8", num_classes=10), models.create("resnet8", num_classes=10)


def distiller(method: str, seed: int = 0) -> methods.Distiller:
    student, teacher = networks(seed)
    cls = methods.get(method)
    return cls(student, teacher, cls.Params(), torch.zeros(2, 3, 32, 32))


def first_batch(
    arrays: data.ImageArrays, batch_size: int = 6, epoch: int = 1
) -> tuple[torch.Tensor, ...]:
    return next(iter(data.train_loader(arrays, batch_size, seed=0, epoch=epoch)))


def loss_terms(d: methods.Distiller, batch: tuple[torch.Tensor, ...], **kwargs) -> dict[str, float]:
    images, targets, indices = batch[:3]
    _, terms = d.forward_train(images, targets, 1, indices, **kwargs)
    return {k: float(v.detach()) for k, v in terms.items()}


def test_cached_logits_equal_the_live_teacher_for_every_view(tmp_path):
    arrays = tiny_arrays()
    _, teacher = networks()
    teacher.eval()
    path = tmp_path / "cache.npy"
    teacher_cache.build(
        teacher, arrays, path, padding=4, device=torch.device("cpu"), images_per_batch=4
    )
    cache = teacher_cache.TeacherCache(
        path, len(arrays.x_train), 4, arrays.num_classes, torch.device("cpu")
    )
    mean, std = (
        torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in (arrays.mean, arrays.std)
    )
    views = [
        (i, dy, dx, flip)
        for i in range(len(arrays.x_train))
        for dy in range(9)
        for dx in range(9)
        for flip in (0, 1)
    ]
    assert len(views) == 162 * len(arrays.x_train)
    # Each view rendered the way the reference loader renders it, one sample at a time.
    images = torch.stack(
        [
            to_normalized_tensor(crop_and_flip(arrays.x_train[i], dx, dy, bool(f), 4), mean, std)
            for i, dy, dx, f in views
        ]
    )
    with torch.no_grad():
        live = torch.cat([teacher(chunk) for chunk in images.split(243)])
    index = torch.tensor(views)
    cached = cache.table[index[:, 0], index[:, 1], index[:, 2], index[:, 3]]
    torch.testing.assert_close(cached, live, rtol=FP32_RTOL, atol=FP32_ATOL)


def test_epoch_lookup_matches_the_loader_batch_and_kd_loss_is_unchanged(tmp_path):
    arrays = tiny_arrays()
    kd = distiller("kd")
    path = tmp_path / "cache.npy"
    teacher_cache.build(kd.teacher, arrays, path, padding=4, device=torch.device("cpu"))
    cache = teacher_cache.TeacherCache(
        path, len(arrays.x_train), 4, arrays.num_classes, torch.device("cpu")
    )
    for epoch in (1, 2):
        batch = first_batch(arrays, epoch=epoch)
        lookup = cache.for_epoch(data.epoch_plan(len(arrays.x_train), 0, epoch))
        with torch.no_grad():
            torch.testing.assert_close(
                lookup(batch[2]), kd.teacher(batch[0]), rtol=FP32_RTOL, atol=FP32_ATOL
            )
        kd.train()
        live = loss_terms(kd, batch)
        cached = loss_terms(kd, batch, teacher_logits=lookup(batch[2]))
        assert live.keys() == cached.keys() == {"ce", "kd"}
        for name in live:
            assert cached[name] == pytest.approx(live[name], rel=FP32_RTOL, abs=FP32_ATOL), name


def test_cacheable_teacher_is_derived_from_needs():
    assert methods.get("kd").needs.cacheable_teacher and methods.get("dist").needs.cacheable_teacher
    assert not methods.get("mlkd").needs.cacheable_teacher  # its strong views are random
    assert (
        not methods.get("fitnet").needs.cacheable_teacher
        and not methods.get("ce").needs.cacheable_teacher
    )


@pytest.mark.parametrize("method", ["kd", "dist"])
def test_bf16_autocast_losses_are_within_tolerance_of_fp32(method):
    batch = first_batch(tiny_arrays())
    d = distiller(method)
    fp32 = loss_terms(d, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = loss_terms(d, batch)
    assert fp32.keys() == bf16.keys()
    for name in fp32:
        assert bf16[name] == pytest.approx(fp32[name], rel=BF16_RTOL), name


def test_losses_are_float32_under_autocast():
    images, targets, indices = first_batch(tiny_arrays())
    d = distiller("kd")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, terms = d.forward_train(images, targets, 1, indices)
    # The logits are the student network's output, computed under autocast; the loss terms are fp32 (losses/precision.py).
    assert logits.dtype == torch.bfloat16 and all(t.dtype == torch.float32 for t in terms.values())


def test_channels_last_gives_the_same_loss():
    batch = first_batch(tiny_arrays())
    contiguous = loss_terms(distiller("kd"), batch)
    d = distiller("kd")
    compute = ComputeOptions(channels_last=True).resolve(torch.device("cpu"))
    compute.prepare([d.student, d.teacher])
    images, targets, indices = batch
    nhwc = loss_terms(d, (compute.images(images), targets, indices))
    for name in contiguous:
        assert nhwc[name] == pytest.approx(contiguous[name], rel=FP32_RTOL, abs=FP32_ATOL), name


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch, caplog):
    def no_compiler(gm, example_inputs):
        raise InvalidCxxCompiler()

    monkeypatch.setattr(compute_module, "BACKEND", no_compiler)
    batch = first_batch(tiny_arrays())
    eager = loss_terms(distiller("kd"), batch)
    d = distiller("kd")
    ComputeOptions(compile=True).resolve(torch.device("cpu")).prepare([d.student, d.teacher])
    with caplog.at_level(logging.WARNING, logger="kdbench.train.compute"):
        fallback = loss_terms(d, batch)
    assert fallback == pytest.approx(eager)
    assert (
        "torch.compile of CifarResNet failed" in caplog.text and "InvalidCxxCompiler" in caplog.text
    )
    assert (
        isinstance(d.student.forward_features, CompiledOrEager)
        and not d.student.forward_features.active
    )


@pytest.mark.e2e
def test_compiled_student_gives_the_same_loss():
    """Real torch.compile (Inductor, C++ on CPU): about a minute on a busy 2-core machine."""
    batch = first_batch(tiny_arrays())
    eager = loss_terms(distiller("kd"), batch)
    d = distiller("kd")
    ComputeOptions(compile=True).resolve(torch.device("cpu")).prepare([d.student])
    compiled = loss_terms(d, batch)
    assert d.student.forward_features.active
    for name in eager:
        assert compiled[name] == pytest.approx(eager[name], rel=FP32_RTOL, abs=FP32_ATOL), name


def kd_specs(train_size: int = 40) -> tuple[RunSpec, RunSpec]:
    dataset = DataSpec(
        name="synthetic",
        options={"num_classes": 10, "image_size": 32, "train_size": train_size, "test_size": 20},
    )
    schedule = TrainSpec(
        epochs=1,
        batch_size=16,
        lr=0.05,
        milestones=(),
        lr_decay=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=5e-4,
    )
    teacher = RunSpec(
        profile="smoke",
        model="resnet8",
        method="ce",
        method_params={},
        teacher=None,
        data=dataset,
        train=schedule,
        seed=1,
    )
    student = RunSpec(
        profile="smoke",
        model="resnet8",
        method="kd",
        method_params={},
        data=dataset,
        train=schedule,
        seed=2,
        teacher=TeacherRef(model="resnet8", run_id=teacher.run_id),
    )
    return teacher, student


def test_a_kd_run_with_the_cache_matches_one_without(tmp_path):
    teacher, student = kd_specs()
    for results in (tmp_path / "cached", tmp_path / "live"):
        train.run(teacher, results, RunOptions(device="cpu"), show_progress=False)
    # auto: a 1-epoch run would spend 162 teacher passes per image to save one, so it keeps the live teacher.
    live = train.run(student, tmp_path / "live", RunOptions(device="cpu"), show_progress=False)
    assert not live.compute.teacher_cache and not (tmp_path / "live" / "teacher_cache").exists()
    cached = train.run(
        student,
        tmp_path / "cached",
        RunOptions(device="cpu", compute=ComputeOptions(teacher_cache="on")),
        show_progress=False,
    )
    assert cached.compute.teacher_cache and cached.compute.teacher_cache_build_seconds > 0
    assert cached.compute.precision == "fp32" and cached.compute.requested["teacher_cache"] == "on"
    assert len(list((tmp_path / "cached" / "teacher_cache").glob("*.npy"))) == 1
    metrics = [
        loop.RunDir(r, student.run_id).read_metrics()[0]
        for r in (tmp_path / "cached", tmp_path / "live")
    ]
    assert metrics[0].losses["kd"] == pytest.approx(metrics[1].losses["kd"], rel=1e-3)
    # Another run with the same teacher and data reuses the cache under auto, without rebuilding it.
    again = train.run(
        student.model_copy(update={"seed": 5}),
        tmp_path / "cached",
        RunOptions(device="cpu"),
        show_progress=False,
    )
    assert again.compute.teacher_cache and again.compute.teacher_cache_build_seconds == 0.0
    assert np.load(
        next((tmp_path / "cached" / "teacher_cache").glob("*.npy")), mmap_mode="r"
    ).shape == (40, 9, 9, 2, 10)
