"""Fidelity gate, fixed batches: each fast mode gives the reference path's losses and gradients within a stated
tolerance, and a run's result does not depend on the runs packed beside it (test_fast_path.py and
test_loaders.py hold the rest of the gate: loader batches, teacher cache, compile)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from kdbench import methods
from kdbench.cli import app
from kdbench.errors import KdbenchError
from kdbench.execute.local.executor import LocalExecutor, detect_slots
from kdbench.plan import DataSpec, RunSpec, TrainSpec
from kdbench.store.run_dir import RunDir
from kdbench.tools.fidelity import (
    MODES,
    FidelityConfig,
    ModeResult,
    data_file,
    run_gate,
    summary_rows,
)
from kdbench.train import compute
from kdbench.train.compute import ComputeOptions
from torch._inductor.exc import InvalidCxxCompiler
from typer.testing import CliRunner

from test_fast_path import (
    FP32_ATOL,
    FP32_RTOL,
    distiller,
    first_batch,
    tiny_arrays,
)


def gradients(
    d: methods.Distiller, batch: tuple[torch.Tensor, ...], autocast: bool = False
) -> dict[str, torch.Tensor]:
    """The student's parameter gradients of the summed loss terms on ``batch`` (optionally under bf16 autocast)."""
    images, targets, indices = batch[:3]
    d.train()
    d.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        _, terms = d.forward_train(images, targets, 1, indices)
    sum(terms.values()).backward()
    return {
        name: p.grad.detach().clone()
        for name, p in d.student.named_parameters()
        if p.grad is not None
    }


def test_channels_last_gives_the_same_gradients():
    batch = first_batch(tiny_arrays())
    reference = gradients(distiller("kd"), batch)
    d = distiller("kd")
    compute = ComputeOptions(channels_last=True).resolve(torch.device("cpu"))
    compute.prepare([d.student, d.teacher])
    nhwc = gradients(d, (compute.images(batch[0]), *batch[1:]))
    assert nhwc.keys() == reference.keys() and len(reference) > 10
    for name, grad in reference.items():
        torch.testing.assert_close(
            nhwc[name].contiguous(), grad, rtol=FP32_RTOL, atol=FP32_ATOL, msg=name
        )


@pytest.mark.parametrize("method", ["kd", "dist"])
def test_bf16_autocast_gradients_point_the_same_way(method):
    """bf16 rounds every conv input to 8 mantissa bits, so gradients are not equal element-wise. The gate: the
    whole gradient keeps its direction (cosine ≥ 0.99) and norm (± 2 %), and so does each parameter tensor
    (cosine ≥ 0.95, norm ± 15 %). Measured on this batch: whole 0.9994 / 0.2 % (kd), 0.995 / 0.2 % (dist); per
    tensor at worst 0.977 / 5 %. A dropped or mis-scaled loss term, or a detached network, fails it."""
    batch = first_batch(tiny_arrays())
    fp32 = gradients(distiller(method), batch)
    bf16 = gradients(distiller(method), batch, autocast=True)
    assert bf16.keys() == fp32.keys()
    assert all(g.dtype == torch.float32 for g in bf16.values())
    flat32, flat16 = (
        torch.cat([g.flatten() for g in fp32.values()]),
        torch.cat([g.flatten() for g in bf16.values()]),
    )
    assert cosine(flat16, flat32) > 0.99 and float(flat16.norm()) == pytest.approx(
        float(flat32.norm()), rel=0.02
    )
    for name, grad in fp32.items():
        assert cosine(bf16[name], grad) > 0.95, name
        assert float(bf16[name].norm()) == pytest.approx(float(grad.norm()), rel=0.15), name


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def ce_spec(seed: int, train_size: int = 48) -> RunSpec:
    return RunSpec(
        profile="smoke",
        model="resnet8",
        method="ce",
        method_params={"ce_weight": 1.0, "kd_weight": 0.0, "kd_temperature": 4.0},
        teacher=None,
        data=DataSpec(
            name="synthetic", options={"num_classes": 10, "train_size": train_size, "test_size": 20}
        ),
        train=TrainSpec(
            epochs=1,
            batch_size=16,
            lr=0.05,
            milestones=(2,),
            lr_decay=0.1,
            momentum=0.9,
            nesterov=False,
            weight_decay=5e-4,
        ),
        seed=seed,
    )


@pytest.mark.e2e
def test_a_packed_run_equals_the_same_run_alone(tmp_path: Path):
    """Packing = several runs' processes on one device at once. Its fidelity claim: a run's result does not
    depend on its neighbours. Run A alone on one CPU slot, then A beside B on two slots with the same
    per-slot environment (1 thread each), and compare A's final weights bit for bit."""
    slots = detect_slots("cpu", cpu_jobs=2)
    alone, packed = ce_spec(seed=3), ce_spec(seed=4, train_size=64)
    outcomes = LocalExecutor(slots[:1]).execute([alone], tmp_path / "alone")
    assert outcomes[alone.run_id].status == "done"
    outcomes = LocalExecutor(slots).execute([alone, packed], tmp_path / "packed")
    assert {o.status for o in outcomes.values()} == {"done"}
    workers = {p.stem for p in (tmp_path / "packed" / "workers").glob("*.log")}
    assert workers == {"cpu0", "cpu1"}  # the two runs did train in two processes side by side
    states = [
        torch.load(RunDir(tmp_path / d, alone.run_id).model_file, weights_only=True)
        for d in ("alone", "packed")
    ]
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    metrics = [RunDir(tmp_path / d, alone.run_id).read_metrics() for d in ("alone", "packed")]
    drop = {"images_per_s"}
    assert [m.model_dump(exclude=drop) for m in metrics[0]] == [
        m.model_dump(exclude=drop) for m in metrics[1]
    ]


# ---------------------------------------------------------------- the real-data accuracy gate (kdbench fidelity)


def test_fidelity_gate_end_to_end_on_real_images(shared_data: Path, tmp_path: Path):
    """A much smaller gate than the documented one (100 train / 100 test images, 1 epoch, 2 seeds): the loader
    mode must give bit-identical weights, the others nearly identical ones, and the exit code follows the report."""
    out = tmp_path / "gate.json"
    result = CliRunner().invoke(
        app,
        [
            "fidelity",
            "--data-dir",
            str(shared_data),
            "--train-fraction",
            "0.005",
            "--test-fraction",
            "0.01",
            "--teacher",
            "resnet8",
            "--teacher-epochs",
            "1",
            "--epochs",
            "1",
            "--seeds",
            "2",
            "--modes",
            "tensor,channels-last,bf16",
            "--results",
            str(tmp_path / "results"),
            "--json",
            str(out),
        ],
    )
    report = json.loads(out.read_text())
    modes = {m["mode"]: m for m in report["modes"]}
    assert list(modes) == ["reference", "tensor", "channels-last", "bf16"]
    assert report["train_images"] == 100 and report["test_images"] == 100
    assert all(len(m["top1"]) == 2 for m in modes.values())
    assert (
        modes["tensor"]["identical"] == [True, True]
        and modes["tensor"]["top1"] == modes["reference"]["top1"]
    )
    assert modes["channels-last"]["max_weight_diff"] < 1e-3  # same arithmetic up to summation order
    assert 0 < modes["bf16"]["max_weight_diff"] < 0.05  # bf16 rounding, one epoch of drift
    assert result.exit_code == (0 if report["passed"] else 1), result.output
    assert ("fidelity gate: PASS" if report["passed"] else "fidelity gate: FAIL") in result.output
    assert "bit-identical" in result.output


def test_the_gate_fails_a_loader_that_is_not_exact_or_a_mode_that_differs():
    within = ModeResult(
        MODES["tensor"], top1=[50.0, 52.0], identical=[True, True], verdict="within noise"
    )
    assert within.passed
    assert not ModeResult(
        MODES["tensor"], top1=[50.0, 52.0], identical=[True, False], verdict="within noise"
    ).passed
    assert ModeResult(
        MODES["bf16"], top1=[50.0, 52.0], identical=[False, False], verdict="within noise"
    ).passed
    assert not ModeResult(
        MODES["bf16"], top1=[40.0, 41.0], identical=[False, False], verdict="differs"
    ).passed
    assert ModeResult(
        MODES["ffcv"], unavailable="ffcv is not importable"
    ).passed  # reported, not failed


def test_fidelity_names_the_missing_data_file_and_the_unknown_mode(tmp_path: Path):
    with pytest.raises(KdbenchError, match="KDBENCH_DATA"):
        data_file(FidelityConfig(data="missing.npz", data_dir=str(tmp_path)))
    with pytest.raises(KdbenchError, match="unknown fidelity mode 'fp8'"):
        FidelityConfig(modes=("fp8",))


def test_the_gate_says_when_compile_fell_back_to_eager(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def no_compiler(gm, example_inputs):
        raise InvalidCxxCompiler()

    monkeypatch.setattr(compute, "BACKEND", no_compiler)
    report = run_gate(
        FidelityConfig(
            data_dir=str(shared_data),
            train_fraction=0.005,
            test_fraction=0.01,
            teacher_epochs=1,
            epochs=1,
            seeds=1,
            modes=("compile",),
            results=tmp_path,
        )
    )
    compiled = report.modes[1]
    assert compiled.eager_fallback and compiled.identical == [
        True
    ]  # eager = the reference, bit for bit
    assert "ran eagerly: compile failed" in summary_rows(report)[1][5]
