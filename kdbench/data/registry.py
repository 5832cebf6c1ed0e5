"""The datasets by name (``DATASETS``: one :class:`DatasetInfo` each), the data directory, and ``load_dataset``.

Each module of ``data/datasets/`` registers its datasets here with ``DATASETS.add``; ``kdbench.data`` imports them
all. What is known of a dataset without reading it (classes, image side, split sizes, its smoke-profile stand-in,
its content identity) is in its ``DatasetInfo``, which the planner, ``cost`` and ``results/quantities`` read.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kdbench.data.arrays import ImageArrays
from kdbench.data.folder import FolderDataset
from kdbench.errors import KdbenchError
from kdbench.registry import Registry

DEFAULT_DATA_DIR = Path("~/.cache/kdbench/data")
Options = Mapping[str, Any]  # a dataset spec's options, with the reader's defaults filled in
Sizes = tuple[int, int]  # (train, test) image counts


def _unknown(options: Options) -> None:
    return None


@dataclass(frozen=True)
class SmokeData:
    """The dataset a ``smoke``-profile run trains on instead: small, synthetic, read by the same code path.

    ``kept`` names options of the real dataset that carry over (ImageNet's crop ranges)."""

    name: str
    options: Mapping[str, Any]
    kept: tuple[str, ...] = ()

    def for_options(self, options: Options) -> tuple[str, dict[str, Any]]:
        """(name, options) of the stand-in for a dataset spec with ``options``."""
        kept = {key: value for key, value in options.items() if key in self.kept}
        return self.name, {**self.options, **kept}


# The smoke profile: every run of the table on small synthetic data (10 classes, 16×16 images),
# so the whole pipeline runs on a laptop CPU in minutes. Its numbers check the pipeline only.
SMOKE_DATA = {"num_classes": 10, "image_size": 16, "train_size": 128, "test_size": 64, "seed": 0}


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset: its reader and what is known of it without reading it.

    ``load`` reads (or makes) the dataset: its keyword-only parameters (but ``download``) are the dataset's
    options; a first positional parameter gets the data directory, a ``download`` keyword whether a missing
    dataset may be downloaded. The other callables take the spec's options with ``load``'s defaults filled in
    (:meth:`options`); ``None`` means "known only by reading the data".
    """

    name: str
    kind: Literal["arrays", "folder"]  # in-memory ImageArrays, or a FolderDataset of image files
    load: Callable[..., ImageArrays | FolderDataset]
    num_classes: Callable[[Options], int | None] = _unknown
    image_size: Callable[[Options], int | None] = (
        _unknown  # the side of the images the network sees
    )
    sizes: Callable[[Options, Path], Sizes | None] = lambda options, data_dir: None
    smoke: SmokeData = field(default_factory=lambda: SmokeData("synthetic", SMOKE_DATA))
    # The content digest that joins the run id (data/identity.py); None where the name is the content.
    content: Callable[[Options, Path], str | None] | None = None
    ffcv: bool = False  # whether `kdbench data prepare` writes .beton files of it

    def options(self, given: Options) -> dict[str, Any]:
        """``given`` over ``load``'s defaults."""
        return {**_defaults(self.load), **given}


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def dataset_info(name: str) -> DatasetInfo:
    """The registered :class:`DatasetInfo` of ``name`` (an UnknownNameError names the closest one)."""
    return DATASETS.get(name)


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
    load = dataset_info(name).load
    options = _checked_options(name, load, options)
    parameters = inspect.signature(load).parameters
    if "download" in parameters:
        options = {**options, "download": download}
    if any(p.kind is p.POSITIONAL_OR_KEYWORD for p in parameters.values()):
        return load(resolve_data_dir(data_dir), **options)
    return load(**options)


def load_arrays(
    name: str, data_dir: str | Path | None = None, *, download: bool = True, **options: Any
) -> ImageArrays:
    """:func:`load_dataset` for the callers that need in-memory arrays (the pixels themselves)."""
    dataset = load_dataset(name, data_dir, download=download, **options)
    if not isinstance(dataset, ImageArrays):
        raise KdbenchError(
            f"dataset {name!r} is read from image files, not held as arrays: use a dataset of arrays "
            "(e.g. cifar100, an .npz file) here."
        )
    return dataset


def _option_parameters(load: Callable[..., Any]) -> list[inspect.Parameter]:
    return [
        p
        for p in inspect.signature(load).parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.name != "download"
    ]


def _defaults(load: Callable[..., Any]) -> dict[str, Any]:
    return {p.name: p.default for p in _option_parameters(load) if p.default is not p.empty}


def _checked_options(
    name: str, loader: Callable[..., ImageArrays | FolderDataset], options: dict[str, Any]
) -> dict[str, Any]:
    """``options`` if ``loader`` takes them all (as keyword-only arguments) and gets every required one."""
    params = _option_parameters(loader)
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
