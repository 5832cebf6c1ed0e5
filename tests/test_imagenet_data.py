"""ImageNet-layout datasets: the folder index, the papers' views, the torch loader and its DDP shards."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from kdbench import data
from kdbench._torchvision import import_torchvision
from kdbench.data import folder
from kdbench.data.augment import imagenet_views as views
from kdbench.data.datasets.imagenet_synthetic import synthetic_folder
from kdbench.data.loaders.torch_folder import FolderLoaders, shard_batches
from kdbench.errors import KdbenchError
from PIL import Image
from scipy import stats


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def synthetic(data_dir: Path) -> data.FolderDataset:
    return data.load_dataset("imagenet_synthetic", data_dir, image_size=32)


# ---------------------------------------------------------------- the folder and its index


def test_synthetic_folder_is_deterministic_and_safe_against_racing_builders(tmp_path: Path) -> None:
    roots: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: roots.append(
                synthetic_folder(tmp_path / "a", num_classes=3, train_per_class=4, val_per_class=2)
            )
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(roots)) == 1 and sorted(p.name for p in roots[0].parent.iterdir()) == [
        roots[0].name
    ]  # no leftovers
    again = synthetic_folder(tmp_path / "b", num_classes=3, train_per_class=4, val_per_class=2)
    files = sorted(p.relative_to(roots[0]) for p in roots[0].rglob("*.JPEG"))
    assert len(files) == 3 * (4 + 2) and files == sorted(
        p.relative_to(again) for p in again.rglob("*.JPEG")
    )
    assert all((roots[0] / f).read_bytes() == (again / f).read_bytes() for f in files)
    sizes = {Image.open(roots[0] / f).size for f in files}
    assert len(sizes) > 1 and all(64 <= side <= 96 for size in sizes for side in size)


def test_classes_and_files_are_ordered_as_torchvision_imagefolder(
    synthetic: data.FolderDataset,
) -> None:
    image_folder = import_torchvision().datasets.ImageFolder
    for split, files, labels in (
        ("train", synthetic.train_files, synthetic.y_train),
        ("val", synthetic.test_files, synthetic.y_test),
    ):
        reference = image_folder(str(synthetic.root / split))
        assert tuple(reference.classes) == synthetic.classes
        assert [
            (str(synthetic.root / split / f.decode()), int(y)) for f, y in zip(files, labels)
        ] == reference.samples


def test_index_is_cached_and_rescanned_when_a_class_folder_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = synthetic_folder(tmp_path, num_classes=2, train_per_class=3, val_per_class=1)
    first = data.load_dataset(
        "imagenet_synthetic", tmp_path, num_classes=2, train_per_class=3, val_per_class=1
    )
    assert len(list((tmp_path / "index").glob("*.json"))) == 1
    scan = folder._scan
    monkeypatch.setattr(folder, "_scan", lambda *a: pytest.fail("a valid index was scanned again"))
    cached = data.load_dataset(
        "imagenet_synthetic", tmp_path, num_classes=2, train_per_class=3, val_per_class=1
    )
    assert (cached.train_files == first.train_files).all() and (cached.y_test == first.y_test).all()

    class_dir = root / "train" / first.classes[1]
    Image.new("RGB", (70, 80)).save(class_dir / "zz_new.JPEG")
    os.utime(class_dir, ns=(class_dir.stat().st_atime_ns, class_dir.stat().st_mtime_ns + 1_000_000))
    rescans: list[int] = []
    monkeypatch.setattr(folder, "_scan", lambda *a: rescans.append(1) or scan(*a))
    changed = data.load_dataset(
        "imagenet_synthetic", tmp_path, num_classes=2, train_per_class=3, val_per_class=1
    )
    assert (
        rescans == [1]
        and len(changed.y_train) == 7
        and changed.train_files[-1].decode().endswith("zz_new.JPEG")
    )


def test_missing_imagenet_names_the_layout_and_the_data_dir(tmp_path: Path) -> None:
    with pytest.raises(KdbenchError) as error:
        data.load_dataset("imagenet", tmp_path)
    message = str(error.value)
    assert f"{tmp_path}/imagenet/train/" in message and "<wnid>/*.JPEG" in message
    assert "--data-dir" in message and "KDBENCH_DATA" in message and "registration" in message


def test_subset_of_a_folder_is_stratified(synthetic: data.FolderDataset) -> None:
    part = data.subset(synthetic, 0.25, 0.5)
    assert len(part.y_train) == 48 and len(part.y_test) == 32
    assert (
        np.bincount(part.y_train).tolist() == [6] * 8
        and np.bincount(part.y_test).tolist() == [4] * 8
    )
    assert set(part.train_files.tolist()) <= set(synthetic.train_files.tolist())


# ---------------------------------------------------------------- the views


def test_crop_boxes_follow_torchvision_random_resized_crop() -> None:
    """Same distribution as RandomResizedCrop.get_params: KS tests on area, aspect and position (fixed seeds)."""
    transforms = import_torchvision().transforms
    height, width, draws = 60, 90, 3000
    ours = np.array(
        [
            views.crop_box(views.crop_rng(0, 0, i), height, width, (0.08, 1.0), (3 / 4, 4 / 3))
            for i in range(draws)
        ]
    )
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    theirs = np.array(
        [
            transforms.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
            for _ in range(draws)
        ]
    )
    for boxes in (ours, theirs):
        top, left, h, w = boxes.T
        assert (
            (top >= 0).all()
            and (left >= 0).all()
            and (top + h <= height).all()
            and (left + w <= width).all()
        )
    for name, statistic in (
        ("area", lambda b: b[:, 2] * b[:, 3]),
        ("aspect", lambda b: b[:, 3] / b[:, 2]),
        ("top", lambda b: b[:, 0] / np.maximum(height - b[:, 2], 1)),
        ("left", lambda b: b[:, 1] / np.maximum(width - b[:, 3], 1)),
    ):
        assert stats.ks_2samp(statistic(ours), statistic(theirs)).pvalue > 1e-3, name


@pytest.mark.parametrize("height, width", [(10, 100), (100, 10), (40, 40)])
def test_crop_falls_back_to_torchvision_centre_crop(height: int, width: int) -> None:
    """No attempt fits (scale above 1): the fallback box equals torchvision's."""
    transforms = import_torchvision().transforms
    expected = transforms.RandomResizedCrop.get_params(
        torch.zeros(3, height, width), [2.0, 3.0], [3 / 4, 4 / 3]
    )
    assert views.crop_box(
        views.crop_rng(0, 0, 0), height, width, (2.0, 3.0), (3 / 4, 4 / 3)
    ) == tuple(expected)


@pytest.mark.parametrize("size", [(77, 64), (64, 90), (80, 80)])
def test_views_equal_torchvision_transforms(size: tuple[int, int]) -> None:
    tv = import_torchvision().transforms
    functional = tv.functional
    image = Image.fromarray(
        np.random.default_rng(size[0]).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    )
    options = views.CropOptions(image_size=32)
    reference = tv.Compose([tv.Resize(options.resize_size), tv.CenterCrop(32)])(image)
    assert np.array_equal(np.asarray(views.test_view(image, options)), np.asarray(reference))
    flips = 0
    for index in range(8):
        replay = views.crop_rng(1, 2, index)  # the box's draws, then the flip's
        box = views.crop_box(replay, image.height, image.width, options.scale, options.ratio)
        expected = functional.resized_crop(image, *box, [32, 32], tv.InterpolationMode.BILINEAR)
        if replay.random() < 0.5:
            expected, flips = functional.hflip(expected), flips + 1
        got = views.train_view(image, views.crop_rng(1, 2, index), options)
        assert np.array_equal(np.asarray(got), np.asarray(expected))
    assert 0 < flips < 8
    assert options.resize_size == 37 and views.CropOptions().resize_size == 256


# ---------------------------------------------------------------- the torch loader


def test_train_batches_depend_on_seed_and_epoch_only(synthetic: data.FolderDataset) -> None:
    small = data.subset(synthetic, 0.25, 0.25)
    first = list(FolderLoaders(small).train(16, seed=3, epoch=1))
    again = list(FolderLoaders(small, num_workers=1).train(16, seed=3, epoch=1))
    other = list(FolderLoaders(small).train(16, seed=3, epoch=2))
    assert all(torch.equal(a, b) for x, y in zip(first, again) for a, b in zip(x, y))
    assert torch.equal(
        torch.cat([b[2] for b in first]), data.epoch_plan(len(small.y_train), 3, 1).order
    )
    assert not torch.equal(first[0][0], other[0][0])
    labels = torch.cat([b[1] for b in first])
    assert torch.equal(labels, torch.as_tensor(small.y_train)[torch.cat([b[2] for b in first])])
    assert first[0][0].shape == (16, 3, 32, 32)


@pytest.mark.parametrize("world", [2, 3])
def test_shards_split_every_global_batch_evenly(synthetic: data.FolderDataset, world: int) -> None:
    small = data.subset(
        synthetic, 0.25, 0.25
    )  # 48 train, 16 test images: global batches of 20 (18) leave 8 (12)
    loaders = FolderLoaders(small)
    batch_size = 20 if world == 2 else 18  # the global batch splits evenly over the ranks
    whole = list(loaders.train(batch_size, seed=0, epoch=1, drop_last=False))
    ranks = [
        list(loaders.train(batch_size, seed=0, epoch=1, shard=(r, world))) for r in range(world)
    ]
    for step, batch in enumerate(whole):
        parts = [rank[step] for rank in ranks if step < len(rank)]
        assert [len(p[2]) for p in parts] == [
            len(range(r * len(batch[2]) // world, (r + 1) * len(batch[2]) // world))
            for r in range(world)
        ]
        for a, b in zip(batch, (torch.cat(t) for t in zip(*parts))):
            assert torch.equal(a, b)
    test_parts = [
        torch.cat([b[2] for b in loaders.test(6, shard=(r, world))]) for r in range(world)
    ]
    assert sorted(torch.cat(test_parts).tolist()) == list(range(len(small.y_test)))
    assert shard_batches(np.arange(10), 4, (1, 2), drop_last=True) == [[2, 3], [6, 7]]
    assert shard_batches(np.arange(9), 4, (1, 2), drop_last=False) == [
        [2, 3],
        [6, 7],
    ]  # a last batch of 1 cannot be split: dropped


def test_loader_kinds_on_a_folder(
    synthetic: data.FolderDataset, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="kdbench.data"):
        assert data.make_loaders("auto", synthetic, data_dir=data_dir / "no-betons").kind == "torch"
        assert "no .beton files" in caplog.text
        assert (
            data.make_loaders("tensor", synthetic, data_dir=data_dir / "no-betons").kind == "torch"
        )
        assert "loader tensor keeps a whole in-memory dataset" in caplog.text
    with pytest.raises(KdbenchError, match="strong view"):
        FolderLoaders(synthetic).train(8, seed=0, epoch=1, strong=True)
