"""The fp32 boundary of every loss: :func:`fp32` upcasts a loss's bf16/fp16 inputs and turns autocast off inside it.

The networks (and a method's own modules: connectors, projectors, embeddings) run under whatever autocast the
training loop set (``--precision bf16``); every loss of ``kdbench.losses`` is computed in float32 on float32
inputs, whatever dtype its caller hands it. Float32 and float64 tensors, integer tensors (labels, indices) and
non-tensors pass through unchanged. The authors' codes computed everything in fp32 (docs/protocol-choices.md,
"Precision"); this keeps the reductions, exponentials and logarithms of the losses there under bf16 autocast.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

LossFn = TypeVar("LossFn", bound=Callable[..., Any])
LOW_PRECISION = (torch.bfloat16, torch.float16)


def upcast(value: Any) -> Any:
    """``value`` with every bf16/fp16 tensor in it (also inside a list or tuple) as float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in LOW_PRECISION else value
    if isinstance(value, (list, tuple)):
        return type(value)(upcast(v) for v in value)
    return value


def _device_types(values: Any) -> set[str]:
    if isinstance(values, torch.Tensor):
        return {values.device.type}
    if isinstance(values, (list, tuple)):
        return set().union(*(_device_types(v) for v in values)) if values else set()
    return set()


def fp32(loss: LossFn) -> LossFn:
    """Decorate a loss function: its tensor arguments are upcast (:func:`upcast`) and it runs with autocast off on
    the devices of its tensors, so it computes in float32 and returns float32."""

    @functools.wraps(loss)
    def in_fp32(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = upcast(args), {k: upcast(v) for k, v in kwargs.items()}
        devices = _device_types(args) | _device_types(list(kwargs.values())) or {"cpu"}
        with contextlib.ExitStack() as autocast_off:
            for device in sorted(devices):
                autocast_off.enter_context(torch.autocast(device, enabled=False))
            return loss(*args, **kwargs)

    in_fp32.fp32_boundary = True  # type: ignore[attr-defined]  # tests check that every public loss has it
    return in_fp32  # type: ignore[return-value]
