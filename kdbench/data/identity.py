"""A dataset's identity by content, for the run id: the same name and path with other data is other data.

* ``npz``: the sha256 of the file's bytes.
* ``imagenet`` (an image folder): the sha256 of its manifest, every ``train/`` and ``val/`` file's
  relative path and size in sorted order. Hashing every byte of 150 GB at each ``reproduce`` would
  take longer than a teacher run; a folder with other images, fewer images or other classes changes
  the manifest.
* ``cifar10``/``cifar100``: none. Their files are the official ones, md5-checked on every load, so
  the name is the content. ``synthetic``/``imagenet_synthetic``: none; the options generate the data.

Digests are cached by path, size and modification time (a folder by its class folders' times) in
``~/.cache/kdbench/digests.json`` (``$XDG_CACHE_HOME`` is honoured), so a table of 100 runs hashes its
file once. The cache is a hint: a lost or damaged cache only costs a re-hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdbench.data.registry import dataset_info, resolve_data_dir
from kdbench.errors import KdbenchError
from kdbench.io import atomic_write_json

_CHUNK = 1 << 20


def content_digest(name: str, options: dict[str, Any], data_dir: Path) -> str | None:
    """The dataset's content digest (hex sha256), or None for datasets whose name is their content."""
    info = dataset_info(name)
    return None if info.content is None else info.content(info.options(options), data_dir)


def file_sha256(file: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def manifest_sha256(root: Path, splits: list[Path]) -> str:
    """Hex sha256 of every file's path (relative to ``root``) and size under the ``splits`` folders."""
    digest = hashlib.sha256()
    for split in splits:
        for path in sorted(p for p in split.rglob("*") if p.is_file()):
            digest.update(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def _cache_file() -> Path:
    return (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        / "kdbench"
        / "digests.json"
    )


def cached_digest(key: str, stamp: str, compute: Callable[[], str]) -> str:
    """``compute()``, remembered under ``key`` while ``stamp`` (size and times) is unchanged."""
    cache_file = _cache_file()
    try:
        cache = json.loads(cache_file.read_text())
        cache = cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key)
    if (
        isinstance(entry, dict)
        and entry.get("stamp") == stamp
        and isinstance(entry.get("sha256"), str)
    ):
        return entry["sha256"]
    value = compute()
    cache[key] = {"stamp": stamp, "sha256": value}
    with contextlib.suppress(OSError):  # a read-only home: hash again next time
        atomic_write_json(cache_file, cache)
    return value


def verify_content(
    name: str, options: dict[str, Any], data_dir: str | Path | None, expected: str
) -> None:
    """Refuse to train a run on data other than the data it was planned with."""
    root = resolve_data_dir(data_dir)
    actual = content_digest(name, options, root)
    if actual != expected:
        raise KdbenchError(
            f"the {name} data under {root} has changed since this run was planned (content "
            f"{(actual or 'none')[:12]}…, planned {expected[:12]}…): run `kdbench reproduce` again, which "
            "plans new runs for the new data and keeps the finished ones of the old."
        )
