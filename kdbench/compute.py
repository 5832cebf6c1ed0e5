"""Run options that change speed, never results beyond floating-point tolerance.

Precision (bf16 autocast, fp32, or ``faithful`` fp32 without TF32), memory format (channels_last),
``torch.compile`` and the teacher-output cache are options of a run, not of its
:class:`~kdbench.plan.RunSpec`: they are not hashed into the run id, and ``result.json`` records which
ones a run used (its precision, with the TF32 flags in force, as a :class:`PrecisionRecord`). ``auto``
values resolve per device: the fast path on CUDA, plain fp32 eager on CPU. What each precision means and
why the default is what it is: docs/protocol-choices.md, "Precision".
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from kdbench.errors import KdbenchError

log = logging.getLogger("kdbench.compute")
Precision = Literal["auto", "fp32", "bf16", "faithful"]
CacheMode = Literal["auto", "on", "off"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "faithful")
# Each resolved precision's fp32 math on CUDA, (cuDNN convolutions, matmuls): "tf32" (TF32 allowed) or "ieee".
# fp32 and bf16 keep PyTorch's own defaults ("tf32", "ieee"), set explicitly so that a run's meaning does not
# depend on what else ran in its process; faithful is IEEE fp32 throughout (docs/protocol-choices.md, "Precision").
FP32_MATH: dict[str, tuple[str, str]] = {"fp32": ("tf32", "ieee"), "bf16": ("tf32", "ieee"), "faithful": ("ieee", "ieee")}
CACHE_MODES: tuple[str, ...] = ("auto", "on", "off")
# glibc malloc settings that stop every CPU step from re-mmapping its activations (specs/performance.md §5).
CPU_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


@dataclass(frozen=True)
class ComputeOptions:
    """How a run computes, as asked for: ``None`` and ``auto`` mean "the device's default"."""

    precision: Precision = "auto"
    channels_last: bool | None = None
    compile: bool | None = None
    teacher_cache: CacheMode = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise KdbenchError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}.")
        if self.teacher_cache not in CACHE_MODES:
            raise KdbenchError(f"unknown teacher cache mode {self.teacher_cache!r}; choose one of {', '.join(CACHE_MODES)}.")

    def resolve(self, device: torch.device) -> Compute:
        """The concrete options on ``device``: bf16, channels_last and compile on CUDA; fp32 eager on CPU.
        ``faithful`` stays ``faithful`` on CPU too (there it computes exactly as ``fp32``: a CPU has no TF32)."""
        cuda = device.type == "cuda"
        precision = self.precision if self.precision != "auto" else ("bf16" if cuda else "fp32")
        return Compute(
            precision=precision,
            channels_last=cuda if self.channels_last is None else self.channels_last,
            compile=cuda if self.compile is None else self.compile,
            teacher_cache=self.teacher_cache,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Compute:
    """Resolved compute options of one run."""

    precision: Literal["fp32", "bf16", "faithful"]
    channels_last: bool
    compile: bool
    # off; on (for a cacheable method); auto (on when it already exists or pays for itself in the run, see train.py)
    teacher_cache: CacheMode

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """bf16 autocast for the networks' forward passes (a no-op in fp32 and faithful)."""
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def apply_fp32_math(self, device: torch.device) -> PrecisionRecord:
        """Set the process's TF32 flags for this precision on a CUDA ``device`` (see ``FP32_MATH``) and return what
        the run computes with. On CPU nothing is set and the TF32 fields are ``None``: a CPU has no TF32."""
        if device.type == "cuda":
            set_fp32_math(*FP32_MATH[self.precision])
            flags = fp32_math_flags()
        else:
            flags = {"cudnn_allow_tf32": None, "matmul_allow_tf32": None, "float32_matmul_precision": None}
        return PrecisionRecord(precision=self.precision, autocast_dtype="bfloat16" if self.precision == "bf16" else None,
                               **flags)

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """A batch laid out as the networks expect it."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def prepare(self, networks: list[nn.Module]) -> None:
        """Convert ``networks`` in place: memory format, and a compiled ``forward_features``."""
        for network in networks:
            if self.channels_last:
                network.to(memory_format=torch.channels_last)
            if self.compile:
                network.forward_features = CompiledOrEager(network.forward_features, type(network).__name__)


@dataclass(frozen=True)
class PrecisionRecord:
    """The precision a run computed with (``result.json``'s ``precision``): the option, autocast's dtype for the
    network passes (``None``: none), and, on CUDA, the TF32 flags as PyTorch reported them during the run.
    Losses are always computed in float32 (kdbench/losses/precision.py)."""

    precision: Literal["fp32", "bf16", "faithful"]
    autocast_dtype: str | None
    cudnn_allow_tf32: bool | None  # torch.backends.cudnn.allow_tf32
    matmul_allow_tf32: bool | None  # torch.backends.cuda.matmul.allow_tf32
    float32_matmul_precision: str | None  # torch.get_float32_matmul_precision()
    loss_dtype: str = "float32"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def set_fp32_math(convolutions: str, matmuls: str) -> None:
    """Set cuDNN's and cuBLAS's fp32 math to ``"tf32"`` or ``"ieee"``. The legacy ``allow_tf32`` flags are the ones
    set: torch.compile's inductor reads them, and in torch 2.13 reading them raises once the newer
    ``fp32_precision`` flags were set apart from them. Global to the process; they act on CUDA only and can be set
    without a GPU."""
    torch.backends.cudnn.allow_tf32 = convolutions == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = matmuls == "tf32"


def fp32_math_flags() -> dict[str, Any]:
    """The TF32 flags in force, as PyTorch reports them."""
    return {"cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


class CompiledOrEager:
    """``fn`` through ``torch.compile``; if compiling fails, a logged warning and ``fn`` in eager mode from then on.

    Compilation is lazy (it happens at the first call and on recompiles), so the fallback wraps every
    call: an error that eager mode raises too is re-raised from the eager call.
    """

    def __init__(self, fn: Callable[..., Any], name: str):
        self.eager = fn
        self.name = name
        self.compiled: Callable[..., Any] | None = torch.compile(fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compiler error means: go on eagerly
            log.warning("torch.compile of %s failed (%s: %s); continuing in eager mode (pass --no-compile to skip "
                        "compiling).", self.name, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            self.compiled = None
            return self.eager(*args, **kwargs)

    @property
    def active(self) -> bool:
        """Whether calls still go through the compiled function."""
        return self.compiled is not None


def compiled_active(networks: list[nn.Module]) -> bool:
    """True if every network's forward still runs compiled (none fell back to eager)."""
    wrappers = [n.forward_features for n in networks if isinstance(n.forward_features, CompiledOrEager)]
    return bool(wrappers) and all(w.active for w in wrappers)


def device_name(device: torch.device) -> str:
    """How measurements name a device: the GPU's model name (e.g. "NVIDIA H100 80GB HBM3"), else "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
