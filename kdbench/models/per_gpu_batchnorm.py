"""BatchNorm as the papers' multi-GPU runs computed it, on fewer processes (``TrainSpec.bn_chunk``).

Without SyncBN, DDP (and DataParallel) normalise each GPU's share of the batch with that share's own
statistics, and the model that is evaluated and saved keeps GPU 0's running statistics (DDP
broadcasts rank 0's buffers; DataParallel keeps the first replica's). A process that holds the
shares of ``pieces`` original GPUs reproduces both: in training, each BatchNorm layer normalises
the ``pieces`` contiguous slices of its input separately (the slice bounds of
:func:`kdbench.data.shard.slice_bounds`, so a slice is exactly what that GPU held) and updates its
running statistics from the first slice only. Evaluation is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

_CLASSES: dict[type, type] = {}


class _PerGpuBatchNorm(_BatchNorm):
    """Mixed into a BatchNorm class by :func:`emulate_per_gpu_batchnorm`; ``pieces`` is set per layer."""

    pieces: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.size(0)
        if not self.training or self.pieces == 1 or n < self.pieces:
            return super().forward(x)
        bounds = [n * i // self.pieces for i in range(self.pieces + 1)]
        first = super().forward(x[: bounds[1]])  # GPU 0: its statistics are the ones kept
        others = [
            F.batch_norm(x[a:b], None, None, self.weight, self.bias, True, 0.0, self.eps)
            for a, b in zip(bounds[1:-1], bounds[2:], strict=True)
        ]
        return torch.cat([first, *others])


def _per_gpu_class(cls: type) -> type:
    if cls not in _CLASSES:
        _CLASSES[cls] = type(
            f"PerGpu{cls.__name__}", (_PerGpuBatchNorm, cls), {"__module__": __name__}
        )
    return _CLASSES[cls]


def emulate_per_gpu_batchnorm(module: nn.Module, pieces: int) -> int:
    """Make every BatchNorm layer of ``module`` normalise ``pieces`` slices of its batch apart (in place;
    parameters, buffers and state-dict keys are unchanged). Returns the number of layers changed."""
    if pieces < 1:
        raise ValueError(f"pieces must be >= 1, not {pieces}")
    changed = 0
    for layer in module.modules():
        if isinstance(layer, _BatchNorm) and not isinstance(layer, nn.SyncBatchNorm):
            if not isinstance(layer, _PerGpuBatchNorm):
                layer.__class__ = _per_gpu_class(type(layer))
            assert isinstance(layer, _PerGpuBatchNorm)
            layer.pieces = pieces
            changed += 1
    return changed
