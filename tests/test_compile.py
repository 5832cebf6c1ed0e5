"""torch.compile as runs use it (kdbench/train/compute.py): only compiler errors fall back to eager, the backward's too;
out-of-memory and ordinary errors propagate; a long-lived process stays compiled run after run and reports
``compiled`` truthfully; ``auto`` compiles only runs long enough to pay for it.

Compiling with Inductor on this CPU takes minutes, so these tests use the "aot_eager" backend (dynamo and
AOTAutograd exactly as a run uses them, without code generation) or a backend that fails on purpose."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from kdbench import models, train
from kdbench.errors import KdbenchError
from kdbench.plan import DataSpec, RunSpec, TeacherRef, TrainSpec
from kdbench.store.records import EpochRecord
from kdbench.train import compute, loop
from kdbench.train.compute import CompiledOrEager, ComputeOptions, first_step
from kdbench.train.options import RunOptions
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.backends.registry import lookup_backend
from torch._inductor.exc import InvalidCxxCompiler


def resnet8() -> models.KDModel:
    torch.manual_seed(0)
    return models.create("resnet8", num_classes=10)


def images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))


def _keep_graph(gm: torch.fx.GraphModule, example_inputs: Any) -> Callable:
    from functorch.compile import make_boxed_func

    return make_boxed_func(gm.forward)


def _no_compiler(gm: torch.fx.GraphModule, example_inputs: Any) -> Callable:
    raise InvalidCxxCompiler()


def test_a_compiler_error_falls_back_to_eager_and_says_why(monkeypatch, caplog):
    monkeypatch.setattr(compute, "BACKEND", _no_compiler)
    net = resnet8()
    eager = net.forward_features(images()).logits
    wrapped = CompiledOrEager(net.forward_features, "ResNet")
    with caplog.at_level(logging.WARNING, logger="kdbench.train.compute"):
        out = wrapped(images()).logits
    assert torch.equal(out, eager)
    assert (
        not wrapped.active
        and "InvalidCxxCompiler" in wrapped.fallback
        and "torch.compile of ResNet failed" in caplog.text
    )


def test_a_backward_that_fails_to_compile_falls_back_before_the_step_runs(monkeypatch):
    """AOTAutograd compiles a static graph's backward lazily, at loss.backward() (torch 2.13,
    _functorch/_aot_autograd/graph_compile.py): its failure used to escape the fallback and fail the run."""

    def broken_backward(gm: torch.fx.GraphModule, example_inputs: Any) -> Callable:
        raise RuntimeError("ptxas fatal: unsupported GPU architecture")

    monkeypatch.setattr(
        compute, "BACKEND", aot_autograd(fw_compiler=_keep_graph, bw_compiler=broken_backward)
    )
    net = resnet8()
    wrapped = CompiledOrEager(net.forward_features, "ResNet")
    wrapped(
        images()
    ).logits.sum().backward()  # eagerly: the backward compiles with the forward, inside the fallback
    assert not wrapped.active and "ptxas fatal" in wrapped.fallback
    assert all(p.grad is not None for p in net.parameters())


def test_out_of_memory_is_re_raised_not_taken_for_a_compile_failure(monkeypatch):
    def runs_out_of_memory(gm: torch.fx.GraphModule, example_inputs: Any) -> Callable:
        def run(*args: Any) -> Any:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        return run

    def out_of_memory_while_compiling(gm: torch.fx.GraphModule, example_inputs: Any) -> Callable:
        raise torch.OutOfMemoryError("out of memory while autotuning")

    for backend in (runs_out_of_memory, out_of_memory_while_compiling):
        monkeypatch.setattr(compute, "BACKEND", backend)
        wrapped = CompiledOrEager(resnet8().forward_features, "ResNet")
        with pytest.raises(
            (torch.OutOfMemoryError, torch._dynamo.exc.BackendCompilerFailed)
        ) as raised:
            wrapped(images())
        assert compute._out_of_memory(raised.value)
        assert wrapped.active  # the next step tries again, compiled


def test_an_error_of_the_run_itself_propagates(monkeypatch):
    monkeypatch.setattr(compute, "BACKEND", "aot_eager")
    wrapped = CompiledOrEager(resnet8().forward_features, "ResNet")
    with pytest.raises(RuntimeError, match="channels|shape|size"):
        wrapped(torch.randn(2, 5, 32, 32))  # wrong channel count: eager mode fails the same way
    assert compute.is_compile_failure(InvalidCxxCompiler()) and not compute.is_compile_failure(
        ValueError("x")
    )


def test_the_first_step_falls_back_from_a_lazy_backward_with_the_state_put_back(monkeypatch):
    """A compiler error raised from the first loss.backward() (anything AOTAutograd still compiles lazily): every
    network goes eager, BatchNorm statistics, generators and the RNG are restored, and the step runs once, eagerly."""
    monkeypatch.setattr(compute, "BACKEND", "aot_eager")
    net = resnet8()
    net.sampler = torch.Generator().manual_seed(3)  # a method-owned generator, as CRD's
    reference = resnet8()
    reference.forward_features(images()).logits.sum().backward()
    wrapped = CompiledOrEager(net.forward_features, "ResNet")
    net.forward_features = wrapped
    attempts: list[bool] = []

    def step() -> torch.Tensor:
        attempts.append(wrapped.active)
        torch.rand(1, generator=net.sampler)
        torch.rand(1)
        out = net.forward_features(images()).logits
        if wrapped.active:
            raise InvalidCxxCompiler()  # as if the backward's compile failed
        out.sum().backward()
        return torch.rand(1)

    rng = torch.get_rng_state()
    after = first_step([net], net, step)
    assert (
        attempts == [True, False]
        and not wrapped.active
        and "InvalidCxxCompiler" in wrapped.fallback
    )
    torch.set_rng_state(rng)
    torch.rand(1)
    assert torch.equal(after, torch.rand(1))  # the RNG advanced once, not twice
    once = torch.Generator().manual_seed(3)
    torch.rand(1, generator=once)
    assert torch.equal(net.sampler.get_state(), once.get_state())  # the method's generator too
    for ours, theirs in zip(net.buffers(), reference.buffers()):
        assert torch.equal(ours, theirs)  # BatchNorm statistics updated by one forward, not two


def test_the_first_step_lets_other_errors_through(monkeypatch):
    monkeypatch.setattr(compute, "BACKEND", "aot_eager")
    net = resnet8()
    net.forward_features = wrapped = CompiledOrEager(net.forward_features, "ResNet")
    for error in (torch.OutOfMemoryError("CUDA out of memory"), ValueError("a bug")):

        def step() -> None:
            net.forward_features(images())
            raise error  # noqa: B023 - called within this iteration

        with pytest.raises(type(error)):
            first_step([net], net, step)
        assert wrapped.active and not wrapped.proven
    first_step([net], net, lambda: net.forward_features(images()).logits.sum().backward())
    assert wrapped.active and wrapped.proven


def test_the_recompile_limit_is_reported_not_hidden(monkeypatch):
    """Past its recompile limit dynamo runs a frame eagerly with only a log line; kdbench makes it an error
    (fullgraph=True) and records the fallback, so ``compiled`` is not claimed for an eager run."""
    monkeypatch.setattr(compute, "BACKEND", "aot_eager")
    monkeypatch.setattr(compute, "RECOMPILE_LIMIT", 2)
    wrapped = CompiledOrEager(resnet8().forward_features, "ResNet")
    for n in (2, 3, 4):
        wrapped(images(n))
    assert not wrapped.active and "FailOnRecompileLimitHit" in wrapped.fallback


def kd_specs(seed: int) -> tuple[RunSpec, RunSpec]:
    dataset = DataSpec(
        name="synthetic",
        options={"num_classes": 10, "image_size": 32, "train_size": 40, "test_size": 20},
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
        seed=seed,
        teacher=TeacherRef(model="resnet8", run_id=teacher.run_id),
    )
    return teacher, student


@pytest.mark.e2e
def test_runs_in_one_process_stay_compiled_and_say_so(monkeypatch, tmp_path):
    """A slot worker trains run after run in one process; every network of a CIFAR family shares one code object
    (StagedNet.forward_features), so before each run reset dynamo, all runs but the first hit the shared limit of 8
    and trained eagerly while result.json said "compiled": true. Counted here: compiled graphs that really ran."""
    ran: list[int] = []
    aot_eager = lookup_backend("aot_eager")

    def counting(gm: torch.fx.GraphModule, example_inputs: Any) -> Callable:
        compiled = aot_eager(gm, example_inputs)

        def run(*args: Any) -> Any:
            ran.append(1)
            return compiled(*args)

        run._boxed_call = getattr(compiled, "_boxed_call", False)  # type: ignore[attr-defined]
        return run

    monkeypatch.setattr(compute, "BACKEND", counting)
    on = ComputeOptions(compile=True, teacher_cache="off")
    teacher, _ = kd_specs(2)
    assert train.run(
        teacher, tmp_path, RunOptions(device="cpu", compute=on), show_progress=False
    ).compute.compiled
    for seed in (2, 3):
        ran.clear()
        result = train.run(
            kd_specs(seed)[1], tmp_path, RunOptions(device="cpu", compute=on), show_progress=False
        )
        assert result.compute.compiled and result.compute.compile_fallbacks == {}
        # 3 training steps x (student + teacher) and 1 test batch, all through compiled graphs
        assert len(ran) >= 7, f"run with seed {seed}: only {len(ran)} compiled calls"
    monkeypatch.setattr(
        compute, "RECOMPILE_LIMIT", 1
    )  # the short last batch now exceeds it: reported
    result = train.run(
        kd_specs(5)[1], tmp_path, RunOptions(device="cpu", compute=on), show_progress=False
    )
    assert (
        not result.compute.compiled
        and "FailOnRecompileLimitHit" in result.compute.compile_fallbacks["CifarResNet"]
    )


def test_auto_compiles_only_runs_long_enough_to_pay_for_it():
    cuda = torch.device("cuda")  # resolving needs no GPU
    assert not ComputeOptions().resolve(cuda, train_steps=3 * 782).compile  # a short ci run
    assert (
        ComputeOptions().resolve(cuda, train_steps=240 * 782).compile
    )  # the papers' CIFAR schedule
    assert ComputeOptions(compile=True).resolve(cuda, train_steps=10).compile  # asked for: always
    assert not ComputeOptions().resolve(torch.device("cpu"), train_steps=10**7).compile


def test_cuda_graphs_are_gated_to_cuda():
    assert (
        ComputeOptions(compile_mode="reduce-overhead").resolve(torch.device("cuda")).compile_mode
        == "reduce-overhead"
    )
    with pytest.raises(KdbenchError, match="CUDA"):
        ComputeOptions(compile=True, compile_mode="reduce-overhead").resolve(torch.device("cpu"))
    with pytest.raises(KdbenchError, match="compile mode"):
        ComputeOptions(compile_mode="max-autotune")
    assert ComputeOptions().compile_mode == "default"


def test_the_throughput_that_prices_runs_leaves_out_the_compiling_first_epoch():
    history = [
        EpochRecord(epoch=1, images_per_s=100.0),
        EpochRecord(epoch=2, images_per_s=1000.0),
        EpochRecord(epoch=3, images_per_s=1200.0),
    ]
    assert loop._steady_images_per_s(history) == 1100.0
    assert loop._steady_images_per_s(history[:1]) == 100.0  # a one-epoch run has nothing else


def test_the_executor_passes_the_compile_mode_on():
    from kdbench.execute.local.executor import Slot, train_command

    def flags(compute: ComputeOptions) -> list[str]:
        return train_command(
            Path("spec.json"), Path("results"), Slot("cpu"), RunOptions(compute=compute)
        )

    assert flags(ComputeOptions(compile=True, compile_mode="reduce-overhead"))[-2:] == [
        "--compile-mode",
        "reduce-overhead",
    ]
    assert "--compile-mode" not in flags(ComputeOptions())
