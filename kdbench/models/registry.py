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

from kdbench import plugins
from kdbench.errors import UnknownNameError
from kdbench.models.base import KDModel
from kdbench.registry import Registry

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


@dataclass(frozen=True)
class RegisteredModel:
    """What the registry holds for a name: the catalogue entry and the factory."""

    info: ModelInfo
    factory: ModelFactory


# Canonical names and aliases -> their record (an alias shares its canonical name's record).
MODELS: Registry[RegisteredModel] = Registry("model", plugins=plugins.MODELS)


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
        keys = (name, *aliases)
        for key in keys:  # all checked before any is added
            if MODELS.registered(key) is not None:
                raise ValueError(f"model name {key!r} is registered twice")
        entry = RegisteredModel(
            ModelInfo(name, zoo, family, paper_label, tuple(aliases), input_size), factory
        )
        for key in keys:
            MODELS.add(key, entry)
        return factory

    return decorator


def _entry(name: str) -> RegisteredModel:
    """The record of a canonical name or an alias; an unknown name's error lists the canonical names."""
    try:
        return MODELS.get(name)
    except UnknownNameError:
        raise UnknownNameError("model", name, names()) from None


def names() -> list[str]:
    """Sorted canonical model names (aliases excluded), built-in and plugins'."""
    return [key for key in MODELS.names() if MODELS.get(key).info.name == key]


def canonical_name(name: str) -> str:
    """Resolve an alias to its canonical name; raise ``UnknownNameError`` for unknown names."""
    return _entry(name).info.name


def info(name: str) -> ModelInfo:
    """Catalogue entry of a model (aliases resolve to their canonical entry)."""
    return _entry(name).info


def input_size(name: str) -> int:
    """Native input side of a model: the image size its FLOPs and memory are quoted at."""
    return info(name).input_size


def create(name: str, num_classes: int = 100) -> KDModel:
    """Build a freshly initialised network by (canonical or alias) name."""
    return _entry(name).factory(num_classes=num_classes)
