"""Dataset names, the data directory, and ``load_dataset``."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from kdbench.data.arrays import ImageArrays
from kdbench.data.datasets.cifar import load_cifar
from kdbench.data.datasets.imagenet import load_imagenet, load_imagenet_synthetic
from kdbench.data.datasets.npz import load_npz
from kdbench.data.datasets.synthetic import make_synthetic
from kdbench.data.folder import FolderDataset
from kdbench.errors import KdbenchError, UnknownNameError

DATASETS: tuple[str, ...] = (
    "cifar100",
    "cifar10",
    "imagenet",
    "imagenet_synthetic",
    "npz",
    "synthetic",
)
FOLDER_DATASETS: dict[str, Callable[..., FolderDataset]] = {
    "imagenet": load_imagenet,
    "imagenet_synthetic": load_imagenet_synthetic,
}
DEFAULT_DATA_DIR = Path("~/.cache/kdbench/data")


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The data directory: the explicit argument, else ``$KDBENCH_DATA``, else ``~/.cache/kdbench/data``."""
    chosen = (
        data_dir
        if data_dir not in (None, "")
        else os.environ.get("KDBENCH_DATA") or DEFAULT_DATA_DIR
    )
    return Path(chosen).expanduser().absolute()


def load_dataset(
    name: str, data_dir: str | Path | None = None, *, download: bool = True, **options: Any
) -> ImageArrays | FolderDataset:
    """Load dataset ``name`` (one of ``DATASETS``) with its dataset-specific ``options``: in-memory arrays, or
    image files for the ImageNet-layout datasets."""
    if name not in DATASETS:
        raise UnknownNameError("dataset", name, DATASETS)
    if name == "synthetic":
        return make_synthetic(**_checked_options(name, make_synthetic, options))
    root = resolve_data_dir(data_dir)
    if name in FOLDER_DATASETS:
        return FOLDER_DATASETS[name](root, **_checked_options(name, FOLDER_DATASETS[name], options))
    if name == "npz":
        return load_npz(root, **_checked_options(name, load_npz, options))
    return load_cifar(
        name, root, download=download, **_checked_options(name, partial(load_cifar, name), options)
    )


def _checked_options(
    name: str, loader: Callable[..., ImageArrays | FolderDataset], options: dict[str, Any]
) -> dict[str, Any]:
    """``options`` if ``loader`` takes them all (as keyword-only arguments) and gets every required one."""
    params = [
        p
        for p in inspect.signature(loader).parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.name != "download"
    ]
    allowed = ", ".join(p.name for p in params) or "none"
    unknown = sorted(set(options) - {p.name for p in params})
    if unknown:
        raise KdbenchError(
            f"dataset {name!r} does not take option(s) {', '.join(unknown)}; its options: {allowed}"
        )
    required = [p.name for p in params if p.default is p.empty and p.name not in options]
    if required:
        raise KdbenchError(
            f"dataset {name!r} needs option(s) {', '.join(required)}; its options: {allowed}"
        )
    return options


def prepare_datasets(
    datasets: Iterable[tuple[str, dict[str, Any]]], data_dir: str | Path | None
) -> int:
    """Make every dataset ready before any run starts: each distinct (name, options) loaded once, here, so a
    missing one is downloaded once under a lock, or fails once with the message that says where to put it,
    instead of once per run. Returns how many datasets were prepared."""
    seen: list[tuple[str, dict[str, Any]]] = []
    for name, options in datasets:
        if (name, options) not in seen:
            seen.append((name, options))
            load_dataset(name, data_dir, **options)
    return len(seen)
