"""Model names -> factories, with the zoo each network comes from and how papers print it.

Four zoos (``docs/references.md`` §Model zoos and feature taps): ``crd`` = RepDistiller's CIFAR networks (also
used by mdistiller and most later papers) under their RepDistiller names; ``simkd`` = networks that
only SimKD defines, under ``simkd/<SimKD name>``; ``imagenet`` = the ImageNet networks of the KD
papers' ImageNet tables, under ``imagenet/<name>``; ``mdistiller`` = CRD networks whose forward in
mdistiller's released code computes something else (``mdistiller/<name>``, e.g. its WRNs' BN updates). A SimKD network identical to a CRD one is an
*alias* ``simkd/<name>`` of the CRD name, so a run's identity never depends on the spelling a recipe
used. Each entry records its native input side (``input_size``: 32 for CIFAR, 224 for ImageNet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from kdbench.errors import UnknownNameError
from kdbench.models.base import KDModel

# "plugin": a network of a lab's own package (kdbench/plugins.py), from none of the four zoos.
ZOOS = ("crd", "simkd", "imagenet", "mdistiller", "plugin")
CIFAR_INPUT_SIZE = 32


class ModelFactory(Protocol):
    """Anything that builds a registered network for a number of classes."""

    def __call__(self, *, num_classes: int) -> KDModel: ...


FactoryT = TypeVar("FactoryT", bound=ModelFactory)


@dataclass(frozen=True)
class ModelInfo:
    """Catalogue entry of one canonical model name."""

    name: str
    zoo: str
    family: str
    paper_label: str
    aliases: tuple[str, ...] = ()
    input_size: int = CIFAR_INPUT_SIZE  # side of the square images the network is defined for


_INFO: dict[str, ModelInfo] = {}
_FACTORIES: dict[str, ModelFactory] = {}
_ALIASES: dict[str, str] = {}


def register(
    name: str,
    *,
    zoo: str,
    family: str,
    paper_label: str,
    aliases: tuple[str, ...] = (),
    input_size: int = CIFAR_INPUT_SIZE,
) -> Callable[[FactoryT], FactoryT]:
    """Decorator registering ``factory(num_classes=...)`` under ``name`` and its ``aliases``."""
    if zoo not in ZOOS:
        raise ValueError(f"zoo must be one of {ZOOS}, got {zoo!r}")

    def decorator(factory: FactoryT) -> FactoryT:
        for key in (name, *aliases):
            if key in _INFO or key in _ALIASES:
                raise ValueError(f"model name {key!r} is registered twice")
        _INFO[name] = ModelInfo(name, zoo, family, paper_label, tuple(aliases), input_size)
        _FACTORIES[name] = factory
        _ALIASES.update(dict.fromkeys(aliases, name))
        return factory

    return decorator


def _load_plugins() -> None:
    """The built-in networks, then the installed plugins' (kdbench/plugins.py), registered once."""
    import kdbench.models  # noqa: F401  (the built-ins register first, so a plugin cannot take their names)
    from kdbench import plugins

    plugins.load(plugins.MODELS)


def names() -> list[str]:
    """Sorted canonical model names (aliases excluded), built-in and plugins'."""
    _load_plugins()
    return sorted(_INFO)


def canonical_name(name: str) -> str:
    """Resolve an alias to its canonical name; raise ``UnknownNameError`` for unknown names."""
    _load_plugins()
    if name in _INFO:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    raise UnknownNameError("model", name, names())


def info(name: str) -> ModelInfo:
    """Catalogue entry of a model (aliases resolve to their canonical entry)."""
    return _INFO[canonical_name(name)]


def input_size(name: str) -> int:
    """Native input side of a model: the image size its FLOPs and memory are quoted at."""
    return info(name).input_size


def create(name: str, num_classes: int = 100) -> KDModel:
    """Build a freshly initialised network by (canonical or alias) name."""
    return _FACTORIES[canonical_name(name)](num_classes=num_classes)
