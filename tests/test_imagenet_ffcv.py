"""``kdbench data prepare imagenet`` and the ffcv loader of image folders: same order and shards as the reference,
crops from the same distribution (ffcv draws with its own RNG). Skipped when ffcv is not installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from kdbench import data
from kdbench.cli import app
from kdbench.data.augment.imagenet_views import CropOptions
from kdbench.data.folder import load_folder
from kdbench.data.loaders.torch_folder import FolderLoaders
from PIL import Image
from scipy import stats
from typer.testing import CliRunner

pytest.importorskip("ffcv", reason="ffcv is not installed (pip install 'kdbench[ffcv]')")
SIZE, CLASSES, PER_CLASS = 24, 4, 24


def position_coded_folder(root: Path) -> None:
    """PNG images of varied sizes whose red channel is the column and green channel the row, both scaled to 0..255."""
    rng = np.random.default_rng(0)
    for split, count in (("train", PER_CLASS), ("val", 4)):
        for label in range(CLASSES):
            (root / split / f"n{label:08d}").mkdir(parents=True)
            for i in range(count):
                height, width = (int(v) for v in rng.integers(64, 97, size=2))
                pixels = np.zeros((height, width, 3), dtype=np.uint8)
                pixels[..., 0] = np.rint(np.linspace(0, 255, width))[None, :]
                pixels[..., 1] = np.rint(np.linspace(0, 255, height))[:, None]
                pixels[..., 2] = 40 * label
                Image.fromarray(pixels).save(root / split / f"n{label:08d}" / f"{i}.png")


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[data.FolderDataset, data.Loaders, Path]:
    """The dataset, its .beton files (written by the CLI, raw pixels) and one ffcv loader set (JIT costs seconds)."""
    data_dir = tmp_path_factory.mktemp("data")
    position_coded_folder(data_dir / "coded")
    dataset = load_folder("imagenet", data_dir / "coded", data_dir / "index", CropOptions(SIZE), "")
    out = data_dir / "ffcv" / "imagenet"
    from kdbench.data.loaders.ffcv_folder import prepare_folder

    prepare_folder(dataset, out, write_mode="raw", num_workers=1)
    return dataset, data.make_loaders("ffcv", dataset, data_dir=data_dir), out


def boxes(batches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per view: the crop's area and aspect (in source-image fractions) read off the coded pixels, and its flip."""
    area, aspect, flips = [], [], []
    for images, _, _ in batches:
        red, green = images[:, 0], images[:, 1]  # normalised values: monotone in the pixel values
        dx = (red[:, :, -1] - red[:, :, 0]).mean(1)
        dy = (green[:, -1, :] - green[:, 0, :]).mean(1)
        flips.append((dx < 0).numpy())
        dx, dy = (
            dx.abs() * 0.229 / (SIZE - 1) * SIZE,
            dy * 0.224 / (SIZE - 1) * SIZE,
        )  # crop width / height fractions
        area.append((dx * dy).numpy())
        aspect.append((dx / dy).numpy())
    return np.concatenate(area), np.concatenate(aspect), np.concatenate(flips)


def test_prepare_writes_betons_and_meta(setup) -> None:
    dataset, loaders, out = setup
    assert loaders.kind == "ffcv" and {p.name for p in out.iterdir()} == {
        "train.beton",
        "test.beton",
        "meta.json",
    }
    assert data.make_loaders("auto", dataset, data_dir=out.parent.parent).kind == "ffcv"


def test_ffcv_order_labels_and_shards_follow_the_reference(setup) -> None:
    """One ffcv Loader per (split, per-rank batch size): global batches of 8, and of 16 over 2 ranks, share one."""
    dataset, loaders, _ = setup
    reference = list(FolderLoaders(dataset).train(8, seed=1, epoch=2))
    batches = list(loaders.train(8, seed=1, epoch=2))
    assert [len(b[2]) for b in batches] == [len(b[2]) for b in reference]
    for ours, theirs in zip(batches, reference):
        assert (
            torch.equal(ours[2], theirs[2])
            and torch.equal(ours[1], theirs[1])
            and ours[0].shape == theirs[0].shape
        )
    order = data.epoch_plan(len(dataset.y_train), 1, 2).order.view(-1, 16)
    rank1 = list(loaders.train(16, seed=1, epoch=2, shard=(1, 2)))
    assert [b[2].tolist() for b in rank1] == order[:, 8:].tolist()
    test = list(loaders.test(8))
    assert torch.cat([b[2] for b in test]).tolist() == list(range(len(dataset.y_test)))
    assert torch.equal(torch.cat([b[1] for b in test]), torch.as_tensor(dataset.y_test))


def test_ffcv_crops_have_the_reference_distribution(setup) -> None:
    dataset, loaders, _ = setup
    ours = boxes(
        b for epoch in range(1, 5) for b in FolderLoaders(dataset).train(8, seed=0, epoch=epoch)
    )
    theirs = boxes(b for epoch in range(1, 5) for b in loaders.train(8, seed=0, epoch=epoch))
    for name, a, b in (("area", ours[0], theirs[0]), ("aspect", ours[1], theirs[1])):
        assert stats.ks_2samp(a, b).pvalue > 1e-4, name
    assert (
        0.4 < ours[0].mean() / 0.54 < 1.6
    )  # E[area] of U(0.08, 1) is 0.54, less the rejected tall/wide boxes
    assert all(stats.binomtest(int(f.sum()), len(f)).pvalue > 1e-4 for f in (ours[2], theirs[2]))


def test_prepare_imagenet_from_the_command_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "data",
            "prepare",
            "imagenet_synthetic",
            "--data-dir",
            str(tmp_path),
            "--max-resolution",
            "80",
            "--jpeg-quality",
            "85",
        ],
    )
    assert result.exit_code == 0, result.output
    meta = (tmp_path / "ffcv" / "imagenet_synthetic" / "meta.json").read_text()
    assert (
        '"max_resolution": 80' in meta
        and '"write_mode": "proportion"' in meta
        and '"train": 192' in meta
    )
    result = CliRunner().invoke(app, ["data", "prepare", "imagenet", "--data-dir", str(tmp_path)])
    assert result.exit_code != 0 and "imagenet/train/" in result.output
