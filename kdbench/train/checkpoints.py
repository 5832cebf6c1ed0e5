"""Importing a teacher from a checkpoint file instead of training it.

The file is found under the data directory (downloaded first from the authors' location when the recipe
names a release, ``kdbench/models/pretrained.py``), verified by its sha256 before anything reads it, loaded
with ``weights_only=True`` (a file that would execute code is refused; the only classes allowed besides
tensors and containers are ``argparse.Namespace`` and numpy's scalar/dtype, see :data:`SAFE_GLOBALS`),
unwrapped whatever the authors' script wrote around the weights, converted to kdbench's parameter names,
loaded into the named architecture strictly (a mismatch is an error, never a partial load), and evaluated.

The recipe may give a prefix of the digest (at least 8 hex digits, as torch.hub's file names and
``check_hash`` do); the full digest computed here is what the run records. Where no digest is published
(the authors' releases), the first file seen is trusted and its digest recorded in
``DATA_DIR/teachers/sha256-first-use.json``; every later use must match it.
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import TypeGuard

import numpy as np
import torch

from kdbench import data, models
from kdbench.errors import KdbenchError
from kdbench.io import atomic_path, atomic_write_json, file_lock, read_json, sha256_file
from kdbench.models import pretrained
from kdbench.models.base import KDModel
from kdbench.models.pretrained import DOWNLOAD_ROOT
from kdbench.plan import CheckpointRef, Plan, RunSpec, teacher_file
from kdbench.recipe import Checkpoint

DOWNLOAD_TIMEOUT_S = 60.0  # per connection attempt and per read: an offline machine fails fast
FIRST_USE_FILE = Path("teachers") / "sha256-first-use.json"  # under the data directory
ARCHIVES_DIR = (
    Path("teachers") / "archives"
)  # downloaded tar archives, kept to extract their other members

_NUMPY_SCALAR = np.float64(0).__reduce__()[
    0
]  # numpy's scalar constructor (numpy._core.multiarray.scalar)
# What the authors' scripts put next to the weights, besides tensors and containers: RepDistiller's
# train_teacher.py saves its argparse options under 'opt' ({model}_last.pth); metrics saved with the weights
# (best_acc, accuracy) may be numpy scalars, pickled under numpy 1's module name or numpy 2's. Each builds plain
# data; nothing else is allowed.
SAFE_GLOBALS: list = [
    argparse.Namespace,
    np.dtype,
    _NUMPY_SCALAR,
    (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"),
    *{type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32")},
]
# Where the authors' scripts keep the weights inside their dict: RepDistiller/SimKD/mdistiller "model",
# DIST's image_classification_sota and most others "state_dict".
STATE_KEYS = ("model", "state_dict", "model_state_dict", "net")


# --------------------------------------------------------------------------- finding and fetching the file


def resolve(ref: CheckpointRef, data_dir: str | Path | None) -> Path:
    """Where the file of ``ref`` is (or belongs): relative paths start at the data directory."""
    path = Path(ref.path)
    return path if path.is_absolute() else data.resolve_data_dir(data_dir) / path


def locate(ref: CheckpointRef, data_dir: str | Path | None) -> Path:
    """The file of ``ref``; an error that says where to put it (and where to get it) when it is missing."""
    path = resolve(ref, data_dir)
    if not path.is_file():
        raise KdbenchError(
            f"teacher checkpoint {path} not found: {_put_it_there(ref, path, data_dir)}"
        )
    return path


def _put_it_there(ref: CheckpointRef, path: Path, data_dir: str | Path | None) -> str:
    digest = f"sha256 {ref.sha256}" if ref.sha256 else "its sha256 is recorded on first use"
    advice = (
        f"put the file ({digest}) there, or fix the recipe's teachers.<key>.checkpoint.path (relative paths "
        "start at --data-dir / $KDBENCH_DATA)."
    )
    if ref.released is not None:
        entry = pretrained.released(ref.released)
        archives = [d for d in entry.downloads if d.member is not None]
        unpack = "".join(
            f" A downloaded {_archive(d, data_dir).name} can be put at {_archive(d, data_dir)} instead: "
            "kdbench copies the file out of it."
            for d in archives[:1]
        )
        return (
            f"put the file there ({digest}); it is one of {entry.source}: {entry.where()}.{unpack}"
        )
    known = pretrained.for_file(path.name)
    return advice + (
        f" Download it from {DOWNLOAD_ROOT}{path.name} ({known.describe()})." if known else ""
    )


def prepare(
    specs: Iterable[RunSpec],
    data_dir: str | Path | None,
    *,
    download: bool = True,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> list[Path]:
    """Make every imported teacher file of ``specs`` present before any run starts: download the missing ones
    that have a download link (an authors' release, a torchvision file), verify each (or record its digest on first use), and raise one error
    listing every file still missing, with where to put it and where to get it. Returns the files."""
    found, missing = [], []
    for ref in dict.fromkeys(s.checkpoint for s in specs if s.checkpoint is not None):
        path = resolve(ref, data_dir)
        links = downloads_of(ref, path)
        if not path.is_file() and download and links:
            try:
                fetch(links, path, data.resolve_data_dir(data_dir), timeout)
            except KdbenchError as exc:
                missing.append(f"{path}: {exc} Otherwise {_put_it_there(ref, path, data_dir)}")
                continue
        if not path.is_file():
            missing.append(f"{path}: {_put_it_there(ref, path, data_dir)}")
            continue
        verify(ref, path, data_dir)
        found.append(path)
    if missing:
        raise KdbenchError(
            f"{len(missing)} teacher checkpoint(s) missing, so no run was started:\n  - "
            + "\n  - ".join(missing)
            + "\nOr train the teachers instead: add --teachers trained."
        )
    return found


def downloads_of(ref: CheckpointRef, path: Path) -> tuple[pretrained.Download, ...]:
    """Where the file of ``ref`` can be downloaded from: its release's links, or torch.hub's for a torchvision file."""
    if ref.released is not None:
        return pretrained.released(ref.released).downloads
    known = pretrained.for_file(path.name) if ref.format == "torchvision" else None
    return (pretrained.Download(DOWNLOAD_ROOT + path.name),) if known else ()


def fetch(
    downloads: Iterable[pretrained.Download],
    dest: Path,
    data_dir: Path,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> str:
    """Download the file to ``dest`` (atomically) from the first of ``downloads`` that works; returns its URL.

    A download from an archive keeps the archive under ``DATA_DIR/teachers/archives/`` and copies out the one
    member (nothing else of the archive is extracted, and only a regular file)."""
    failures = []
    for where in downloads:
        try:
            if where.member is None:
                _download(where.url, dest, timeout)
            else:
                archive = _archive(where, data_dir)
                if not archive.is_file():
                    _download(where.url, archive, timeout)
                _extract(archive, where.member, dest)
            return where.describe()
        except (OSError, tarfile.TarError, KdbenchError) as exc:  # urllib's errors are OSErrors
            failures.append(f"{where.describe()}: {type(exc).__name__}: {exc}")
    raise KdbenchError("the download failed (" + "; ".join(failures) + ").")


def _archive(where: pretrained.Download, data_dir: str | Path | None) -> Path:
    """Where a downloaded archive is kept (and where one fetched by hand may be put)."""
    return data.resolve_data_dir(data_dir) / ARCHIVES_DIR / where.url.rstrip("/").rsplit("/", 1)[-1]


def _download(url: str, dest: Path, timeout: float) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with (
        urllib.request.urlopen(url, timeout=timeout) as response,
        atomic_path(dest) as tmp,
        open(tmp, "wb") as out,
    ):
        shutil.copyfileobj(response, out, 1 << 20)


def _extract(archive: Path, member: str, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        try:
            info = tar.getmember(member)
        except KeyError:
            raise KdbenchError(f"{archive} has no member {member}") from None
        source = tar.extractfile(info) if info.isfile() else None
        if source is None:
            raise KdbenchError(f"{archive}: {member} is not a regular file")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with source, atomic_path(dest) as tmp, open(tmp, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)


# --------------------------------------------------------------------------- verifying it


sha256_of = sha256_file  # a checkpoint file's digest, as the recipe records it


def verify(ref: CheckpointRef, path: Path, data_dir: str | Path | None = None) -> str:
    """The file's full sha256, after checking that it is (or starts with) the recipe's digest; without one, that it
    equals the digest recorded the first time this file was used (recording it then)."""
    actual = sha256_of(path)
    if ref.sha256 is None:
        return _trust_on_first_use(ref, path, actual, data_dir)
    if len(ref.sha256) < 8 or not actual.startswith(ref.sha256):
        kind = "" if len(ref.sha256) == 64 else " (a prefix)"
        raise KdbenchError(
            f"{path}: sha256 {actual} does not match the recipe's {ref.sha256}{kind}. The file is not the "
            "checkpoint the recipe names (another version, or a corrupted download): fetch it again."
        )
    return actual


def first_use_file(data_dir: str | Path | None) -> Path:
    """The record of the digests first seen for files without a published one."""
    return data.resolve_data_dir(data_dir) / FIRST_USE_FILE


def _trust_on_first_use(
    ref: CheckpointRef, path: Path, actual: str, data_dir: str | Path | None
) -> str:
    record_file = first_use_file(data_dir)
    record_file.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(record_file.with_suffix(".lock")):
        record = read_json(record_file) if record_file.is_file() else {}
        seen = record.get(ref.path)
        if seen is None:
            record[ref.path] = {
                "sha256": actual,
                "first_seen": time.time(),
                "released": ref.released,
            }
            atomic_write_json(record_file, record)
        elif seen["sha256"] != actual:
            raise KdbenchError(
                f"{path}: sha256 {actual} differs from {seen['sha256']}, recorded in {record_file} when "
                "the file was first used: it is another file (or a corrupted copy). Put the original back, "
                f"or, if the new file is the one you want, delete its entry {ref.path!r} from {record_file}."
            )
    return actual


# --------------------------------------------------------------------------- loading it


def describe_checkpoint(model: str, checkpoint: Checkpoint) -> str:
    """One line for ``kdbench show``: the file, its digest, and for torchvision weights where to get them and
    the published top-1 its evaluation should reproduce."""
    digest = f"sha256 {checkpoint.sha256}" if checkpoint.sha256 else "sha256 recorded on first use"
    line = f"{checkpoint.path} ({checkpoint.format}, {digest})"
    if checkpoint.source:
        line += f" from {checkpoint.source}"
    known = pretrained.for_file(Path(checkpoint.path).name) or pretrained.for_model(
        models.canonical_name(model)
    )
    return f"{line}; {known.describe()}" if known and checkpoint.format == "torchvision" else line


def describe_teachers(table_plan: Plan, data_dir: str | Path | None) -> list[str]:
    """One line per teacher for ``kdbench show``: imported (which file, whether it is there, where to get it)
    or trained (which epoch its students read)."""
    recipe, lines = table_plan.recipe, []
    for key, teacher in recipe.teachers.items():
        file = teacher_file(recipe, key, recipe.teacher_source)
        if file is None or table_plan.profile == "smoke":
            why = " (smoke data has other classes)" if file is not None else ""
            offer = (
                " A released file exists: --teachers released imports it."
                if recipe.teacher_source == "trained"
                and teacher_file(recipe, key, "released") is not None
                else ""
            )
            lines.append(
                f"Teacher {key} is trained{why}; its students read its {teacher.keep} epoch.{offer}"
            )
            continue
        ref = CheckpointRef(
            path=file.path, sha256=file.sha256, format=file.format, released=teacher.released
        )
        path = resolve(ref, data_dir)
        there = "present" if path.is_file() else f"missing: {_put_it_there(ref, path, data_dir)}"
        lines.append(
            f"Teacher {key} is imported: {describe_checkpoint(teacher.model, file)}; {path} {there}"
        )
    return lines


def safe_load(path: Path) -> object:
    """``torch.load(weights_only=True)`` with only :data:`SAFE_GLOBALS` allowed; a refusal names the global."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise KdbenchError(
            f"{path} cannot be loaded safely: torch.load(weights_only=True) refused it ({type(exc).__name__}: "
            f"{_refusal(exc)}). kdbench never runs code from a checkpoint; save a plain state dict."
        ) from None


def _refusal(exc: Exception) -> str:
    """torch's reason, without its advice to load the file unsafely: the line naming the refused global if any."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [
        line.split(". Please use", 1)[0]
        for line in lines
        if "Unsupported" in line or "WeightsUnpickler error" in line
    ]
    return " ".join(named or lines) or "no detail"


def load_into(
    model: KDModel,
    ref: CheckpointRef,
    path: Path,
    model_name: str,
    data_dir: str | Path | None = None,
) -> tuple[KDModel, str]:
    """Verify, safely load and convert the file at ``path`` into ``model`` (strict); returns the model and
    the file's full sha256."""
    actual = verify(ref, path, data_dir)
    state = _convert(state_dict_of(safe_load(path), path), ref.format, model, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        details = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise KdbenchError(
            f"{path} does not fit the architecture {model_name!r}: {details}"
        ) from None
    return model, actual


def state_dict_of(raw: object, path: Path) -> dict[str, torch.Tensor]:
    """The network's weights inside what an authors' script saved: a bare state dict, or one under
    :data:`STATE_KEYS`; DataParallel's ``module.`` prefix removed; of a distiller holding a student and a
    teacher (mdistiller's best/latest/epoch_N: ``module.student.*``, ``module.teacher.*``, engine/trainer.py;
    a kdbench model.pt: ``student.*``), the student."""
    state = raw if _is_state(raw) else None
    if state is None and isinstance(raw, dict):
        state = next((v for k in STATE_KEYS if _is_state(v := raw.get(k))), None)
    if state is None:
        what = (
            ", ".join(f"{k!r} ({type(v).__name__})" for k, v in raw.items())
            if isinstance(raw, dict)
            else type(raw).__name__
        )
        raise KdbenchError(
            f"{path} holds no state dict (a dict of tensors, bare or under one of "
            f"{', '.join(STATE_KEYS)}): it holds {what or 'an empty dict'}."
        )
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("student.") for k in state):
        state = {
            k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")
        }
    return state


def _is_state(value: object) -> TypeGuard[dict[str, torch.Tensor]]:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _convert(
    theirs: dict[str, torch.Tensor], fmt: str, model: KDModel, path: Path
) -> dict[str, torch.Tensor]:
    if fmt == "kdbench":
        return theirs
    if fmt == "torchvision":
        # torch.hub files are plain state dicts under torchvision's names, which the imagenet zoo keeps
        # (MobileNetV2 renames its classifier: kdbench/models/imagenet_mobilenet.py).
        rename = getattr(model, "from_torchvision_state", None)
        return rename(theirs) if rename is not None else theirs
    # repdistiller: the RepDistiller zoo's names, matched to ours in registration order.
    ours = model.state_dict()
    if len(theirs) != len(ours) and not any(k.endswith("num_batches_tracked") for k in theirs):
        # Files saved before torch 0.4.1 have no BatchNorm step counters; they do not change the outputs.
        ours = {k: v for k, v in ours.items() if not k.endswith("num_batches_tracked")}
    if len(theirs) != len(ours):
        raise KdbenchError(
            f"{path} has {len(theirs)} tensors, the architecture {len(ours)}: it is another network."
        )
    mapped = {}
    for (our_key, our_value), (their_key, their_value) in zip(ours.items(), theirs.items()):
        if tuple(our_value.shape) != tuple(their_value.shape):
            raise KdbenchError(
                f"{path}: tensor {their_key!r} {tuple(their_value.shape)} does not fit {our_key!r} "
                f"{tuple(our_value.shape)} (tensors are matched in registration order)."
            )
        mapped[our_key] = their_value
    missing_counters = {
        k: v
        for k, v in model.state_dict().items()
        if k not in mapped and k.endswith("num_batches_tracked")
    }
    return {**missing_counters, **mapped}
