"""Import torchvision on any torch build (the only way kdbench imports it).

The PyPI torchvision 0.28.0 wheel is a CUDA build. With the CPU torch its compiled ops do not load,
and ``import torchvision`` then stops at the fake-kernel registration of ``torchvision::nms``
(pytorch/vision#9085). Defining the two unguarded op schemas ourselves lets the pure-Python parts
(datasets, transforms, models) import; where torchvision imports normally nothing is changed.
"""

from __future__ import annotations

import sys
import threading
from types import ModuleType

import torch

_UNGUARDED_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_lock = threading.Lock()
_library: torch.library.Library | None = None  # must stay referenced, or the schemas are dropped


def import_torchvision() -> ModuleType:
    """Return the ``torchvision`` module, defining the missing op schemas first if the build needs them."""
    global _library
    with _lock:
        try:
            import torchvision
        except RuntimeError as error:
            if "torchvision::nms" not in str(error):
                raise
        else:
            return torchvision
        for module in [
            m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")
        ]:
            del sys.modules[module]  # drop the half-imported package before retrying
        _library = torch.library.Library("torchvision", "DEF")
        for schema in _UNGUARDED_OPS:
            _library.define(schema)
        import torchvision

        return torchvision
