"""kdbench.data: dataset readers, subsets, epoch plans and loaders (offline, CPU, fast)."""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from kdbench._torchvision import import_torchvision
from kdbench.data import (
    DATASETS,
    DatasetInfo,
    EpochPlan,
    FolderDataset,
    ImageArrays,
    dataset_info,
    epoch_plan,
    load_dataset,
    resolve_data_dir,
    subset,
    train_loader,
)
from kdbench.data import test_loader as make_test_loader  # aliased so pytest does not collect it
from kdbench.data.datasets import cifar
from kdbench.data.datasets.cifar import md5sum
from kdbench.data.datasets.synthetic import make_synthetic
from kdbench.data.registry import SMOKE_DATA
from kdbench.errors import KdbenchError, UnknownNameError
from torch import nn

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every download attempt fails as if offline; the directories asked for are recorded."""
    calls: list[Path] = []

    def offline(spec: cifar.CifarSpec, data_dir: Path) -> None:
        calls.append(data_dir)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(cifar, "_download", offline)
    return calls


# ---------------------------------------------------------------- fake files in the official layouts


def _batch(
    rng: np.random.Generator, count: int, label_key: str, num_classes: int
) -> tuple[dict, np.ndarray]:
    images = rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, num_classes, size=count)]
    batch = {
        "batch_label": "fake batch",
        label_key: labels,
        "data": images.reshape(count, 3 * 32 * 32),
        "filenames": [f"img_{i}.png" for i in range(count)],
    }
    if label_key == "fine_labels":
        batch["coarse_labels"] = [label // 5 for label in labels]
    return batch, images


def _dump(path: Path, obj: object) -> None:
    with path.open("wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def write_fake_cifar100(root: Path, train: int = 50, test: int = 20) -> dict[str, np.ndarray]:
    """Tiny CIFAR-100 in ``root/cifar-100-python``; returns the (N,3,32,32) images and labels written."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for split, count in (("train", train), ("test", test)):
        batch, images = _batch(rng, count, "fine_labels", 100)
        _dump(folder / split, batch)
        written[f"x_{split}"], written[f"y_{split}"] = images, np.array(batch["fine_labels"])
    _dump(
        folder / "meta",
        {
            "fine_label_names": [f"class_{i}" for i in range(100)],
            "coarse_label_names": [f"sup_{i}" for i in range(20)],
        },
    )
    return written


def write_fake_cifar10(root: Path, per_batch: int = 4, test: int = 6) -> dict[str, np.ndarray]:
    """Tiny CIFAR-10 in ``root/cifar-10-batches-py``; returns the (N,3,32,32) images and labels written."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    train_images, train_labels = [], []
    for i in range(1, 6):
        batch, images = _batch(rng, per_batch, "labels", 10)
        _dump(folder / f"data_batch_{i}", batch)
        train_images.append(images)
        train_labels += batch["labels"]
    batch, test_images = _batch(rng, test, "labels", 10)
    _dump(folder / "test_batch", batch)
    _dump(
        folder / "batches.meta",
        {"label_names": [f"class_{i}" for i in range(10)], "num_cases_per_batch": per_batch},
    )
    return {
        "x_train": np.concatenate(train_images),
        "y_train": np.array(train_labels),
        "x_test": test_images,
        "y_test": np.array(batch["labels"]),
    }


def trust_files(monkeypatch: pytest.MonkeyPatch, name: str, folder: Path) -> None:
    """Make the md5 table accept the fake files in ``folder``."""
    monkeypatch.setitem(
        cifar.CIFAR_MD5, name, {file: md5sum(folder / file) for file in cifar.CIFAR_MD5[name]}
    )


def nhwc(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 2, 3, 1)


# ---------------------------------------------------------------- CIFAR-100 / CIFAR-10


def test_fake_cifar100_loads_when_md5s_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = write_fake_cifar100(tmp_path)
    trust_files(monkeypatch, "cifar100", tmp_path / "cifar-100-python")
    arrays = load_dataset("cifar100", tmp_path, download=False)
    assert arrays.name == "cifar100" and arrays.num_classes == 100
    assert arrays.x_train.shape == (50, 32, 32, 3) and arrays.x_train.dtype == np.uint8
    assert arrays.x_test.shape == (20, 32, 32, 3) and arrays.y_test.dtype == np.int64
    np.testing.assert_array_equal(arrays.x_train, nhwc(written["x_train"]))
    np.testing.assert_array_equal(arrays.y_train, written["y_train"])
    np.testing.assert_array_equal(arrays.x_test, nhwc(written["x_test"]))
    assert (arrays.mean, arrays.std) == (CIFAR100_MEAN, CIFAR100_STD)


def test_our_reader_matches_torchvision_on_the_fake_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fake_cifar100(tmp_path)
    trust_files(monkeypatch, "cifar100", tmp_path / "cifar-100-python")
    torchvision = import_torchvision()
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    reference = torchvision.datasets.CIFAR100(str(tmp_path), train=True, download=False)
    arrays = load_dataset("cifar100", tmp_path, download=False)
    np.testing.assert_array_equal(arrays.x_train, reference.data)
    assert arrays.y_train.tolist() == reference.targets


def test_cifar100_md5_mismatch_names_file_and_both_md5s(tmp_path: Path) -> None:
    write_fake_cifar100(tmp_path)
    train = tmp_path / "cifar-100-python" / "train"
    with pytest.raises(KdbenchError) as caught:
        load_dataset("cifar100", tmp_path, download=False)
    message = str(caught.value)
    assert str(train) in message
    assert md5sum(train) in message and "16019d7e3df5f24257cddd939b257f8d" in message
    assert "cifar-100-python.tar.gz" in message and "eb9058c3a382ffc7106e4002c42a8d85" in message


def test_cifar100_missing_files_say_what_to_put_where(
    tmp_path: Path, no_network: list[Path]
) -> None:
    with pytest.raises(KdbenchError) as caught:
        load_dataset("cifar100", tmp_path, download=False)
    message = str(caught.value)
    for phrase in (
        str(tmp_path / "cifar-100-python"),
        "train, test, meta",
        "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "--data-dir",
        "KDBENCH_DATA",
        "downloading is turned off",
    ):
        assert phrase in message
    assert no_network == []


def test_cifar100_partial_folder_names_only_missing_file(tmp_path: Path) -> None:
    write_fake_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(KdbenchError, match=r"is missing meta \("):
        load_dataset("cifar100", tmp_path, download=False)


def test_failed_download_is_reported_with_the_same_advice(
    tmp_path: Path, no_network: list[Path]
) -> None:
    with pytest.raises(KdbenchError) as caught:
        load_dataset("cifar100", tmp_path)
    assert "the download failed (OSError: network disabled in tests)" in str(caught.value)
    assert "eb9058c3a382ffc7106e4002c42a8d85" in str(caught.value)
    assert no_network == [tmp_path.absolute()]


def test_download_is_used_when_files_are_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "source"
    write_fake_cifar100(folder)
    trust_files(monkeypatch, "cifar100", folder / "cifar-100-python")
    monkeypatch.setattr(cifar, "_download", lambda spec, data_dir: write_fake_cifar100(data_dir))
    arrays = load_dataset("cifar100", tmp_path / "fresh")
    assert (tmp_path / "fresh" / "cifar-100-python" / "train").is_file() and arrays.x_train.shape[
        0
    ] == 50


def test_fake_cifar10_loads_and_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_fake_cifar10(tmp_path / "ok")
    with pytest.raises(KdbenchError, match="c99cafc152244af753f735de768cd75f"):
        load_dataset("cifar10", tmp_path / "ok", download=False)
    trust_files(monkeypatch, "cifar10", tmp_path / "ok" / "cifar-10-batches-py")
    arrays = load_dataset("cifar10", tmp_path / "ok", download=False)
    assert arrays.num_classes == 10
    assert arrays.x_train.shape == (20, 32, 32, 3) and arrays.x_test.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(arrays.x_train, nhwc(written["x_train"]))
    np.testing.assert_array_equal(arrays.y_train, written["y_train"])
    assert arrays.mean == (0.4914, 0.4822, 0.4465) and arrays.std == (0.2470, 0.2435, 0.2616)
    with pytest.raises(KdbenchError) as caught:
        load_dataset("cifar10", tmp_path / "empty", download=False)
    for phrase in (
        "cifar-10-batches-py",
        "data_batch_1",
        "batches.meta",
        "c58f30108f718f92721af3b95e74349a",
    ):
        assert phrase in str(caught.value)


# ---------------------------------------------------------------- registry, data dir, npz


def test_unknown_dataset_name() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'cifar100'") as caught:
        load_dataset("cifar-100")
    assert isinstance(caught.value, KeyError) and set(caught.value.known) == set(DATASETS)


def test_options_are_checked() -> None:
    with pytest.raises(KdbenchError, match="does not take option.*bogus"):
        load_dataset("synthetic", bogus=1)
    with pytest.raises(KdbenchError, match="needs option.*path"):
        load_dataset("npz")
    with pytest.raises(KdbenchError, match="does not take option"):
        load_dataset("cifar100", path="x")


def test_resolve_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("KDBENCH_DATA")
    assert resolve_data_dir(None) == Path.home() / ".cache" / "kdbench" / "data"


def test_npz_defaults_options_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, size=(30, 8, 8, 3), dtype=np.uint8)
    test_labels = np.arange(5, dtype=np.int32)
    np.savez(
        tmp_path / "tiny.npz",
        x_train=x_train,
        y_train=np.arange(30) % 7,
        x_test=x_train[:5],
        y_test=test_labels,
    )
    arrays = load_dataset("npz", tmp_path, path="tiny.npz")
    assert arrays.name == "npz:tiny" and arrays.num_classes == 7 and arrays.y_test.dtype == np.int64
    pixels = x_train.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(arrays.mean, pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(arrays.std, pixels.std(axis=0), rtol=1e-12)
    given = load_dataset(
        "npz", path=tmp_path / "tiny.npz", num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    assert (
        given.num_classes == 10
        and given.mean == (0.5, 0.5, 0.5)
        and given.std == (0.25, 0.25, 0.25)
    )
    with pytest.raises(KdbenchError, match="does not exist"):
        load_dataset("npz", tmp_path, path="absent.npz")
    np.savez(tmp_path / "partial.npz", x_train=x_train, y_train=np.zeros(30, dtype=np.int64))
    with pytest.raises(KdbenchError, match="lacks x_test, y_test"):
        load_dataset("npz", tmp_path, path="partial.npz")


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("synthetic", {}),
        ("synthetic", {"num_classes": 7, "image_size": 12, "train_size": 30, "test_size": 9}),
        ("imagenet_synthetic", {"num_classes": 3, "train_per_class": 2, "val_per_class": 1}),
        ("imagenet_synthetic", {"num_classes": 2, "train_per_class": 3, "image_size": 40}),
        ("npz", {"path": "tiny.npz"}),
        ("npz", {"path": "tiny.npz", "num_classes": 9}),
    ],
)
def test_dataset_info_agrees_with_the_data(name: str, options: dict, tmp_path: Path) -> None:
    """What a DatasetInfo says without reading the data (cost, quantities and the planner use it) is what
    reading the data gives."""
    x = np.random.default_rng(0).integers(0, 256, size=(6, 10, 10, 3), dtype=np.uint8)
    np.savez(
        tmp_path / "tiny.npz",
        x_train=x,
        y_train=np.arange(6) % 4,
        x_test=x[:2],
        y_test=np.arange(2),
    )
    info = dataset_info(name)
    known = info.options(options)
    dataset = load_dataset(name, tmp_path, **options)
    assert info.name == name and info.kind == (
        "folder" if isinstance(dataset, FolderDataset) else "arrays"
    )
    assert info.sizes(known, tmp_path) == (len(dataset.y_train), len(dataset.y_test))
    assert info.num_classes(known) in (None, dataset.num_classes)
    if info.num_classes(known) is None:
        assert name == "npz" and "num_classes" not in options
    side = (
        dataset.crop.image_size if isinstance(dataset, FolderDataset) else dataset.x_train.shape[1]
    )
    assert info.image_size(known) in (None, side)


def test_every_dataset_has_its_info() -> None:
    assert set(DATASETS) == {
        "cifar10",
        "cifar100",
        "imagenet",
        "imagenet_synthetic",
        "npz",
        "synthetic",
    }
    for name in DATASETS:
        info = dataset_info(name)
        assert info.name == name and info.smoke.name in DATASETS
    assert dataset_info("cifar10").num_classes({}) == 10 and dataset_info("cifar100").sizes(
        {}, Path()
    ) == (
        50_000,
        10_000,
    )
    with pytest.raises(UnknownNameError, match="Did you mean 'imagenet'"):
        dataset_info("imagenett")


def test_a_new_dataset_is_one_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    """A DatasetInfo added to DATASETS is all that loading, option checks, cost and the smoke profile need."""
    from kdbench import cost
    from kdbench.plan import DataSpec

    def load_tiny(*, classes: int = 3) -> ImageArrays:
        return dataclasses.replace(
            make_synthetic(num_classes=classes, train_size=12, test_size=6), name="tiny"
        )

    tiny = DatasetInfo(
        name="tiny",
        kind="arrays",
        load=load_tiny,
        num_classes=lambda options: options["classes"],
        image_size=lambda options: 32,
        sizes=lambda options, data_dir: (12, 6),
    )
    monkeypatch.setitem(DATASETS._entries, "tiny", tiny)
    assert load_dataset("tiny", classes=4).num_classes == 4
    with pytest.raises(KdbenchError, match="its options: classes"):
        load_dataset("tiny", num_classes=4)
    assert cost.dataset_sizes(DataSpec(name="tiny", options={}, train_fraction=0.5)) == (6, 6)
    assert tiny.smoke.for_options({"classes": 4}) == ("synthetic", dict(SMOKE_DATA))


@pytest.fixture(scope="module")
def shared_data() -> Path:
    value = os.environ.get("KDBENCH_DATA")
    if not value or not (Path(value) / "cifar100-real-sample.npz").is_file():
        pytest.skip("KDBENCH_DATA is not set to the shared offline data folder (../shared/data)")
    return Path(value)


def test_shared_cifar10_jpeg_npz(shared_data: Path) -> None:
    arrays = load_dataset("npz", path="cifar10-jpeg-q75-20k.npz")
    assert arrays.x_train.shape == (20000, 32, 32, 3) and arrays.x_test.shape == (10000, 32, 32, 3)
    assert (
        arrays.x_train.dtype == np.uint8
        and arrays.y_train.dtype == np.int64
        and arrays.num_classes == 10
    )
    np.testing.assert_allclose(arrays.mean, (0.4914, 0.4822, 0.4465), atol=0.01)


def test_shared_cifar100_sample_npz(shared_data: Path) -> None:
    arrays = load_dataset("npz", shared_data, path="cifar100-real-sample.npz", num_classes=100)
    assert arrays.x_train.shape == (1117, 32, 32, 3) and arrays.x_test.shape == (916, 32, 32, 3)
    assert arrays.num_classes == 100 and arrays.y_test.dtype == np.int64
    assert load_dataset("npz", shared_data, path="cifar100-real-sample.npz").num_classes == 100


# ---------------------------------------------------------------- synthetic and subset


def test_synthetic_is_deterministic_and_balanced() -> None:
    first, again = load_dataset("synthetic"), load_dataset("synthetic")
    assert first.x_train.shape == (512, 32, 32, 3) and first.x_test.shape == (256, 32, 32, 3)
    assert first.num_classes == 100 and (first.mean, first.std) == (CIFAR100_MEAN, CIFAR100_STD)
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(first, key), getattr(again, key))
    assert not np.array_equal(first.x_train, load_dataset("synthetic", seed=1).x_train)
    for labels in (first.y_train, first.y_test):
        counts = np.bincount(labels, minlength=100)
        assert counts.max() - counts.min() <= 1 and counts.min() >= 2
    small = load_dataset("synthetic", num_classes=10, image_size=16, train_size=40, test_size=20)
    assert (
        small.x_train.shape == (40, 16, 16, 3) and np.bincount(small.y_train).tolist() == [4] * 10
    )
    bigger = load_dataset("synthetic", train_size=1024)
    np.testing.assert_array_equal(
        bigger.x_test, first.x_test
    )  # the test set does not depend on train_size
    with pytest.raises(KdbenchError, match="train_size"):
        load_dataset("synthetic", train_size=0)
    with pytest.raises(KdbenchError, match="seed"):
        load_dataset("synthetic", seed="0")


def test_synthetic_is_learnable_by_a_tiny_cnn() -> None:
    arrays = load_dataset("synthetic")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, arrays.num_classes),
        )
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
        for epoch in range(4):
            for images, labels, _ in train_loader(arrays, 32, seed=0, epoch=epoch):
                loss = nn.functional.cross_entropy(net(images), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            correct = sum(
                int((net(x).argmax(1) == y).sum()) for x, y, _ in make_test_loader(arrays, 256)
            )
    assert correct / len(arrays.y_test) > 0.10  # chance is 0.01


def indexed_arrays(labels: np.ndarray) -> ImageArrays:
    """Arrays whose first two pixel values spell each image's original index."""
    index = np.arange(len(labels))
    images = np.zeros((len(labels), 2, 2, 3), dtype=np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = index % 256, index // 256
    labels = labels.astype(np.int64)
    return ImageArrays(
        "indexed",
        images,
        labels,
        images,
        labels,
        int(labels.max()) + 1,
        CIFAR100_MEAN,
        CIFAR100_STD,
    )


def original_index(images: np.ndarray) -> np.ndarray:
    return images[:, 0, 0, 0].astype(np.int64) + 256 * images[:, 0, 0, 1].astype(np.int64)


def test_subset_is_stratified_and_deterministic() -> None:
    labels = np.random.default_rng(0).permutation(np.repeat([0, 1, 2], [500, 300, 200]))
    arrays = indexed_arrays(labels)
    half = subset(arrays, train_fraction=0.5, test_fraction=0.1, seed=3)
    assert np.bincount(half.y_train).tolist() == [250, 150, 100]
    assert np.bincount(half.y_test).tolist() == [50, 30, 20]
    kept = original_index(half.x_train)
    assert np.all(np.diff(kept) > 0)  # original order, no repeats
    np.testing.assert_array_equal(half.y_train, labels[kept])
    np.testing.assert_array_equal(kept, original_index(subset(arrays, 0.5, 0.1, seed=3).x_train))
    assert not np.array_equal(kept, original_index(subset(arrays, 0.5, 0.1, seed=4).x_train))
    odd = subset(arrays, train_fraction=0.013)  # 13 images: 6.5 / 3.9 / 2.6 -> largest remainders
    assert np.bincount(odd.y_train).tolist() == [6, 4, 3]
    full = subset(arrays)
    np.testing.assert_array_equal(full.x_train, arrays.x_train)
    with pytest.raises(KdbenchError, match="train_fraction"):
        subset(arrays, train_fraction=0.0)


# ---------------------------------------------------------------- epoch plans and loaders


@pytest.fixture(scope="module")
def small() -> ImageArrays:
    return load_dataset("synthetic", num_classes=10, train_size=200, test_size=70, seed=7)


def reference_normalised(
    images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW: scale, subtract mean, divide by std (torchvision's ToTensor + Normalize)."""
    scaled = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float32) / 255.0
    return (scaled - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def collect(
    loader: Iterable[tuple[torch.Tensor, ...]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, labels, indices = zip(*loader)
    return torch.cat(images), torch.cat(labels), torch.cat(indices)


def test_epoch_plan_is_fixed_by_seed_and_epoch() -> None:
    global_state = torch.get_rng_state()
    plan = epoch_plan(1000, seed=5, epoch=2)
    torch.manual_seed(123)  # global RNG must not matter
    again = epoch_plan(1000, seed=5, epoch=2)
    assert isinstance(plan, EpochPlan) and plan.padding == 4
    assert (
        plan.order.dtype == torch.int64
        and plan.offsets.dtype == torch.int64
        and plan.flips.dtype == torch.bool
    )
    assert plan.offsets.shape == (1000, 2) and sorted(plan.order.tolist()) == list(range(1000))
    for part in ("order", "offsets", "flips"):
        assert torch.equal(getattr(plan, part), getattr(again, part))
    for other in (epoch_plan(1000, seed=5, epoch=3), epoch_plan(1000, seed=6, epoch=2)):
        assert not torch.equal(plan.order, other.order) and not torch.equal(
            plan.offsets, other.offsets
        )
    torch.set_rng_state(global_state)
    epoch_plan(10, 0, 0)
    assert torch.equal(torch.get_rng_state(), global_state)


def test_epoch_plan_switches_replace_only_their_part() -> None:
    plan = epoch_plan(300, seed=1, epoch=4)
    ordered = epoch_plan(300, seed=1, epoch=4, shuffle=False)
    assert torch.equal(ordered.order, torch.arange(300)) and torch.equal(
        ordered.offsets, plan.offsets
    )
    plain = epoch_plan(300, seed=1, epoch=4, augment=False)
    assert torch.equal(plain.order, plan.order)
    assert bool((plain.offsets == 4).all()) and not bool(plain.flips.any())


def test_offsets_cover_the_full_range_and_flips_are_fair() -> None:
    plan = epoch_plan(50_000, seed=0, epoch=0)
    for column in range(2):
        counts = torch.bincount(plan.offsets[:, column], minlength=9)
        assert len(counts) == 9 and bool((counts > 50_000 / 9 * 0.9).all())
    assert 0.48 < plan.flips.float().mean().item() < 0.52


def test_test_loader_reproduces_the_normalised_arrays(small: ImageArrays) -> None:
    images, labels, indices = collect(make_test_loader(small, 32))
    assert images.dtype == torch.float32 and images.shape == (70, 3, 32, 32)
    assert torch.equal(images, reference_normalised(small.x_test, small.mean, small.std))
    assert torch.equal(labels, torch.from_numpy(small.y_test)) and torch.equal(
        indices, torch.arange(70)
    )


def test_train_batches_shapes_order_and_labels(small: ImageArrays) -> None:
    batches = list(train_loader(small, 64, seed=0, epoch=0))
    assert [len(b[0]) for b in batches] == [64, 64, 64, 8]
    images, labels, indices = batches[0]
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and indices.dtype == torch.int64
    _, labels, indices = collect(batches)
    assert torch.equal(indices, epoch_plan(200, 0, 0).order)
    assert torch.equal(labels, torch.from_numpy(small.y_train)[indices])
    assert len(list(train_loader(small, 64, seed=0, epoch=0, drop_last=True))) == 3
    images, _, indices = collect(train_loader(small, 64, seed=0, epoch=0, augment=False))
    assert torch.equal(images, reference_normalised(small.x_train, small.mean, small.std)[indices])


def test_crop_and_flip_follow_the_plan_per_sample(small: ImageArrays) -> None:
    plan = epoch_plan(200, seed=3, epoch=1)
    images, _, indices = collect(train_loader(small, 50, seed=3, epoch=1))
    for position, index in enumerate(indices.tolist()):
        padded = np.zeros((40, 40, 3), dtype=np.uint8)
        padded[4:36, 4:36] = small.x_train[index]
        dx, dy = plan.offsets[index].tolist()
        expected = padded[dy : dy + 32, dx : dx + 32]
        if plan.flips[index]:
            expected = expected[:, ::-1]
        reference = reference_normalised(
            np.ascontiguousarray(expected)[None], small.mean, small.std
        )[0]
        assert torch.equal(images[position], reference), f"sample {index}"
    unaugmented = reference_normalised(small.x_train, small.mean, small.std)[indices]
    changed = (images != unaugmented).flatten(1).any(1)
    assert changed.float().mean() > 0.8


def test_batches_replay_exactly_whatever_the_workers(small: ImageArrays) -> None:
    global_state = torch.get_rng_state()
    epochs = [collect(train_loader(small, 50, seed=9, epoch=epoch)) for epoch in (0, 1)]
    assert torch.equal(torch.get_rng_state(), global_state)  # loaders leave the global RNG alone
    assert not torch.equal(epochs[0][2], epochs[1][2])
    torch.manual_seed(999)  # a resumed run starts from another global state
    with_workers = list(train_loader(small, 50, seed=9, epoch=1, num_workers=2))
    assert len(with_workers) == 4
    for replayed, original in zip(collect(with_workers), epochs[1]):
        assert torch.equal(replayed, original)


def test_import_torchvision_shim() -> None:
    torchvision = import_torchvision()
    assert torchvision.__name__ == "torchvision" and import_torchvision() is torchvision
