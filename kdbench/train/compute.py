"""Run options that change speed, never results beyond floating-point tolerance.

Precision (bf16 autocast, fp32, or ``faithful`` fp32 without TF32), memory format (channels_last),
``torch.compile`` and the teacher-output cache are options of a run, not of its
:class:`~kdbench.plan.RunSpec`: they are not hashed into the run id, and ``result.json`` records which
ones a run used (its precision, with the TF32 flags in force, as a :class:`PrecisionRecord`). ``auto``
values resolve per device: the fast path on CUDA, plain fp32 eager on CPU. What each precision means and
why the default is what it is: docs/protocol-choices.md, "Precision".

Compile (docs/DESIGN-NOTES.md, "torch.compile"): each network's ``forward_features`` is compiled as one
static-shape graph per input shape (``fullgraph=True, dynamic=False``), in its own recompile budget, from an
empty dynamo cache per run. Only compiler errors make a network fall back to eager (never an out-of-memory or
an error eager mode raises too), the backward is compiled with the forward so its failures fall back as well,
and every fallback is recorded, so ``result.json``'s ``compiled`` is true only for a run that stayed compiled.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from kdbench.errors import KdbenchError
from kdbench.models.base import KDModel

log = logging.getLogger(__name__)
Precision = Literal["auto", "fp32", "bf16", "faithful"]
CacheMode = Literal["auto", "on", "off"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "faithful")
# Each resolved precision's fp32 math on CUDA, (cuDNN convolutions, matmuls): "tf32" (TF32 allowed) or "ieee".
# fp32 and bf16 keep PyTorch's own defaults ("tf32", "ieee"), set explicitly so that a run's meaning does not
# depend on what else ran in its process; faithful is IEEE fp32 throughout (docs/protocol-choices.md, "Precision").
FP32_MATH: dict[str, tuple[str, str]] = {
    "fp32": ("tf32", "ieee"),
    "bf16": ("tf32", "ieee"),
    "faithful": ("ieee", "ieee"),
}
CACHE_MODES: tuple[str, ...] = ("auto", "on", "off")
CompileMode = Literal["default", "reduce-overhead"]
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead")
# ``auto`` compiles a run of at least this many optimizer steps. A cold compile of a run's graphs costs minutes
# (forward and backward of the student, the teacher, the short last batch, evaluation) and saves well under a
# millisecond per step on a launch-bound CIFAR step, so it pays back only over a long run: the papers' 240-epoch
# CIFAR runs (187,680 steps at batch 64) and every ImageNet run compile, ci/smoke runs and short runs do not.
# An estimate, not a measurement: `kdbench doctor` on a GPU prints both sides (compile seconds, eager vs
# compiled images/s) so it can be checked.
COMPILE_MIN_STEPS = 100_000
# Compiled graphs per network and run: {train, eval} x {full, short last batch} x {autocast on, off (MLKD's strong
# view)}, plus the teacher cache's two batch sizes; far below this. Past it the network falls back to eager, recorded.
RECOMPILE_LIMIT = 24
# The torch.compile backend of every run: Inductor (tests put a cheaper one, e.g. "aot_eager", or a failing one here).
BACKEND: str | Callable[..., Any] = "inductor"
# glibc malloc settings that stop every CPU step from re-mmapping its activations (docs/references.md §Performance notes).
CPU_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


@dataclass(frozen=True)
class ComputeOptions:
    """How a run computes, as asked for: ``None`` and ``auto`` mean "the device's default"."""

    precision: Precision = "auto"
    channels_last: bool | None = None
    compile: bool | None = None
    teacher_cache: CacheMode = "auto"
    # "reduce-overhead": CUDA graphs over the compiled regions (CUDA only; off unless asked for: unmeasured)
    compile_mode: CompileMode = "default"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise KdbenchError(
                f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}."
            )
        if self.teacher_cache not in CACHE_MODES:
            raise KdbenchError(
                f"unknown teacher cache mode {self.teacher_cache!r}; choose one of {', '.join(CACHE_MODES)}."
            )
        if self.compile_mode not in COMPILE_MODES:
            raise KdbenchError(
                f"unknown compile mode {self.compile_mode!r}; choose one of {', '.join(COMPILE_MODES)}."
            )

    def resolve(self, device: torch.device, train_steps: int | None = None) -> Compute:
        """The concrete options on ``device``: bf16, channels_last and compile on CUDA; fp32 eager on CPU.
        ``faithful`` stays ``faithful`` on CPU too (there it computes exactly as ``fp32``: a CPU has no TF32).

        ``train_steps``: the run's optimizer steps; ``auto`` compile then needs at least ``COMPILE_MIN_STEPS``."""
        cuda = device.type == "cuda"
        precision = self.precision if self.precision != "auto" else ("bf16" if cuda else "fp32")
        compile_ = (
            self.compile
            if self.compile is not None
            else cuda and (train_steps is None or train_steps >= COMPILE_MIN_STEPS)
        )
        if self.compile_mode == "reduce-overhead" and not (cuda and compile_):
            raise KdbenchError(
                f"--compile-mode reduce-overhead records CUDA graphs: it needs a CUDA device and compile on "
                f"(device {device}, compile {'on' if compile_ else 'off'}); pass --compile on a GPU, or drop it."
            )
        return Compute(
            precision=precision,
            channels_last=cuda if self.channels_last is None else self.channels_last,
            compile=compile_,
            teacher_cache=self.teacher_cache,
            compile_mode=self.compile_mode,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Compute:
    """Resolved compute options of one run."""

    precision: Literal["fp32", "bf16", "faithful"]
    channels_last: bool
    compile: bool
    # off; on (for a cacheable method); auto (on when it already exists or pays for itself in the run, see train/loop.py)
    teacher_cache: CacheMode
    compile_mode: CompileMode = "default"

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
            flags = {
                "cudnn_allow_tf32": None,
                "matmul_allow_tf32": None,
                "float32_matmul_precision": None,
            }
        return PrecisionRecord(
            precision=self.precision,
            autocast_dtype="bfloat16" if self.precision == "bf16" else None,
            **flags,
        )

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """A batch laid out as the networks expect it."""
        return (
            images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
        )

    def prepare(self, networks: Sequence[nn.Module]) -> None:
        """Convert ``networks`` in place: memory format, and a compiled ``forward_features`` (from an empty dynamo
        cache: a long-lived worker's earlier runs leave no graphs, and no recompiles, to this one)."""
        if self.compile:
            torch._dynamo.reset()
        for network in networks:
            if self.channels_last:
                # torch's stubs lack Module.to's memory_format keyword (torch.nn.Module.to documents it)
                network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            if self.compile:
                assert isinstance(network, KDModel)  # only KDModels have a forward_features
                # the instance's compiled forward shadows the class's method
                network.forward_features = CompiledOrEager(  # type: ignore[method-assign]
                    network.forward_features, type(network).__name__, mode=self.compile_mode
                )

    def step_begin(self) -> None:
        """Mark a new training step for CUDA graphs (``reduce-overhead``): the previous step's outputs may be overwritten."""
        if self.compile and self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()


@functools.cache
def compile_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the compiler failed" in torch 2.13: dynamo's (``BackendCompilerFailed``, which wraps
    Inductor's ``InductorError``; ``Unsupported`` for a graph break under ``fullgraph``; ...), the hard failure at
    the recompile limit, and Inductor's own (lowering, C++/CUDA compile, missing Triton)."""
    # imported here, not at module level: importing dynamo would cost every command, compiling or not
    import torch._dynamo.exc as dynamo_exc
    import torch._inductor.exc as inductor_exc

    return (
        dynamo_exc.TorchDynamoException,
        dynamo_exc.FailOnRecompileLimitHit,
        inductor_exc.OperatorIssue,
        inductor_exc.SubgraphLoweringException,
        inductor_exc.InvalidCxxCompiler,
        inductor_exc.CppWrapperCodegenError,
        inductor_exc.CppCompileError,
    )


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was caused by, running out of memory (the compiler wraps errors raised while it runs)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
            return True
        todo += [e.__cause__, e.__context__, getattr(e, "inner_exception", None)]
    return False


def is_compile_failure(exc: BaseException) -> bool:
    """A compiler error that eager mode would not have: the network can go on eagerly."""
    return isinstance(exc, compile_errors()) and not _out_of_memory(exc)


def _summary(exc: BaseException) -> str:
    """``Type: first line``, with the backend's own error for a ``BackendCompilerFailed`` (whose first line names only the backend)."""
    inner = getattr(exc, "inner_exception", None)
    shown = inner if isinstance(inner, BaseException) else exc
    text = str(shown).strip()
    prefix = f"{type(exc).__name__} from " if shown is not exc else ""
    return f"{prefix}{type(shown).__name__}: {text.splitlines()[0] if text else ''}"[:300]


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
    return {
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


class CompiledOrEager:
    """``fn`` through ``torch.compile``; if the compiler fails, a logged warning and ``fn`` in eager mode from then on.

    Compilation is lazy (at the first call of each input shape and mode), so the fallback wraps every call. Only
    ``compile_errors()`` fall back: an out-of-memory error or any other runtime error propagates. The backward graph
    is compiled together with the forward (``force_non_lazy_backward_lowering``), so a failure to compile it falls
    back here too instead of being raised from ``loss.backward()`` (``first_step`` covers what is still lazy).
    ``fullgraph=True`` turns a graph break, and the recompile limit, into errors: a network never runs partly or
    silently eager while reported compiled.
    """

    def __init__(self, fn: Callable[..., Any], name: str, mode: CompileMode = "default"):
        self.eager = fn
        self.name = name
        self.fallback: str | None = None  # why it runs eagerly, once it does
        self.proven = False  # a first training step (forward and backward) ran compiled
        # Compile each backward graph with its forward, inside the fallback below (a process-wide switch: patching
        # it around every call would cost tens of microseconds per call).
        import torch._functorch.config

        torch._functorch.config.force_non_lazy_backward_lowering = True
        # torch.compile's overloads lack its recompile_limit and isolate_recompiles keywords (its signature has them)
        self.compiled: Callable[..., Any] | None = torch.compile(  # type: ignore[call-overload]
            fn,
            fullgraph=True,
            dynamic=False,
            backend=BACKEND,
            mode=None if mode == "default" else mode,
            recompile_limit=RECOMPILE_LIMIT,
            isolate_recompiles=True,
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except compile_errors() as exc:
            if _out_of_memory(exc):
                raise
            self.fall_back(exc)
        return self.eager(*args, **kwargs)

    def fall_back(self, exc: BaseException) -> None:
        """Go on eagerly from now on, and say why."""
        if self.compiled is None:
            return
        self.fallback = _summary(exc)
        log.warning(
            "torch.compile of %s failed (%s); continuing in eager mode (pass --no-compile to skip compiling).",
            self.name,
            self.fallback,
        )
        self.compiled = None

    @property
    def active(self) -> bool:
        """Whether calls still go through the compiled function."""
        return self.compiled is not None


def wrappers(networks: Sequence[nn.Module | None]) -> list[CompiledOrEager]:
    """The compiled forwards of ``networks`` (none when compile is off)."""
    return [
        forward
        for n in networks
        if isinstance(forward := getattr(n, "forward_features", None), CompiledOrEager)
    ]


def compiled_active(networks: Sequence[nn.Module | None]) -> bool:
    """True if every network's forward still runs compiled (none fell back to eager)."""
    found = wrappers(networks)
    return bool(found) and all(w.active for w in found)


def compile_fallbacks(networks: Sequence[nn.Module | None]) -> dict[str, str]:
    """Why each network that fell back to eager did (empty when all stayed compiled)."""
    return {w.name: w.fallback for w in wrappers(networks) if w.fallback is not None}


T = TypeVar("T")


def first_step(networks: Sequence[nn.Module | None], state: nn.Module, run: Callable[[], T]) -> T:
    """``run()`` (the first training step's forward and backward) where a compiler error, raised even from the
    backward, makes every network go eager: ``state``'s tensors, its modules' generators and the global RNG are put
    back as they were and the step runs again eagerly. Any other error propagates; later steps call ``run`` as is."""
    pending = [w for w in wrappers(networks) if w.active and not w.proven]
    if not pending:
        return run()
    saved = {k: v.detach().clone() for k, v in state.state_dict().items()}
    generators = [
        (g, g.get_state())
        for m in state.modules()
        for g in vars(m).values()
        if isinstance(g, torch.Generator)
    ]
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        out = run()
    except compile_errors() as exc:
        if _out_of_memory(exc):
            raise
        for w in wrappers(networks):
            w.fall_back(exc)
        state.load_state_dict(saved)
        for g, g_state in generators:
            g.set_state(g_state)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        return run()
    for w in pending:
        w.proven = True
    return out


def device_name(device: torch.device) -> str:
    """How measurements name a device: the GPU's model name (e.g. "NVIDIA H100 80GB HBM3"), else "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
