"""The GPUs the executor may use, named as its children must name them, and their free memory, read without
a CUDA context in the executor.

A child's ``CUDA_VISIBLE_DEVICES`` is read by CUDA against *all* the machine's GPUs, while torch's index ``i``
in the executor counts only the GPUs the executor itself sees. The executor's GPU ``i`` is therefore the
``i``-th entry of its own ``CUDA_VISIBLE_DEVICES`` (an index, a GPU UUID or a MIG id; CUDA uses the entries
up to the first invalid one, which is what ``torch.cuda.device_count()`` counts), or ``i`` when the variable
is unset. That label, not ``i``, is what each child gets.

Free memory comes from NVML (``nvidia-ml-py``). NVML numbers GPUs physically, in PCI order, which need not be
CUDA's order (``CUDA_DEVICE_ORDER`` defaults to FASTEST_FIRST), so the join key is the UUID: CUDA reports
the UUID of the executor's GPU ``i`` (``cudaGetDeviceProperties``, which needs no context) and NVML opens the
device with that UUID. ``torch.cuda.mem_get_info`` would instead create a CUDA context on every GPU and hold
it for the whole table: about 0.5 GB each, and on GPUs in EXCLUSIVE_PROCESS compute mode no child could
then start. Without NVML a short-lived subprocess measures it with torch and exits before any run starts.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kdbench.errors import KdbenchError

log = logging.getLogger("kdbench.execute")
# Prints the free bytes of every GPU this process sees, in torch's order; run in a subprocess and exits.
PROBE = "import json, torch; print(json.dumps([torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]))"
PROBE_TIMEOUT_S = 300


@dataclass(frozen=True)
class Gpu:
    """The executor's GPU ``index`` (torch's ``cuda:index`` here) and the ``label`` a child's
    ``CUDA_VISIBLE_DEVICES`` must hold to see that same GPU."""

    index: int
    label: str

    @property
    def name(self) -> str:
        """The slot name: ``gpu`` + the physical index when the label is one (as nvidia-smi numbers it), else
        + the executor's index (UUIDs and MIG ids are long and may hold '/')."""
        return f"gpu{self.label if self.label.isdigit() else self.index}"


def visible_gpus(count: int, environ: Mapping[str, str] = os.environ) -> list[Gpu]:
    """The ``count`` GPUs torch sees in this process, each with the label a child needs (see the module doc)."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [Gpu(i, str(i)) for i in range(count)]
    labels = [label.strip() for label in listed.split(",")][:count]
    if len(labels) < count:
        raise KdbenchError(
            f"torch sees {count} GPU(s) but CUDA_VISIBLE_DEVICES={listed!r} lists {len(labels)}: "
            f"set CUDA_VISIBLE_DEVICES to the GPUs to use, separated by commas."
        )
    return [Gpu(i, label) for i, label in enumerate(labels)]


def cuda_uuid(index: int) -> str:
    """The UUID CUDA reports for this process's GPU ``index`` (hex groups, no prefix); creates no context."""
    import torch

    return str(torch.cuda.get_device_properties(index).uuid)


class NvmlUnavailable(Exception):
    """NVML cannot say how much memory these GPUs have free (not installed, no driver library, unknown UUID)."""


def nvml_free_memory(
    gpus: Sequence[Gpu], uuid_of: Callable[[int], str] = cuda_uuid
) -> dict[str, int]:
    """Free bytes per GPU label from NVML, each device opened by the UUID CUDA gives it (``GPU-…``, or ``MIG-…``
    for a MIG instance)."""
    try:
        import pynvml
    except ImportError as exc:
        raise NvmlUnavailable(f"nvidia-ml-py is not installed ({exc})") from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise NvmlUnavailable(f"NVML did not start: {exc}") from exc
    try:
        return {
            gpu.label: int(
                pynvml.nvmlDeviceGetMemoryInfo(_nvml_handle(pynvml, uuid_of(gpu.index))).free
            )
            for gpu in gpus
        }
    finally:
        pynvml.nvmlShutdown()


def _nvml_handle(pynvml: Any, uuid: str) -> Any:
    bare = uuid.lower().removeprefix("gpu-").removeprefix("mig-")
    for prefix in ("GPU-", "MIG-"):
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(prefix + bare)
        except pynvml.NVMLError:
            continue
    raise NvmlUnavailable(f"NVML knows no GPU or MIG instance with CUDA's UUID {bare}")


def probe_free_memory(
    gpus: Sequence[Gpu], command: Sequence[str] = (sys.executable, "-c", PROBE)
) -> dict[str, int]:
    """Free bytes per GPU label, measured by torch in a subprocess (its CUDA contexts end with it)."""
    try:
        done = subprocess.run(
            list(command), capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=True
        )
        free = json.loads(done.stdout.strip().splitlines()[-1])
        if len(free) <= max(gpu.index for gpu in gpus):
            raise ValueError(f"the probe process saw {len(free)} GPU(s)")
        return {gpu.label: int(free[gpu.index]) for gpu in gpus}
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        detail = (
            exc.stderr.strip().splitlines()[-1:]
            if isinstance(exc, subprocess.CalledProcessError) and exc.stderr
            else []
        )
        raise KdbenchError(
            f"cannot read the GPUs' free memory for --runs-per-gpu auto ({exc}{': ' + detail[0] if detail else ''}); "
            f"install nvidia-ml-py, or pass --runs-per-gpu N."
        ) from exc


def free_memory(gpus: Sequence[Gpu], uuid_of: Callable[[int], str] = cuda_uuid) -> dict[str, int]:
    """Free bytes per GPU label: NVML, else a probe subprocess; never a CUDA context in this process."""
    try:
        return nvml_free_memory(gpus, uuid_of)
    except NvmlUnavailable as exc:
        log.info("GPU free memory from a probe process: %s", exc)
        return probe_free_memory(gpus)
