"""The one interface every kdbench model gives to the training loop and the methods.

Tap conventions follow RepDistiller/mdistiller (``docs/references.md`` §Model zoos and feature taps):
``stages`` = [f0, f1, ..., fk] (stem output, then each stage's output), ``preact`` = the same
taps taken before the last ReLU of each stage where the family defines it (otherwise the
post-activation tensors themselves), ``pooled`` = the vector the classifier consumes,
``head_map`` = the last spatial map that is pooled into ``pooled`` (differs from ``stages[-1]``
only for families with a head conv, e.g. MobileNetV2's 1280-channel and ShuffleNetV2's
1024-channel maps; SimKD's paper used these, its released code uses ``stages[-1]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from kdbench.errors import KdbenchError


@dataclass
class Features:
    """Everything a distillation method may read from one forward pass."""

    stages: list[torch.Tensor]
    preact: list[torch.Tensor]
    head_map: torch.Tensor
    pooled: torch.Tensor
    logits: torch.Tensor

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> Features:
        """Features that carry only logits (a cached teacher's): every other field is empty."""
        empty = logits.new_empty(0)
        return cls(stages=[], preact=[], head_map=empty, pooled=empty, logits=logits)


M = TypeVar("M", bound=nn.Module)


def child(container: nn.Module, index: int, kind: type[M]) -> M:
    """``container[index]`` (an ``nn.Sequential`` or ``nn.ModuleList``), checked to be a ``kind``.

    torch types a container's items as plain ``nn.Module``s; the models and methods that built it
    know what each holds, and this is how they say so (e.g. the BN a stage's last block ends in)."""
    assert isinstance(container, nn.Sequential | nn.ModuleList), type(container).__name__
    item = container[index]
    assert isinstance(item, kind), f"{type(item).__name__} is not a {kind.__name__}"
    return item


class KDModel(nn.Module):
    """Base class of every registered network.

    Subclasses implement :meth:`forward_features` and set ``self.classifier`` (the final
    ``nn.Linear``: ``pooled -> logits``). ``forward`` returns logits only, so a model is a
    drop-in classifier for plain training and evaluation.
    """

    classifier: nn.Linear

    def forward_features(self, x: torch.Tensor) -> Features:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).logits

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm layers whose (γ, β) OFD reads for its margins: one per preact tap of the
        deepest taps (f1..fk for the CIFAR families, f2..f4 for mdistiller's ImageNet ResNets), in tap
        order, with that tap's channel count (mdistiller's ``get_bn_before_relu`` of each family;
        ``docs/references.md`` §Model zoos and feature taps). Families without such a list raise."""
        raise KdbenchError(
            f"{type(self).__name__} does not define BN-before-ReLU layers (OFD unsupported)"
        )
