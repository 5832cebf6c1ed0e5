"""The official CIFAR-10/100 python-pickle files: md5 check, reading, and one locked download of the archive."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from kdbench.data.arrays import ImageArrays
from kdbench.data.download import extract, fetch, md5sum
from kdbench.data.registry import DATASETS, DatasetInfo
from kdbench.errors import KdbenchError
from kdbench.io import file_lock

CIFAR_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR_SIZES, CIFAR_IMAGE_SIZE = (50_000, 10_000), 32  # train / test images, of 32×32 pixels

# Official md5 of every file kdbench reads, per dataset (the same values torchvision checks).
CIFAR_MD5: dict[str, dict[str, str]] = {
    "cifar100": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
}


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant lives on disk and how to read it."""

    title: str
    folder: str
    archive: str
    archive_md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    base_url: str = "https://www.cs.toronto.edu/~kriz/"

    @property
    def url(self) -> str:
        return f"{self.base_url}{self.archive}"


CIFAR_SPECS: dict[str, CifarSpec] = {
    "cifar100": CifarSpec(
        title="CIFAR-100",
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_files=("test",),
        label_key="fine_labels",
        num_classes=100,
        mean=(0.5071, 0.4867, 0.4408),
        std=(0.2675, 0.2565, 0.2761),
    ),
    "cifar10": CifarSpec(
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        archive_md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key="labels",
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
}


def load_cifar(name: str, data_dir: Path, *, download: bool = True) -> ImageArrays:
    """Read CIFAR ``name`` from ``data_dir/<official folder>``, downloading it first if missing and allowed."""
    spec = CIFAR_SPECS[name]
    folder = data_dir / spec.folder
    if _missing(name, folder):
        if not download:
            raise KdbenchError(_missing_message(name, data_dir, "downloading is turned off"))
        prepare_cifar(name, data_dir)
    for file in CIFAR_MD5[name]:
        _check_md5(spec, folder / file, CIFAR_MD5[name][file])
    x_train, y_train = _read_batches(spec, folder, spec.train_files)
    x_test, y_test = _read_batches(spec, folder, spec.test_files)
    return ImageArrays(
        name, x_train, y_train, x_test, y_test, spec.num_classes, spec.mean, spec.std
    )


def prepare_cifar(name: str, data_dir: Path) -> None:
    """Make ``data_dir/<folder>`` hold the official files: downloaded and extracted once, under a lock that every
    process asking for them takes (the others wait, then find the files); md5-checked after."""
    spec = CIFAR_SPECS[name]
    folder = data_dir / spec.folder
    try:
        with file_lock(data_dir / f".{spec.archive}.lock"):
            if _missing(name, folder):
                _download(spec, data_dir)
    except KdbenchError as error:
        raise KdbenchError(_missing_message(name, data_dir, str(error))) from None
    except OSError as error:  # offline, refused, timed out, disk full: all end in the same advice
        raise KdbenchError(
            _missing_message(
                name, data_dir, f"the download failed ({type(error).__name__}: {error})"
            )
        ) from None
    if _missing(name, folder):
        raise KdbenchError(_missing_message(name, data_dir, "the archive did not hold them"))
    for file in CIFAR_MD5[name]:
        _check_md5(spec, folder / file, CIFAR_MD5[name][file])


def _missing(name: str, folder: Path) -> list[str]:
    return [file for file in CIFAR_MD5[name] if not (folder / file).is_file()]


def _download(spec: CifarSpec, data_dir: Path) -> None:
    """Fetch the official archive (md5-checked) and extract its folder into ``data_dir``."""
    archive = fetch(spec.url, data_dir / spec.archive, spec.archive_md5, label=spec.title)
    extract(archive, data_dir, spec.folder)


def _missing_message(name: str, data_dir: Path, reason: str) -> str:
    spec = CIFAR_SPECS[name]
    folder = data_dir / spec.folder
    return (
        f"{spec.title} not found: {folder} is missing {', '.join(_missing(name, folder))} ({reason}). "
        f"kdbench needs the official python version, the files {', '.join(CIFAR_MD5[name])} in {folder}/. "
        f"Get {spec.archive} (md5 {spec.archive_md5}) from {spec.url} (see {CIFAR_PAGE}) "
        f"and extract it inside {data_dir} (tar -xzf {spec.archive} -C {data_dir}). "
        f"To use another data directory, pass --data-dir DIR or set KDBENCH_DATA=DIR."
    )


def _check_md5(spec: CifarSpec, path: Path, expected: str) -> None:
    actual = md5sum(path)
    if actual != expected:
        raise KdbenchError(
            f"{spec.title} file {path} has md5 {actual}, but the official file's md5 is {expected}. "
            f"It is corrupt, truncated or not from the official python version. Delete {path.parent} and "
            f"extract {spec.archive} (md5 {spec.archive_md5}, from {spec.url}) again, or let kdbench download it."
        )


def _read_batches(
    spec: CifarSpec, folder: Path, files: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 (N,32,32,3) and labels as int64 from official pickle batches (read after the md5 check)."""
    images, labels = [], []
    for file in files:
        with (folder / file).open("rb") as handle:
            batch = pickle.load(handle, encoding="latin1")
        if not isinstance(batch, dict) or "data" not in batch or spec.label_key not in batch:
            raise KdbenchError(
                f"{folder / file} is not a {spec.title} batch: it needs 'data' and {spec.label_key!r}"
            )
        images.append(
            np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        )
        labels.append(np.asarray(batch[spec.label_key], dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _info(name: str, num_classes: int) -> DatasetInfo:
    return DatasetInfo(
        name=name,
        kind="arrays",
        load=partial(load_cifar, name),
        num_classes=lambda options: num_classes,
        image_size=lambda options: CIFAR_IMAGE_SIZE,
        sizes=lambda options, data_dir: CIFAR_SIZES,
        ffcv=True,
    )


for _name, _spec in CIFAR_SPECS.items():
    DATASETS.add(_name, _info(_name, _spec.num_classes))
