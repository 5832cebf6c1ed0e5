"""Importing a teacher from a checkpoint file instead of training it.

The file is verified by its sha256 before anything reads it, loaded with ``weights_only=True``
(a file that would execute code is refused), converted to kdbench's parameter names, loaded into
the named architecture strictly (a mismatch is an error, never a partial load), and evaluated.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from kdbench import data
from kdbench.errors import KdbenchError
from kdbench.models.base import KDModel
from kdbench.plan import CheckpointRef


def locate(ref: CheckpointRef, data_dir: str | Path | None) -> Path:
    path = Path(ref.path)
    path = path if path.is_absolute() else data.resolve_data_dir(data_dir) / path
    if not path.is_file():
        raise KdbenchError(f"teacher checkpoint {path} not found: put the file (sha256 {ref.sha256}) there, or fix "
                           "the recipe's teachers.<key>.checkpoint.path (relative paths start at --data-dir / $KDBENCH_DATA).")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_into(model: KDModel, ref: CheckpointRef, path: Path, model_name: str) -> KDModel:
    """Verify, safely load and convert the file at ``path`` into ``model`` (strict)."""
    actual = sha256_of(path)
    if actual != ref.sha256:
        raise KdbenchError(f"{path}: sha256 {actual} does not match the recipe's {ref.sha256}. The file is not the "
                           "checkpoint the recipe names (another version, or a corrupted download): fetch it again.")
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
    return model


def _convert(raw: object, fmt: str, model: KDModel, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(raw, dict):
        raise KdbenchError(f"{path} holds a {type(raw).__name__}, not a state dict.")
    if fmt == "kdbench":
        # A kdbench model.pt stores the network under "student." (the distiller's name for it).
        return {k.removeprefix("student."): v for k, v in raw.items() if not k.startswith(("teacher.",))}
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
