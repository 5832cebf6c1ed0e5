"""``kdbench data prepare NAME``: the .beton files the ``ffcv`` loader reads, for either dataset kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdbench.data.folder import FolderDataset
from kdbench.data.loaders.ffcv_arrays import prepare
from kdbench.data.loaders.ffcv_files import beton_dir, import_ffcv
from kdbench.data.loaders.ffcv_folder import prepare_folder
from kdbench.data.registry import DATASETS, load_dataset
from kdbench.errors import KdbenchError, UnknownNameError


def preparable() -> list[str]:
    """The datasets ``kdbench data prepare`` writes .beton files of (``DatasetInfo.ffcv``)."""
    return [name for name in DATASETS.names() if DATASETS.get(name).ffcv]


def prepare_dataset(
    name: str, data_dir: str | Path | None = None, out: Path | None = None, **image_options: Any
) -> Path:
    """``kdbench data prepare NAME``: the .beton files of dataset ``name``, by default in ``beton_dir(name)``.

    ``image_options`` (``max_resolution``, ``compress_probability``, ``jpeg_quality``, ``write_mode``) apply to
    image-folder datasets (``ffcv_folder.prepare_folder``); CIFAR images are stored raw."""
    if name not in preparable():
        raise UnknownNameError("dataset", name, preparable())
    import_ffcv()  # fail before reading the dataset
    dataset = load_dataset(name, data_dir)
    folder = out if out is not None else beton_dir(name, data_dir)
    if isinstance(dataset, FolderDataset):
        return prepare_folder(dataset, folder, **image_options)
    if image_options:
        raise KdbenchError(
            f"{', '.join(sorted(image_options))}: options of image-folder datasets (imagenet); "
            f"{name} images are stored raw at their size."
        )
    return prepare(dataset, folder)
