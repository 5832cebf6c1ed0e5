"""File-backed datasets in the ImageFolder layout ``<root>/{train,val}/<class>/**/<image>`` (ImageNet).

Classes and files are sorted as torchvision's ``ImageFolder`` sorts them, so label k is the k-th class
folder by name. Scanning 1.28M files takes minutes on network storage, so the file list is cached in an
index file (written atomically) keyed by the modification times of the split and class folders: adding or
removing images in a class folder changes its time and the next run re-scans.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdbench.data.augment.imagenet_views import IMAGENET_MEAN, IMAGENET_STD, CropOptions
from kdbench.errors import KdbenchError
from kdbench.io import atomic_write_bytes

log = logging.getLogger("kdbench.data")
SPLITS = ("train", "val")
INDEX_VERSION = 1
# torchvision's IMG_EXTENSIONS, compared case-insensitively as ImageFolder does.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class FolderDataset:
    """A dataset read from image files: per split, paths relative to ``root/<split>`` and int64 labels.

    Paths are a bytes array (``S`` dtype): 1.28M of them take 50 MB, shared by forked loader workers.
    ``crop`` holds the train/test view options (``imagenet_transforms``).
    """

    name: str
    root: Path
    classes: tuple[str, ...]
    train_files: np.ndarray
    y_train: np.ndarray
    test_files: np.ndarray
    y_test: np.ndarray
    crop: CropOptions
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def path(self, split: str, index: int) -> str:
        """The file of sample ``index`` of ``split`` ("train" or "test")."""
        files = self.train_files if split == "train" else self.test_files
        return os.path.join(
            self.root, "train" if split == "train" else "val", files[index].decode()
        )

    def take(self, keep_train: np.ndarray, keep_test: np.ndarray) -> FolderDataset:
        """The samples at the given indices of each split (``arrays.subset`` calls this)."""
        return dataclasses.replace(
            self,
            train_files=self.train_files[keep_train],
            y_train=self.y_train[keep_train],
            test_files=self.test_files[keep_test],
            y_test=self.y_test[keep_test],
        )


def load_folder(
    name: str, root: Path, index_dir: Path, crop: CropOptions, hint: str
) -> FolderDataset:
    """The dataset in ``root`` (``train/`` and ``val/`` class folders), from its index when still valid.

    ``hint`` ends the error raised when the layout is missing (where the data should come from).
    """
    _check_layout(name, root, hint)
    key = _fingerprint(root)
    index_file = index_dir / f"{name}-{hashlib.sha256(str(root).encode()).hexdigest()[:12]}.json"
    index = _read_index(index_file, key)
    if index is None:
        log.info(
            "dataset %s: scanning %s (the file list is then cached in %s)", name, root, index_file
        )
        index = _scan(name, root, key)
        try:
            atomic_write_bytes(index_file, json.dumps(index).encode())
        except OSError as exc:
            log.warning(
                "dataset %s: could not cache the file list in %s (%s); the next run scans again",
                name,
                index_file,
                exc,
            )
    splits = {split: _flatten(index["splits"][split]) for split in SPLITS}
    return FolderDataset(
        name, root, tuple(index["classes"]), *splits["train"], *splits["val"], crop=crop
    )


def _check_layout(name: str, root: Path, hint: str) -> None:
    missing = [split for split in SPLITS if not (root / split).is_dir()]
    if missing:
        raise KdbenchError(
            f"dataset {name!r}: no {' or '.join(f'{root}/{s}/' for s in missing)} folder. Expected the ImageFolder layout "
            f"{root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG (val sorted into class folders, as the usual "
            f"valprep.sh leaves it). {hint}"
        )


def _fingerprint(root: Path) -> str:
    """A digest of the names and modification times of the split folders and their class folders."""
    digest = hashlib.sha256()
    for split in SPLITS:
        with os.scandir(root / split) as entries:
            dirs = sorted((e.name, e.stat().st_mtime_ns) for e in entries if e.is_dir())
        digest.update(repr((split, (root / split).stat().st_mtime_ns, dirs)).encode())
    return digest.hexdigest()


def _read_index(path: Path, key: str) -> dict | None:
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if index.get("version") != INDEX_VERSION or index.get("fingerprint") != key:
        return None
    return index


def _scan(name: str, root: Path, key: str) -> dict:
    """Classes = train's class folders sorted by name; files per class sorted as ImageFolder walks them."""
    classes = sorted(e.name for e in os.scandir(root / "train") if e.is_dir())
    if not classes:
        raise KdbenchError(
            f"dataset {name!r}: {root}/train/ has no class folders; expected {root}/train/<wnid>/*.JPEG."
        )
    splits: dict[str, list[list[str]]] = {}
    for split in SPLITS:
        extra = sorted(
            e.name for e in os.scandir(root / split) if e.is_dir() and e.name not in set(classes)
        )
        if extra:
            raise KdbenchError(
                f"dataset {name!r}: {root}/{split}/ has class folders that train/ lacks: {', '.join(extra[:5])}."
            )
        splits[split] = [_class_files(root / split / wnid) for wnid in classes]
        if not any(splits[split]):
            raise KdbenchError(
                f"dataset {name!r}: no images under {root}/{split}/ (extensions {', '.join(IMAGE_EXTENSIONS)})."
            )
    return {"version": INDEX_VERSION, "fingerprint": key, "classes": classes, "splits": splits}


def _class_files(folder: Path) -> list[str]:
    """Image files under ``folder`` (following links), relative to its parent, in ImageFolder's order."""
    files = []
    for dirpath, _, names in sorted(os.walk(folder, followlinks=True)):
        for file in sorted(names):
            if file.lower().endswith(IMAGE_EXTENSIONS):
                files.append(os.path.relpath(os.path.join(dirpath, file), folder.parent))
    return files


def _flatten(per_class: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    files = np.array([f.encode() for names in per_class for f in names], dtype=bytes)
    labels = np.repeat(
        np.arange(len(per_class), dtype=np.int64), [len(names) for names in per_class]
    )
    return files, labels
