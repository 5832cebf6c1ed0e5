"""Importing a teacher from a checkpoint file instead of training it.

The file is verified by its sha256 before anything reads it, loaded with ``weights_only=True``
(a file that would execute code is refused), converted to kdbench's parameter names, loaded into
the named architecture strictly (a mismatch is an error, never a partial load), and evaluated.
The recipe may give a prefix of the digest (at least 8 hex digits, as torch.hub's file names and
``check_hash`` do); the full digest computed here is what the run records.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdbench import data, models
from kdbench.errors import KdbenchError
from kdbench.models import pretrained
from kdbench.models.base import KDModel
from kdbench.models.pretrained import DOWNLOAD_ROOT
from kdbench.plan import CheckpointRef
from kdbench.recipe import Checkpoint
from kdbench.results.store import sha256_file


def locate(ref: CheckpointRef, data_dir: str | Path | None) -> Path:
    path = Path(ref.path)
    path = path if path.is_absolute() else data.resolve_data_dir(data_dir) / path
    if not path.is_file():
        known = pretrained.for_file(path.name)
        where = f" Download it from {DOWNLOAD_ROOT}{path.name} ({known.describe()})." if known else ""
        raise KdbenchError(f"teacher checkpoint {path} not found: put the file (sha256 {ref.sha256}) there, or fix "
                           "the recipe's teachers.<key>.checkpoint.path (relative paths start at --data-dir / $KDBENCH_DATA)."
                           + where)
    return path


def describe_checkpoint(model: str, checkpoint: Checkpoint) -> str:
    """One line for ``kdbench show``: the file, its digest, and for torchvision weights where to get them and
    the published top-1 its evaluation should reproduce."""
    line = f"{checkpoint.path} ({checkpoint.format}, sha256 {checkpoint.sha256})"
    if checkpoint.source:
        line += f" from {checkpoint.source}"
    known = pretrained.for_file(Path(checkpoint.path).name) or pretrained.for_model(models.canonical_name(model))
    return f"{line}; {known.describe()}" if known and checkpoint.format == "torchvision" else line


sha256_of = sha256_file  # a checkpoint file's digest, as the recipe records it


def verify(ref: CheckpointRef, path: Path) -> str:
    """The file's full sha256, after checking that it is (or starts with) the recipe's digest."""
    actual = sha256_of(path)
    if len(ref.sha256) < 8 or not actual.startswith(ref.sha256):
        kind = "" if len(ref.sha256) == 64 else " (a prefix)"
        raise KdbenchError(f"{path}: sha256 {actual} does not match the recipe's {ref.sha256}{kind}. The file is not the "
                           "checkpoint the recipe names (another version, or a corrupted download): fetch it again.")
    return actual


def load_into(model: KDModel, ref: CheckpointRef, path: Path, model_name: str) -> tuple[KDModel, str]:
    """Verify, safely load and convert the file at ``path`` into ``model`` (strict); returns the model and
    the file's full sha256."""
    actual = verify(ref, path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise KdbenchError(f"{path} cannot be loaded safely: torch.load(weights_only=True) refused it ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0]}). kdbench never runs code from a checkpoint; save a plain state dict.") from None
    state = _convert(raw, ref.format, model, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise KdbenchError(f"{path} does not fit the architecture {model_name!r}: {str(exc).splitlines()[0]}") from None
    return model, actual


def _convert(raw: object, fmt: str, model: KDModel, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(raw, dict):
        raise KdbenchError(f"{path} holds a {type(raw).__name__}, not a state dict.")
    if fmt == "kdbench":
        # A kdbench model.pt stores the network under "student." (the distiller's name for it).
        return {k.removeprefix("student."): v for k, v in raw.items() if not k.startswith(("teacher.",))}
    if fmt == "torchvision":
        # torch.hub files are plain state dicts under torchvision's names, which the imagenet zoo keeps
        # (MobileNetV2 renames its classifier: kdbench/models/imagenet_mobilenet.py).
        rename = getattr(model, "from_torchvision_state", None)
        return rename(raw) if rename is not None else raw
    theirs = raw.get("model", raw)  # RepDistiller: {"model": state_dict, "epoch": …, "accuracy": …}
    ours = model.state_dict()
    if len(theirs) != len(ours):
        raise KdbenchError(f"{path} has {len(theirs)} tensors, the architecture {len(ours)}: it is another network.")
    mapped = {}
    for (our_key, our_value), (their_key, their_value) in zip(ours.items(), theirs.items()):
        if tuple(our_value.shape) != tuple(their_value.shape):
            raise KdbenchError(f"{path}: tensor {their_key!r} {tuple(their_value.shape)} does not fit {our_key!r} "
                               f"{tuple(our_value.shape)} (tensors are matched in registration order).")
        mapped[our_key] = their_value
    return mapped
