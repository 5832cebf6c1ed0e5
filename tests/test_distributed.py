"""DDP: sharded batches, per-GPU loss chunks, gradient averaging over real gloo process groups, and
``kdbench train --nproc 2`` end to end (identical weights on every rank, a failing rank fails the run,
resume). Multi-process tests are few: each start of torch processes costs seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from kdbench import losses, methods, train
from kdbench.data import ImageArrays
from kdbench.data.loaders.tensor_arrays import TensorLoaders
from kdbench.data.loaders.torch_arrays import TorchLoaders
from kdbench.data.shard import global_batch_sizes, slice_bounds
from kdbench.errors import KdbenchError
from kdbench.io import atomic_write_json
from kdbench.models.base import Features, KDModel
from kdbench.plan import DataSpec, RunSpec, TrainSpec, plan
from kdbench.recipe import RECIPES_DIR, Training
from kdbench.store.run_dir import RunDir
from kdbench.train import distributed, loop
from kdbench.train.compute import ComputeOptions
from kdbench.train.launch import free_port
from kdbench.train.options import RunOptions
from torch import nn

REPO = Path(__file__).resolve().parent.parent
NUM_CLASSES = 5


class TinyNet(KDModel):
    """A BatchNorm-free network (linear layers on 3×2×2 images): its gradients do not depend on how the
    batch is split, so a sharded step must equal the single-process step to float precision."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Linear(12, 8)
        self.classifier = nn.Linear(8, NUM_CLASSES)

    def forward_features(self, x: torch.Tensor) -> Features:
        pooled = torch.relu(self.body(x.flatten(1)))
        return Features(
            stages=[x], preact=[x], head_map=x, pooled=pooled, logits=self.classifier(pooled)
        )


def tiny_arrays(train_size: int = 37, test_size: int = 11) -> ImageArrays:
    rng = np.random.default_rng(0)
    splits = [
        (
            rng.integers(0, 256, (n, 2, 2, 3), dtype=np.uint8),
            rng.integers(0, NUM_CLASSES, n).astype(np.int64),
        )
        for n in (train_size, test_size)
    ]
    return ImageArrays(
        "tiny", *splits[0], *splits[1], NUM_CLASSES, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    )


def tiny_distiller(method: str, variant: str | None = None, **context) -> methods.Distiller:
    params = methods.resolve_params(method, variant, {})
    teacher = TinyNet(2) if methods.get(method).needs.teacher else None
    return methods.get(method)(TinyNet(1), teacher, params, torch.zeros(2, 3, 2, 2), **context)


# --- sharding (no processes) ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["torch", "tensor"])
@pytest.mark.parametrize(
    ("world", "train_size", "drop_last"),
    [(2, 37, False), (4, 40, False), (2, 37, True), (4, 34, False)],
)
def test_ranks_batches_are_slices_of_the_single_process_batches(kind, world, train_size, drop_last):
    arrays = tiny_arrays(train_size)
    loaders = (
        TorchLoaders(arrays) if kind == "torch" else TensorLoaders(arrays, torch.device("cpu"))
    )
    whole = list(loaders.train(8, seed=1, epoch=2, drop_last=drop_last, strong=False))
    ranks = [
        list(loaders.train(8, seed=1, epoch=2, drop_last=drop_last, shard=(r, world)))
        for r in range(world)
    ]
    sizes = global_batch_sizes(train_size, 8, drop_last, world)
    assert all(
        len(batches) == len(sizes) for batches in ranks
    )  # every rank takes the same number of steps
    for step, n in enumerate(sizes):
        for r in range(world):
            lo, hi = slice_bounds(n, (r, world))
            for part, full in zip(ranks[r][step], whole[step]):
                assert torch.equal(part, full[lo:hi])
    if (
        train_size % 8 and train_size % 8 < world and not drop_last
    ):  # 34 % 8 = 2 < 4 ranks: that batch is dropped
        assert len(sizes) == len(whole) - 1
    test_parts = [
        torch.cat([b[2] for b in loaders.test(8, shard=(r, world))]) for r in range(world)
    ]
    assert sorted(torch.cat(test_parts).tolist()) == list(
        range(len(arrays.x_test))
    )  # evaluation sees every image once


def test_batch_must_split_over_the_processes():
    with pytest.raises(KdbenchError, match="does not split over 3 processes"):
        TorchLoaders(tiny_arrays()).train(8, seed=0, epoch=1, shard=(0, 3))


def small_spec(
    method: str = "ce",
    batch_size: int = 32,
    loss_chunk: int | None = None,
    bn_chunk: int | None = None,
) -> RunSpec:
    return RunSpec(
        profile="smoke",
        model="resnet8",
        method=method,
        method_params=methods.resolve_params(method, None, {}).model_dump(),
        teacher=None,
        data=DataSpec(
            name="synthetic",
            options={"num_classes": 10, "image_size": 16, "train_size": 96, "test_size": 40},
        ),
        train=TrainSpec(
            epochs=2,
            batch_size=batch_size,
            lr=0.05,
            milestones=(),
            lr_decay=0.1,
            momentum=0.9,
            nesterov=False,
            weight_decay=5e-4,
            loss_chunk=loss_chunk,
            bn_chunk=bn_chunk,
        ),
        seed=1,
    )


@pytest.mark.parametrize(
    ("method", "batch", "chunk", "world", "message"),
    [
        ("ce", 30, None, 4, "does not split over 4 processes"),
        ("crd", 32, None, 2, "keeps per-sample state"),
        ("dist", 96, 32, 4, "cannot be cut into the spec's loss chunks of 32"),
        ("ce", 96, -32, 4, "cannot be cut into the spec's BatchNorm chunks of 32"),
    ],
)
def test_runs_that_cannot_be_split_say_why(method, batch, chunk, world, message):
    chunks = (
        {"bn_chunk": -chunk} if chunk is not None and chunk < 0 else {"loss_chunk": chunk}
    )  # negative: a BatchNorm chunk
    with pytest.raises(KdbenchError, match=message):
        loop._check_processes(
            small_spec(method, batch, **chunks),
            methods.get(method),
            distributed.Group(0, world),
            40,
        )
    loop._check_processes(
        small_spec(method, batch, **chunks), methods.get(method), distributed.Group(0, 1), 40
    )  # one process: fine


def test_process_group_comes_from_torchrun_or_slurm_variables():
    assert distributed.env_ranks({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    assert distributed.env_ranks(
        {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1"}
    ) == (1, 2, 1)
    assert distributed.env_ranks({}) is None
    assert (
        distributed.init("cpu", {}) is distributed.SINGLE
        and distributed.init("cpu", {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).world == 1
    )


# --- loss chunks: the spec field, and what the methods do with it ----------------------------------


def test_loss_chunk_is_in_the_spec_only_for_methods_with_batch_dependent_losses():
    assert "loss_chunk" not in small_spec().canonical_json()  # unset: run ids are what they were
    assert small_spec(loss_chunk=16).run_id != small_spec().run_id
    with pytest.raises(ValueError, match="must divide batch_size"):
        Training(epochs=1, batch_size=256, lr=0.1, loss_chunk=48)
    recipe_file = RECIPES_DIR / "dist" / "table5.yaml"
    if not recipe_file.is_file():
        pytest.skip(f"{recipe_file} not found")
    from kdbench.recipe import load_recipe

    recipe = load_recipe(recipe_file)
    before = plan(recipe, "full")
    chunked = recipe.model_copy(
        update={
            "training": recipe.training.model_copy(
                update={"loss_chunk": recipe.training.batch_size // 2}
            )
        }
    )
    after, smoke = plan(chunked, "full"), plan(chunked, "smoke")
    assert {s.run_id for s in before.specs.values() if s.method == "ce"} == {
        s.run_id for s in after.specs.values() if s.method == "ce"
    }
    assert {s.train.loss_chunk for s in after.specs.values() if s.method == "dist"} == {
        recipe.training.batch_size // 2
    }
    assert {s.train.loss_chunk for s in smoke.specs.values() if s.method == "dist"} == {
        16
    }  # two chunks of the smoke batch of 32


# --- BatchNorm per original GPU (bn_chunk) -------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "shape"), [(nn.BatchNorm2d, (10, 3, 4, 4)), (nn.BatchNorm1d, (10, 3))]
)
def test_per_gpu_batchnorm_equals_the_original_gpus(layer, shape):
    """Pieces normalised apart as separate GPUs would (10 samples in 3 slices: 3, 3, 4); the running statistics
    are GPU 0's, as DDP keeps them; gradients are the sum over the GPUs; evaluation is plain BatchNorm."""
    import copy

    from kdbench.models.per_gpu_batchnorm import emulate_per_gpu_batchnorm

    torch.manual_seed(0)
    x, grad_out = torch.randn(shape) * 3 + 1, torch.randn(shape)
    plain = layer(3)
    nn.init.normal_(plain.weight), nn.init.normal_(plain.bias)
    gpus = [copy.deepcopy(plain) for _ in range(3)]
    emulated = nn.Sequential(copy.deepcopy(plain))
    assert (
        emulate_per_gpu_batchnorm(emulated, 3) == 1
        and emulated.state_dict().keys() == nn.Sequential(plain).state_dict().keys()
    )
    for _ in range(2):  # two steps: the running statistics follow GPU 0 step after step
        out = emulated(x)
        outs = [gpu(x[a:b]) for gpu, (a, b) in zip(gpus, [(0, 3), (3, 6), (6, 10)], strict=True)]
        torch.testing.assert_close(out, torch.cat(outs))
    (out * grad_out).sum().backward()
    (torch.cat(outs) * grad_out).sum().backward()
    for name in ("weight", "bias"):
        torch.testing.assert_close(
            getattr(emulated[0], name).grad, sum(getattr(g, name).grad for g in gpus)
        )
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(emulated[0], name), getattr(gpus[0], name))
    assert not torch.allclose(gpus[0].running_mean, gpus[2].running_mean)
    emulated.eval(), gpus[0].eval()
    torch.testing.assert_close(emulated(x), gpus[0](x))


def test_bn_chunk_is_in_the_spec_of_every_method_and_scales_with_the_profile():
    assert "bn_chunk" not in small_spec().canonical_json()  # unset: run ids are what they were
    assert small_spec(bn_chunk=16).run_id != small_spec().run_id
    with pytest.raises(ValueError, match="bn_chunk 48 must divide batch_size"):
        Training(epochs=1, batch_size=256, lr=0.1, bn_chunk=48)
    from kdbench.recipe import load_recipe

    recipe = load_recipe(RECIPES_DIR / "dist" / "table5.yaml")
    chunked = recipe.model_copy(
        update={
            "training": recipe.training.model_copy(
                update={"bn_chunk": recipe.training.batch_size // 4}
            )
        }
    )
    full, smoke = plan(chunked, "full"), plan(chunked, "smoke")
    assert {s.train.bn_chunk for s in full.specs.values()} == {
        recipe.training.batch_size // 4
    }  # teachers and students
    assert {s.train.bn_chunk for s in smoke.specs.values()} == {
        8
    }  # four chunks of the smoke batch of 32


def test_chunked_loss_is_the_mean_of_the_chunks_losses():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, NUM_CLASSES, generator=g), torch.randn(8, NUM_CLASSES, generator=g)
    d = tiny_distiller("dist", loss_chunk=4)
    step = methods.Step(torch.zeros(8, dtype=torch.long), 1, loss_chunk=4)
    _, terms = d.distill(Features.from_logits(s), Features.from_logits(t), step)
    halves = [2 * losses.dist(s[i : i + 4], t[i : i + 4]) for i in (0, 4)]
    torch.testing.assert_close(terms["dist"], (halves[0] + halves[1]) / 2)
    whole = d.distill(
        Features.from_logits(s), Features.from_logits(t), methods.Step(step.targets, 1)
    )[1]["dist"]
    assert not torch.allclose(whole, terms["dist"])  # the intra-class term does depend on the batch
    with pytest.raises(ValueError, match="no batch-dependent loss"):
        tiny_distiller("kd", loss_chunk=4)


# --- real 2-rank gloo groups, one spawn for all in-process checks ------------------------------------


def _images(seed: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, 3, 2, 2, generator=g),
        torch.randint(0, NUM_CLASSES, (n,), generator=g),
        torch.randn(n, 3, 2, 2, generator=g),
    )


def _chunk_emulation_equals_ranks(group: distributed.Group) -> None:
    """(a) One process with loss_chunk = B/2 == two ranks on the halves, gradients all-reduced: loss and gradients."""
    images, targets, strong = _images(5)
    lo, hi = slice_bounds(len(images), group.shard)
    for method, variant in [("dist", None), ("mlkd", None), ("mlkd", "paper")]:
        emulated = tiny_distiller(method, variant, loss_chunk=len(images) // group.world)
        _, ref_terms = emulated.forward_train(images, targets, 1, strong=strong)
        sum(ref_terms.values()).backward()
        rank = tiny_distiller(method, variant)
        _, terms = rank.forward_train(images[lo:hi], targets[lo:hi], 1, strong=strong[lo:hi])
        sum(terms.values()).backward()
        group.average_gradients(rank.trainable_parameters(), (hi - lo) / len(images))
        mean_terms = {
            k: v / group.world
            for k, v in group.sum({k: v.detach() for k, v in terms.items()}).items()
        }
        for name, value in ref_terms.items():
            torch.testing.assert_close(
                mean_terms[name], value.detach(), rtol=1e-5, atol=1e-7, msg=f"{method} {name}"
            )
        for p_ref, p in zip(emulated.trainable_parameters(), rank.trainable_parameters()):
            torch.testing.assert_close(
                p.grad, p_ref.grad, rtol=1e-5, atol=1e-7, msg=f"{method} gradient"
            )


def _sharded_epoch_equals_single_process(group: distributed.Group) -> None:
    """The loop's DDP path (shards, per-rank gradient weights for an uneven last batch, summed statistics,
    sharded evaluation) gives the single-process weights and metrics for a BatchNorm-free network."""
    arrays, cpu = tiny_arrays(), torch.device("cpu")
    compute = ComputeOptions().resolve(cpu)
    outcomes = []
    for shard, sizes, g in [
        ((0, 1), None, distributed.SINGLE),
        (group.shard, global_batch_sizes(37, 8, False, group.world), group),
    ]:
        d = tiny_distiller("ce")
        optimizer = torch.optim.SGD(d.trainable_parameters(), lr=0.5, momentum=0.9)
        loaders = TensorLoaders(arrays, cpu)
        for epoch in (1, 2):
            stats = loop._train_epoch(
                d.forward_train,
                d,
                optimizer,
                loaders.train(8, seed=0, epoch=epoch, shard=shard),
                cpu,
                epoch,
                None,
                compute,
                group=g,
                global_sizes=sizes,
            )
        outcomes.append(
            (d.state_dict(), stats, train.evaluate(d, loaders.test(4, shard=shard), cpu, g))
        )
    (single, single_stats, single_eval), (ranked, ranked_stats, ranked_eval) = outcomes
    for k in single:
        torch.testing.assert_close(ranked[k], single[k], rtol=1e-5, atol=1e-6, msg=k)
    assert ranked_stats.train_top1 == single_stats.train_top1
    assert ranked_eval == single_eval


def _diverged_weights_are_detected(group: distributed.Group) -> None:
    group.check_identical([torch.ones(3)], "weights")
    with pytest.raises(KdbenchError, match="hold different weights"):
        group.check_identical([torch.ones(3) * (1 + group.rank)], "weights")


def _rank_main(rank: int, world: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        GLOO_SOCKET_IFNAME="lo",
    )
    torch.set_num_threads(1)
    group = distributed.init("cpu")
    try:
        assert (group.rank, group.world, group.backend) == (rank, world, "gloo")
        _chunk_emulation_equals_ranks(group)
        _sharded_epoch_equals_single_process(group)
        _diverged_weights_are_detected(group)
    finally:
        group.shutdown()


@pytest.mark.e2e
def test_two_gloo_ranks_equal_one_process():
    mp.spawn(_rank_main, args=(2, free_port()), nprocs=2, join=True)


# --- kdbench train --nproc 2 end to end --------------------------------------------------------------


def kdbench_train(
    spec_file: Path, results: Path, *extra: str, pythonpath: str = ""
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (pythonpath, str(REPO)) if p),
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kdbench",
            "train",
            str(spec_file),
            "--results",
            str(results),
            "--device",
            "cpu",
            "--loader",
            "tensor",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[RunSpec, Path, Path]:
    """One spec trained by 2 gloo processes and by one process, BatchNorm per 24 samples (the 2 processes' share)."""
    spec, root = small_spec(batch_size=48, bn_chunk=24), tmp_path_factory.mktemp("ddp")
    spec_file = root / "spec.json"
    atomic_write_json(spec_file, spec.model_dump(mode="json"))
    proc = kdbench_train(spec_file, root / "two", "--nproc", "2")
    assert proc.returncode == 0, proc.stderr
    train.run(spec, root / "one", RunOptions(device="cpu", loader="tensor"), show_progress=False)
    return spec, root / "two", root / "one"


@pytest.mark.e2e
def test_nproc_2_trains_the_run_like_one_process(ddp_run):
    """Every epoch the loop checks that both ranks hold identical weights (it raises otherwise); rank 0
    wrote the run. With ``bn_chunk`` 24, the one process normalises each half of a batch of 48 apart and keeps
    the first half's running statistics, which is what the 2 processes do, so the two runs agree to float
    precision (measured: 2e-6 of the update apart; the bound is 1e-4). Without it they were 21% of the
    update apart after the same 4 steps (BatchNorm over 48 images instead of 24)."""
    spec, two, one = ddp_run
    run = RunDir(two, spec.run_id)
    result = json.loads(run.result_file.read_text())
    assert (
        result["world_size"] == 2
        and json.loads(RunDir(one, spec.run_id).result_file.read_text())["world_size"] == 1
    )
    assert [h.epoch for h in run.read_metrics()] == [1, 2]
    assert "2 processes (gloo)" in run.log_file.read_text()
    assert len(list(run.tb_dir.glob("events.out.tfevents.*"))) == 1  # only rank 0 logs the curves
    start = tiny_start(spec)
    w2 = torch.load(run.model_file, weights_only=True)
    w1 = torch.load(RunDir(one, spec.run_id).model_file, weights_only=True)
    weights = [k for k, v in w1.items() if v.is_floating_point() and "running" not in k]
    moved = torch.cat([(w1[k] - start[k]).flatten() for k in weights]).norm()
    apart = torch.cat([(w2[k] - w1[k]).flatten() for k in weights]).norm()
    assert moved > 0 and apart < 1e-4 * moved, (float(apart), float(moved))
    for k in w1:  # running statistics too: both are those of the first 24 images of every batch
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)


def tiny_start(spec: RunSpec) -> dict[str, torch.Tensor]:
    """The run's initial weights (the loop seeds with the spec's seed before building the student)."""
    from kdbench import models

    torch.manual_seed(spec.seed)
    return {
        f"student.{k}": v for k, v in models.create(spec.model, num_classes=10).state_dict().items()
    }


FAIL_ON_RANK_1 = """
import os
if os.environ.get("RANK") == "1":
    from kdbench.train import loop
    calls, evaluate = [], loop.evaluate
    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure on rank 1 in epoch 2")
        return evaluate(*args, **kwargs)
    loop.evaluate = failing
"""


@pytest.mark.e2e
def test_a_failing_rank_fails_the_run_and_it_resumes(ddp_run, tmp_path):
    spec, two, _ = ddp_run
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(FAIL_ON_RANK_1)
    spec_file, results = tmp_path / "spec.json", tmp_path / "results"
    atomic_write_json(spec_file, spec.model_dump(mode="json"))
    failed = kdbench_train(spec_file, results, "--nproc", "2", pythonpath=str(inject))
    run = RunDir(results, spec.run_id)
    assert (
        failed.returncode == 2
        and "rank 1 of 2 failed" in failed.stderr
        and "injected failure" in failed.stderr
    )
    assert run.is_failed() and "rank 1" in run.failure()["message"]
    assert [h.epoch for h in run.read_metrics()] == [
        1
    ]  # epoch 1 was checkpointed before the failure

    resumed = kdbench_train(spec_file, results, "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in run.log_file.read_text() and not run.is_failed()
    reference = torch.load(RunDir(two, spec.run_id).model_file, weights_only=True)
    final = torch.load(run.model_file, weights_only=True)
    assert all(
        torch.equal(final[k], reference[k]) for k in reference
    )  # resumed == uninterrupted, bit for bit
