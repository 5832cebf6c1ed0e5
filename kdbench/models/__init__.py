"""Model zoos (``docs/references.md`` §Model zoos and feature taps): ``create(name)`` builds any registered network.

Importing this package registers every family module below.
"""

from kdbench.models import (  # noqa: F401  (imported for their registrations)
    cifar_resnet,
    imagenet_mobilenet,
    imagenet_resnet,
    mobilenetv2,
    resnet_bottleneck,
    shufflenetv1,
    shufflenetv2,
    vgg,
    wrn,
)
from kdbench.models.base import Features, KDModel
from kdbench.models.registry import (
    ModelInfo,
    canonical_name,
    create,
    info,
    input_size,
    names,
    register,
)

__all__ = [
    "Features",
    "KDModel",
    "ModelInfo",
    "canonical_name",
    "create",
    "info",
    "input_size",
    "names",
    "register",
]
