"""Image datasets stored as one ``.npz`` file with ``x_train, y_train, x_test, y_test``."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kdbench.data import identity
from kdbench.data.arrays import ImageArrays
from kdbench.data.registry import DATASETS, DatasetInfo, Options
from kdbench.errors import KdbenchError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(
    data_dir: Path,
    *,
    path: str | Path,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImageArrays:
    """Load ``path`` (absolute, or relative to ``data_dir``).

    ``num_classes`` defaults to the largest label + 1; ``mean``/``std`` default to the train pixels' statistics.
    """
    file = _file(path, data_dir)
    if not file.is_file():
        raise KdbenchError(
            f"npz dataset file {file} does not exist. Give path= as an absolute path or relative to the data "
            f"directory {data_dir} (choose it with --data-dir DIR or KDBENCH_DATA=DIR)."
        )
    needs = "It needs uint8 x_train/x_test (N,H,W,3) and integer y_train/y_test (N,), as numpy.savez writes them."
    try:
        archive = np.load(file, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):  # a single .npy array
            raise ValueError(f"it holds one {type(archive).__name__}, not named arrays")
        with archive:
            missing = [key for key in NPZ_KEYS if key not in archive.files]
            if missing:
                raise KdbenchError(
                    f"npz dataset file {file} lacks {', '.join(missing)}; "
                    f"it has {', '.join(archive.files) or 'no arrays'}. {needs}"
                )
            x_train, y_train, x_test, y_test = (archive[key] for key in NPZ_KEYS)
    except (
        ValueError,
        OSError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
    ) as exc:  # not an npz, or a damaged one
        raise KdbenchError(
            f"npz dataset file {file} is not a readable .npz archive ({exc}). {needs}"
        ) from None
    for key, y in (("y_train", y_train), ("y_test", y_test)):
        if not np.issubdtype(y.dtype, np.integer):
            raise KdbenchError(
                f"npz dataset file {file}: {key} must hold integer labels, got {y.dtype}"
            )
    if num_classes is None:
        num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    if mean is None or std is None:
        computed_mean, computed_std = pixel_mean_std(x_train)
        mean, std = computed_mean if mean is None else mean, computed_std if std is None else std
    return ImageArrays(
        name=f"npz:{file.stem}",
        x_train=x_train,
        y_train=y_train.astype(np.int64),
        x_test=x_test,
        y_test=y_test.astype(np.int64),
        num_classes=num_classes,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
    )


def pixel_mean_std(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std of uint8 (N,H,W,C) images scaled to [0, 1]."""
    if images.dtype != np.uint8 or images.ndim != 4 or not images.size:
        raise KdbenchError(
            f"pixel statistics need non-empty uint8 (N,H,W,C) images, got {images.dtype} {images.shape}"
        )
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for channel in range(images.shape[-1]):
        counts = (
            np.bincount(images[..., channel].ravel(), minlength=256) / images[..., channel].size
        )
        mean = float(counts @ values)
        means.append(mean)
        stds.append(float(np.sqrt(counts @ (values - mean) ** 2)))
    return tuple(means), tuple(stds)


def _file(path: str | Path, data_dir: Path) -> Path:
    """``path`` as the dataset option gives it: absolute, or relative to ``data_dir``."""
    file = Path(path).expanduser()
    return file if file.is_absolute() else data_dir / file


def npz_sizes(options: Options, data_dir: Path) -> tuple[int, int] | None:
    """(train, test) label counts read from the file's array headers; None when the file is missing."""
    file = _file(options["path"], data_dir)
    if not file.is_file():
        return None
    with np.load(file, mmap_mode="r") as arrays:
        return len(arrays["y_train"]), len(arrays["y_test"])


def npz_content(options: Options, data_dir: Path) -> str:
    """The sha256 of the file's bytes (cached by path, size and modification time)."""
    file = _file(options.get("path", ""), data_dir)
    if not file.is_file():
        raise KdbenchError(
            f"npz dataset file {file} does not exist, so its content cannot be identified. Give path= as "
            f"an absolute path or relative to the data directory {data_dir} (--data-dir / KDBENCH_DATA)."
        )
    stat = file.stat()
    return identity.cached_digest(
        f"file:{file.resolve()}",
        f"{stat.st_size}:{stat.st_mtime_ns}",
        lambda: identity.file_sha256(file),
    )


DATASETS.add(
    "npz",
    DatasetInfo(
        name="npz",
        kind="arrays",
        load=load_npz,
        num_classes=lambda options: options[
            "num_classes"
        ],  # None: the largest label + 1, once read
        sizes=npz_sizes,
        content=npz_content,
    ),
)
