"""The training loop: resume after a kill gives the same run as no kill; real images train."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from kdbench import train
from kdbench.io import atomic_write_json
from kdbench.plan import DataSpec, RunSpec, TrainSpec
from kdbench.store.run_dir import RunDir
from kdbench.train import loop
from kdbench.train.options import RunOptions


def small_spec(epochs: int = 4, **data) -> RunSpec:
    return RunSpec(
        profile="smoke",
        model="resnet8",
        method="ce",
        method_params={"ce_weight": 1.0, "kd_weight": 0.0, "kd_temperature": 4.0},
        teacher=None,
        data=DataSpec(
            name="synthetic",
            options={
                "num_classes": 10,
                "image_size": 32,
                "train_size": 512,
                "test_size": 64,
                **data,
            },
        ),
        train=TrainSpec(
            epochs=epochs,
            batch_size=32,
            lr=0.05,
            milestones=(2,),
            lr_decay=0.1,
            momentum=0.9,
            nesterov=False,
            weight_decay=5e-4,
        ),
        seed=3,
    )


@pytest.mark.e2e
def test_killed_run_resumes_to_the_same_result(tmp_path):
    spec = small_spec()
    reference = train.run(spec, tmp_path / "ref", RunOptions(device="cpu"), show_progress=False)

    results = tmp_path / "killed"
    run = RunDir(results, spec.run_id)
    atomic_write_json(run.spec_file, spec.model_dump(mode="json"))
    # Same thread count as this process (conftest: 1): float reductions depend on it.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kdbench",
            "train",
            str(run.spec_file),
            "--results",
            str(results),
            "--device",
            "cpu",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 300
    while len(run.read_metrics()) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-training: after at least one epoch, before the end
    proc.wait()
    done_before_kill = run.read_metrics()
    assert 1 <= len(done_before_kill) < spec.train.epochs and not run.is_done()
    assert not list(run.path.glob(".*.tmp")) or all(
        p.stat().st_size >= 0 for p in run.path.glob(".*.tmp")
    )

    resumed = train.run(spec, results, RunOptions(device="cpu"), show_progress=False)
    history = run.read_metrics()
    assert [h.epoch for h in history] == list(range(1, spec.train.epochs + 1))
    assert [h.test_top1 for h in history[: len(done_before_kill)]] == [
        h.test_top1 for h in done_before_kill
    ]
    assert "resuming" in run.log_file.read_text()
    # Epoch-seeded data and a full checkpoint make the resumed run identical to the uninterrupted one.
    for key in ("best_top1", "last_top1", "last_top5", "best_epoch"):
        assert getattr(resumed, key) == getattr(reference, key), key
    ref_state = torch.load(RunDir(tmp_path / "ref", spec.run_id).model_file, weights_only=True)
    new_state = torch.load(run.model_file, weights_only=True)
    assert all(torch.equal(ref_state[k], new_state[k]) for k in ref_state)


def test_finished_run_is_not_retrained(tmp_path):
    spec = small_spec(epochs=1, train_size=64)
    first = train.run(spec, tmp_path, RunOptions(device="cpu"), show_progress=False)
    mtime = RunDir(tmp_path, spec.run_id).result_file.stat().st_mtime_ns
    assert train.run(spec, tmp_path, RunOptions(device="cpu"), show_progress=False) == first
    assert RunDir(tmp_path, spec.run_id).result_file.stat().st_mtime_ns == mtime


def test_trains_on_real_images(tmp_path, shared_data: Path):
    """CIFAR-10 (JPEG q75) subset from the shared offline data: a small net beats chance."""
    spec = RunSpec(
        profile="ci",
        model="resnet8",
        method="ce",
        method_params={"ce_weight": 1.0, "kd_weight": 0.0, "kd_temperature": 4.0},
        teacher=None,
        data=DataSpec(
            name="npz",
            options={"path": "cifar10-jpeg-q75-20k.npz"},
            train_fraction=0.1,
            test_fraction=0.1,
        ),
        train=TrainSpec(
            epochs=2,
            batch_size=64,
            lr=0.05,
            milestones=(),
            lr_decay=0.1,
            momentum=0.9,
            nesterov=False,
            weight_decay=5e-4,
        ),
        seed=0,
    )
    result = train.run(
        spec, tmp_path, RunOptions(device="cpu", data_dir=shared_data), show_progress=False
    )
    assert result.epochs == 2 and result.best_top1 > 15.0  # chance is 10%


def test_drop_last_skips_the_short_last_batch(tmp_path, monkeypatch):
    """training.drop_last (DIST's loader, drop_last=True): 40 images in batches of 32 give one step, not two.
    The default (False) keeps the short batch and stays out of the run id."""
    seen: list[list[int]] = []
    make_loaders = loop.data.make_loaders

    def recording(*args, **kwargs):
        loaders = make_loaders(*args, **kwargs)
        original = loaders.train

        def batches(*a, **k):
            sizes = [len(batch[1]) for batch in original(*a, **k)]
            seen.append(sizes)
            return original(*a, **k)

        loaders.train = batches
        return loaders

    monkeypatch.setattr(loop.data, "make_loaders", recording)
    kept = small_spec(epochs=1, train_size=40)
    dropped = kept.model_copy(update={"train": kept.train.model_copy(update={"drop_last": True})})
    assert (
        "drop_last" not in kept.canonical_json() and '"drop_last":true' in dropped.canonical_json()
    )
    for spec in (kept, dropped):
        train.run(spec, tmp_path, RunOptions(device="cpu"), show_progress=False)
    assert seen == [[32, 8], [32]]
