"""Loader kinds (tensor, ffcv) replay the reference loader's EpochPlan: their batches equal its batches."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from kdbench import train
from kdbench.cli import app
from kdbench.data import ImageArrays, load_dataset, make_loaders, subset, train_loader
from kdbench.data import (
    test_loader as make_test_loader,  # aliased so pytest does not collect it
)
from kdbench.data.augment.epoch_plan import to_normalized_tensor
from kdbench.data.loaders.tensor_arrays import TensorLoaders, normalisation_table
from kdbench.data.loaders.torch_arrays import TorchLoaders
from kdbench.errors import KdbenchError
from kdbench.plan import DataSpec, RunSpec, TrainSpec
from kdbench.store.run_dir import RunDir
from kdbench.train.options import RunOptions
from scipy.stats import chisquare
from typer.testing import CliRunner

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small() -> ImageArrays:
    return load_dataset("synthetic", num_classes=10, train_size=200, test_size=70, seed=7)


@pytest.fixture(scope="module")
def tensor_loaders(small: ImageArrays) -> TensorLoaders:
    return TensorLoaders(small, CPU)


def assert_same_batches(
    reference: Iterable[tuple[torch.Tensor, ...]], batches: Iterable[tuple[torch.Tensor, ...]]
) -> int:
    """Every batch and every element equal (values, dtype, shape); returns the number of batches."""
    reference, batches = list(reference), list(batches)
    assert len(batches) == len(reference)
    for position, (expected, got) in enumerate(zip(reference, batches)):
        assert len(got) == len(expected), (
            f"batch {position}: {len(got)} elements, expected {len(expected)}"
        )
        for part, (e, g) in enumerate(zip(expected, got)):
            assert g.dtype == e.dtype and torch.equal(g, e), f"batch {position}, element {part}"
    return len(batches)


# ---------------------------------------------------------------- tensor loader


def test_normalisation_table_equals_the_reference_for_every_pixel_value() -> None:
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    every_value = np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)
    expected = to_normalized_tensor(
        every_value, torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    )
    table = normalisation_table(mean, std)
    assert torch.equal(
        table[
            torch.arange(3)[:, None, None], torch.from_numpy(every_value).permute(2, 0, 1).long()
        ],
        expected,
    )


@pytest.mark.parametrize("batch_size", [64, 50, 7])
def test_tensor_train_batches_equal_the_reference(
    small: ImageArrays, tensor_loaders: TensorLoaders, batch_size: int
) -> None:
    count = assert_same_batches(
        train_loader(small, batch_size, seed=3, epoch=2),
        tensor_loaders.train(batch_size, seed=3, epoch=2),
    )
    assert count == -(-200 // batch_size)  # the last, partial batch included
    assert len(tensor_loaders.train(batch_size, seed=3, epoch=2)) == count


def test_tensor_drop_last_and_no_augmentation_equal_the_reference(
    small: ImageArrays, tensor_loaders: TensorLoaders
) -> None:
    dropped = assert_same_batches(
        train_loader(small, 64, seed=1, epoch=5, drop_last=True),
        tensor_loaders.train(64, seed=1, epoch=5, drop_last=True),
    )
    assert dropped == 3
    assert_same_batches(
        train_loader(small, 64, seed=1, epoch=5, augment=False),
        tensor_loaders.train(64, seed=1, epoch=5, augment=False),
    )


def test_tensor_batches_differ_between_epochs(tensor_loaders: TensorLoaders) -> None:
    first, second = (next(iter(tensor_loaders.train(64, seed=0, epoch=e))) for e in (0, 1))
    assert not torch.equal(first[2], second[2]) and not torch.equal(first[0], second[0])


def test_tensor_strong_views_equal_the_reference(
    small: ImageArrays, tensor_loaders: TensorLoaders
) -> None:
    batches = list(tensor_loaders.train(64, seed=4, epoch=1, strong=True, drop_last=True))
    assert all(len(batch) == 4 for batch in batches)
    assert_same_batches(
        train_loader(small, 64, seed=4, epoch=1, strong=True, drop_last=True), batches
    )


def test_tensor_test_batches_equal_the_reference(
    small: ImageArrays, tensor_loaders: TensorLoaders
) -> None:
    assert assert_same_batches(make_test_loader(small, 32), tensor_loaders.test(32)) == 3


def test_tensor_loader_on_real_images(shared_data: Path) -> None:
    arrays = load_dataset("npz", shared_data, path="cifar100-real-sample.npz", num_classes=100)
    loaders = TensorLoaders(arrays, CPU)
    assert_same_batches(
        train_loader(arrays, 128, seed=11, epoch=3), loaders.train(128, seed=11, epoch=3)
    )
    assert_same_batches(make_test_loader(arrays, 256), loaders.test(256))


def position_coded(count: int) -> ImageArrays:
    """Images whose channel 0 holds row + 1 and channel 1 holds column + 1; identity normalisation."""
    rows, cols = np.meshgrid(np.arange(1, 33), np.arange(1, 33), indexing="ij")
    image = np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    labels = np.zeros(count, dtype=np.int64)
    images = np.broadcast_to(image, (count, 32, 32, 3)).copy()
    return ImageArrays(
        "coded", images, labels, images[:1], labels[:1], 1, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    )


def test_crop_positions_are_uniform_over_81_and_flips_fair() -> None:
    """Decode each batch's crop offset and flip from the pixels, then chi-square them (the test can fail:
    a loader that ignored an offset, a flip, or the plan's order would skew or collapse the counts)."""
    arrays = position_coded(8100)
    positions, flips = [], []
    for images, _, _ in TensorLoaders(arrays, CPU).train(512, seed=0, epoch=0):
        pixels = (
            (images[:, :2, 16, 15:17] * 255).round().long()
        )  # (B, channel, two neighbouring columns)
        flipped = pixels[:, 1, 1] < pixels[:, 1, 0]
        dy = pixels[:, 0, 0] - 1 - 12  # output row 16 shows image row dy - 4 + 16
        dx = torch.where(flipped, pixels[:, 1, 0] - 1 - 12, pixels[:, 1, 0] - 1 - 11)
        positions.append(dy * 9 + dx)
        flips.append(flipped)
    position, flip = torch.cat(positions), torch.cat(flips)
    assert int(position.min()) == 0 and int(position.max()) == 80
    assert chisquare(torch.bincount(position, minlength=81).numpy()).pvalue > 1e-3
    assert chisquare(torch.bincount(flip.long(), minlength=2).numpy()).pvalue > 1e-3
    joint = torch.bincount(position * 2 + flip.long(), minlength=162).numpy()
    assert chisquare(joint).pvalue > 1e-3  # flips independent of the crop position


# ---------------------------------------------------------------- choosing a loader


def test_make_loaders_kinds(small: ImageArrays) -> None:
    assert isinstance(make_loaders("torch", small), TorchLoaders)
    assert isinstance(make_loaders("tensor", small), TensorLoaders)
    assert isinstance(make_loaders("auto", small, device="cpu"), TensorLoaders)
    with pytest.raises(KdbenchError, match="unknown loader 'fast'"):
        make_loaders("fast", small)
    torch_kind = make_loaders("torch", small, num_workers=0)
    assert_same_batches(
        train_loader(small, 64, seed=2, epoch=0, strong=True),
        torch_kind.train(64, seed=2, epoch=0, strong=True),
    )
    assert_same_batches(make_test_loader(small, 64), torch_kind.test(64))


def test_ffcv_without_ffcv_falls_back_to_tensor_with_the_install_hint(
    small: ImageArrays, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in [n for n in sys.modules if n == "ffcv" or n.startswith("ffcv.")] or ["ffcv"]:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import ffcv…` raise ImportError
    with caplog.at_level(logging.WARNING, logger="kdbench.data"):
        loaders = make_loaders("ffcv", small)
    assert isinstance(loaders, TensorLoaders)
    assert len(caplog.records) == 1 and "\n" not in caplog.text.strip()
    assert (
        "pip install 'kdbench[ffcv]'" in caplog.text
        and "libopencv-dev libturbojpeg0-dev" in caplog.text
    )


def test_loader_kind_does_not_change_a_run(tmp_path: Path) -> None:
    spec = RunSpec(
        profile="smoke",
        model="resnet8",
        method="ce",
        method_params={"ce_weight": 1.0, "kd_weight": 0.0, "kd_temperature": 4.0},
        teacher=None,
        data=DataSpec(
            name="synthetic", options={"num_classes": 10, "train_size": 96, "test_size": 40}
        ),
        train=TrainSpec(
            epochs=1,
            batch_size=32,
            lr=0.05,
            milestones=(2,),
            lr_decay=0.1,
            momentum=0.9,
            nesterov=False,
            weight_decay=5e-4,
        ),
        seed=1,
    )
    states = {}
    for kind in ("torch", "tensor"):
        result = train.run(
            spec, tmp_path / kind, RunOptions(device="cpu", loader=kind), show_progress=False
        )
        assert result.run_id == spec.run_id
        assert f"loader {kind}" in RunDir(tmp_path / kind, spec.run_id).log_file.read_text()
        states[kind] = torch.load(
            RunDir(tmp_path / kind, spec.run_id).model_file, weights_only=True
        )
    assert states["torch"].keys() == states["tensor"].keys()
    assert all(torch.equal(states["torch"][k], states["tensor"][k]) for k in states["torch"])


def test_cli_rejects_an_unknown_loader_and_an_unknown_dataset_to_prepare() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["train", "no-such-spec.json", "--loader", "fast"])
    assert result.exit_code == 2 and "unknown loader 'fast'" in result.output
    result = runner.invoke(app, ["data", "prepare", "svhn"])
    assert result.exit_code == 2 and "unknown dataset 'svhn'" in result.output


def test_prepare_without_ffcv_names_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`data prepare` checks for ffcv before it reads the dataset (ffcv_prepare.prepare_dataset)."""
    for name in [n for n in sys.modules if n == "ffcv" or n.startswith("ffcv.")] or ["ffcv"]:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import ffcv…` raise ImportError
    result = CliRunner().invoke(app, ["data", "prepare", "imagenet", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "ffcv is not importable" in result.output
    assert "pip" in result.output and "kdbench[ffcv]" in result.output


def test_prepare_refuses_a_missing_imagenet(tmp_path: Path) -> None:
    pytest.importorskip("ffcv", reason="ffcv is not installed (pip install 'kdbench[ffcv]')")
    result = CliRunner().invoke(app, ["data", "prepare", "imagenet", "--data-dir", str(tmp_path)])
    assert (
        result.exit_code == 2
        and "imagenet/train/" in result.output
        and "--data-dir" in result.output
    )


# ---------------------------------------------------------------- ffcv (skipped when ffcv is not installed)


@pytest.fixture(scope="module")
def ffcv_setup(small: ImageArrays, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    """One .beton folder and one FfcvLoaders for the module: each new ffcv Loader costs seconds of JIT."""
    pytest.importorskip("ffcv", reason="ffcv is not installed (pip install 'kdbench[ffcv]')")
    from kdbench.data.loaders import ffcv_arrays

    threads = torch.get_num_threads()
    folder = ffcv_arrays.prepare(small, tmp_path_factory.mktemp("betons") / "ffcv" / small.name)
    loaders = make_loaders("ffcv", small, data_dir=folder.parent.parent)
    assert (
        torch.get_num_threads() == threads
    )  # import, writer and Loader put torch's thread count back
    return loaders, folder


def test_prepare_writes_betons_and_meta(
    ffcv_setup: tuple[object, Path], small: ImageArrays
) -> None:
    from kdbench.data.loaders.ffcv_arrays import fingerprint

    loaders, folder = ffcv_setup
    assert loaders.kind == "ffcv"
    assert {p.name for p in folder.iterdir()} == {"train.beton", "test.beton", "meta.json"}
    assert f'"fingerprint": "{fingerprint(small)}"' in (folder / "meta.json").read_text()


def test_ffcv_batches_equal_the_reference(
    ffcv_setup: tuple[object, Path], small: ImageArrays
) -> None:
    loaders, _ = ffcv_setup
    threads = torch.get_num_threads()
    for epoch in (0, 1):  # the same ffcv Loader serves every epoch, each in its own plan's order
        assert (
            assert_same_batches(
                train_loader(small, 64, seed=3, epoch=epoch), loaders.train(64, seed=3, epoch=epoch)
            )
            == 4
        )
    assert_same_batches(
        train_loader(small, 64, seed=3, epoch=4, augment=False),
        loaders.train(64, seed=3, epoch=4, augment=False),
    )
    assert_same_batches(
        train_loader(small, 64, seed=8, epoch=2, strong=True),
        loaders.train(64, seed=8, epoch=2, strong=True),
    )
    assert_same_batches(make_test_loader(small, 32), loaders.test(32))
    assert torch.get_num_threads() == threads


def test_ffcv_falls_back_when_the_betons_hold_other_arrays(
    ffcv_setup: tuple[object, Path],
    small: ImageArrays,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, folder = ffcv_setup
    with caplog.at_level(logging.WARNING, logger="kdbench.data"):
        part = subset(small, 0.5)
        assert isinstance(make_loaders("ffcv", part, data_dir=folder.parent.parent), TensorLoaders)
        assert "a subset, another dataset, or files changed since" in caplog.text
        assert isinstance(make_loaders("ffcv", small, data_dir=tmp_path), TensorLoaders)
        assert f"kdbench data prepare {small.name}" in caplog.text


def test_ffcv_shards_equal_the_reference_shards(
    ffcv_setup: tuple[object, Path], small: ImageArrays
) -> None:
    """Each rank's ffcv batches are the reference loader's for that shard (``tests/test_distributed.py``
    checks those against slices of the whole batches); its length counts the shard, not the file."""
    loaders, _ = ffcv_setup
    for rank in (0, 1):
        batches = loaders.train(64, seed=3, epoch=1, shard=(rank, 2))
        assert len(batches) == len(train_loader(small, 64, seed=3, epoch=1, shard=(rank, 2)))
        assert_same_batches(train_loader(small, 64, seed=3, epoch=1, shard=(rank, 2)), batches)
    assert_same_batches(make_test_loader(small, 32, shard=(1, 2)), loaders.test(32, shard=(1, 2)))
