"""The ffcv loaders and `kdbench data prepare` against a stand-in ffcv, so that they run where ffcv is not
installed: the stand-in's writer keeps the samples it is given, and its Loader serves them in the traversal
order kdbench sets, as ffcv does. What ffcv itself computes (JPEG decoding, its crops) is checked by
tests/test_loaders.py and tests/test_imagenet_ffcv.py where ffcv is installed."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kdbench import data
from kdbench.data.loaders import ffcv_arrays, ffcv_files, ffcv_folder
from kdbench.data.loaders.ffcv_prepare import prepare_dataset
from kdbench.data.loaders.tensor_arrays import TensorLoaders
from kdbench.data.loaders.torch_arrays import TorchLoaders
from kdbench.data.loaders.torch_folder import FolderLoaders
from kdbench.errors import KdbenchError, UnknownNameError

CPU = torch.device("cpu")


class StandIn:
    """The ffcv names kdbench imports. ``written`` maps a .beton path to the samples written to it; ``loaders``
    lists every Loader built."""

    def __init__(self) -> None:
        self.written: dict[str, list[tuple[Any, int, int]]] = {}
        self.loaders: list[Any] = []
        standin = self

        class Field:
            def __init__(self, **settings: Any) -> None:
                self.settings = settings

        class Decoder:
            def __init__(self, *args: Any, **settings: Any) -> None:
                self.args, self.settings = args, settings

        class TraversalOrder:
            def __init__(self, loader: Any) -> None:
                self.indices = np.arange(len(loader.samples))

        class DatasetWriter:
            def __init__(self, path: str, fields: dict[str, Any], num_workers: int) -> None:
                self.path, self.fields = path, fields

            def from_indexed_dataset(self, samples: Any) -> None:
                Path(self.path).write_bytes(b"stand-in beton")
                standin.written[self.path.removesuffix(".partial")] = [
                    samples[i] for i in range(len(samples))
                ]

        class Loader:
            def __init__(self, path: str, *, batch_size, num_workers, order, drop_last, pipelines):
                self.samples, self.batch_size, self.drop_last = (
                    standin.written[path],
                    batch_size,
                    drop_last,
                )
                self.path, self.pipelines = path, pipelines
                self.traversal_order = order(self)
                standin.loaders.append(self)

            def __iter__(self):
                order = self.traversal_order.sample_order(0)
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start : start + self.batch_size]
                    if self.drop_last and len(chunk) < self.batch_size:
                        return
                    images = [np.asarray(self.samples[i][0]) for i in chunk]
                    if (
                        len({image.shape for image in images}) > 1
                    ):  # image files: "decoded" to one size
                        images = [np.zeros((8, 8, 3), dtype=np.uint8) for _ in chunk]
                    yield (
                        torch.from_numpy(np.stack(images)),
                        torch.tensor([[self.samples[i][1]] for i in chunk]),
                        torch.tensor([[self.samples[i][2]] for i in chunk]),
                    )

        names = {
            "ffcv": {},
            "ffcv.fields": {"IntField": Field, "RGBImageField": Field},
            "ffcv.fields.basics": {"IntDecoder": Decoder},
            "ffcv.fields.rgb_image": {
                "SimpleRGBImageDecoder": Decoder,
                "CenterCropRGBImageDecoder": type("Centre", (Decoder,), {}),
                "RandomResizedCropRGBImageDecoder": type("Random", (Decoder,), {}),
            },
            "ffcv.loader": {"Loader": Loader},
            "ffcv.transforms": {
                "ToTensor": Decoder,
                "RandomHorizontalFlip": type("Flip", (Decoder,), {}),
            },
            "ffcv.traversal_order": {},
            "ffcv.traversal_order.base": {"TraversalOrder": TraversalOrder},
            "ffcv.writer": {"DatasetWriter": DatasetWriter},
        }
        self.modules = {}
        for module, attributes in names.items():
            self.modules[module] = types.ModuleType(module)
            vars(self.modules[module]).update(attributes)


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> StandIn:
    fake = StandIn()
    for name, module in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return fake


@pytest.fixture(scope="module")
def small() -> data.ImageArrays:
    return data.load_dataset("synthetic", num_classes=10, train_size=200, test_size=70, seed=7)


def same_batches(reference, batches) -> int:
    reference, batches = list(reference), list(batches)
    assert len(batches) == len(reference)
    for expected, got in zip(reference, batches):
        assert len(got) == len(expected)
        for e, g in zip(expected, got):
            assert g.dtype == e.dtype and torch.equal(g, e)
    return len(batches)


def test_arrays_betons_serve_the_reference_batches(standin: StandIn, small, tmp_path: Path) -> None:
    folder = ffcv_arrays.prepare(small, ffcv_files.beton_dir(small.name, tmp_path))
    assert {p.name for p in folder.iterdir()} == {"train.beton", "test.beton", "meta.json"}
    loaders = data.make_loaders("ffcv", small, data_dir=tmp_path)
    assert isinstance(loaders, ffcv_arrays.FfcvLoaders)
    reference = TorchLoaders(small)
    for epoch in (0, 1):
        assert (
            same_batches(
                reference.train(64, seed=3, epoch=epoch), loaders.train(64, seed=3, epoch=epoch)
            )
            == 4
        )
    same_batches(
        reference.train(64, seed=8, epoch=2, strong=True, drop_last=True),
        loaders.train(64, seed=8, epoch=2, strong=True, drop_last=True),
    )
    same_batches(
        reference.train(64, seed=3, epoch=1, shard=(1, 2)),
        loaders.train(64, seed=3, epoch=1, shard=(1, 2)),
    )
    same_batches(reference.test(32), loaders.test(32))
    # One Loader per (split, batch size, drop_last), kept across epochs and passes.
    keys = sorted(loaders._loaders)
    assert keys == [
        ("test", 32, False),
        ("train", 32, False),
        ("train", 64, False),
        ("train", 64, True),
    ]
    assert len(standin.loaders) == 4


def test_arrays_fall_back_to_tensor_without_matching_betons(
    standin: StandIn, small, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ffcv_arrays.prepare(small, ffcv_files.beton_dir(small.name, tmp_path))
    with caplog.at_level("WARNING", logger="kdbench.data"):
        part = data.subset(small, 0.5)
        assert isinstance(data.make_loaders("ffcv", part, data_dir=tmp_path), TensorLoaders)
    assert "a subset, another dataset, or files changed since" in caplog.text


def test_prepare_dataset_writes_folder_betons_the_ffcv_loader_reads(
    standin: StandIn, tmp_path: Path
) -> None:
    """`kdbench data prepare imagenet_synthetic`: FFCV's ImageNet settings, then the loader's order and shards
    are the reference's, one Loader per (split, per-rank batch size, augment), train and test views."""
    out = prepare_dataset("imagenet_synthetic", tmp_path)
    assert out == tmp_path / "ffcv" / "imagenet_synthetic"
    meta = (out / "meta.json").read_text()
    assert '"write_mode": "proportion"' in meta and '"max_resolution": 500' in meta
    dataset = data.load_dataset("imagenet_synthetic", tmp_path)
    loaders = data.make_loaders("auto", dataset, data_dir=tmp_path)
    assert isinstance(loaders, ffcv_folder.FfcvFolderLoaders) and loaders.kind == "ffcv"
    reference = FolderLoaders(dataset)
    for shard in ((0, 1), (1, 2)):
        for ours, theirs in zip(
            loaders.train(16, seed=1, epoch=2, shard=shard),
            reference.train(16, seed=1, epoch=2, shard=shard),
        ):
            assert torch.equal(ours[1], theirs[1]) and torch.equal(ours[2], theirs[2])
    test_indices = torch.cat([batch[2] for batch in loaders.test(20)])
    assert torch.equal(test_indices, torch.arange(len(dataset.y_test)))
    assert sorted(loaders._loaders) == [
        ("test", 20, False),
        ("train", 8, True),
        ("train", 16, True),
    ]
    train_view = [
        type(d).__name__ for d in loaders._loaders[("train", 16, True)].pipelines["image"]
    ]
    test_view = loaders._loaders[("test", 20, False)].pipelines["image"][0]
    assert train_view == ["Random", "Flip", "Decoder"]
    assert test_view.settings == {"ratio": 224 / 256}
    with pytest.raises(KdbenchError, match="strong view"):
        loaders.train(16, seed=1, epoch=0, strong=True)


def test_prepare_dataset_refuses_what_it_cannot_write(standin: StandIn, tmp_path: Path) -> None:
    with pytest.raises(
        UnknownNameError, match="Known datasets: cifar10, cifar100, imagenet, imagenet_synthetic"
    ):
        prepare_dataset("synthetic", tmp_path)
    with pytest.raises(KdbenchError, match="unknown write mode 'png'"):
        prepare_dataset("imagenet_synthetic", tmp_path, write_mode="png")
