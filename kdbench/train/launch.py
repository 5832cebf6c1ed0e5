"""``kdbench train SPEC --nproc N``: one run as N processes of one DDP process group on this machine.

The processes are started by torch's elastic launcher, as ``torchrun --standalone`` would: a c10d
rendezvous on 127.0.0.1 at a free port, no restarts, gloo bound to the loopback interface. Each process
runs ``python -m kdbench train SPEC …`` and finds its rank in the environment (``kdbench/train/distributed.py``).
When one process fails the launcher stops the others, so a failure on any rank fails the run.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from kdbench.io import atomic_write_json
from kdbench.processes import EXIT_FAILED, EXIT_LOCKED, usable_cores
from kdbench.store.run_dir import RunDir


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _environment(nproc: int) -> Iterator[None]:
    """Loopback-only gloo and one share of the usable cores (the affinity mask's) per process, unless the caller
    set them."""
    defaults = {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": str(max(1, usable_cores() // nproc))}
    added = [k for k in defaults if k not in os.environ]
    os.environ.update({k: defaults[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def launch(nproc: int, args: Sequence[str]) -> tuple[int, str, int | None]:
    """Run ``python -m kdbench ARGS`` as ``nproc`` ranks; (0, "", None) when all succeed, else the exit code
    of the first rank that failed, a line saying which rank it was, and that rank."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"kdbench-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        local_addr="127.0.0.1",
        max_restarts=0,
        monitor_interval=0.1,
    )
    try:
        with _environment(nproc):
            elastic_launch(config, sys.executable)("-m", "kdbench", *args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else EXIT_FAILED
        how = (
            f"exit code {failure.exitcode}"
            if failure.exitcode >= 0
            else f"signal {-failure.exitcode}"
        )
        return code, f"rank {rank} of {nproc} failed ({how})", rank
    return 0, "", None


def train(
    spec_file: Path, run_id: str, results: Path, nproc: int, args: Sequence[str]
) -> tuple[int, str]:
    """``launch`` a ``kdbench train`` of run ``run_id``: (exit code, which rank failed)."""
    started = time.time()
    code, why, rank = launch(nproc, ["train", str(spec_file), *args])
    run = RunDir(results, run_id)
    if code in (0, EXIT_LOCKED) or not run.path.is_dir() or run.is_done():
        return code, why
    # Rank 0 records its own error; when another rank failed first, rank 0 was stopped (or saw a broken
    # connection), so failed.json names the rank that failed and keeps rank 0's message after it.
    previous = (
        run.failure()
        if run.failed_file.is_file() and run.failed_file.stat().st_mtime >= started
        else None
    )
    if previous is None or rank != 0:
        message = f"{why}; its error is printed on stderr" + (
            f" (rank 0 then: {previous['message']})" if previous else ""
        )
        atomic_write_json(
            run.failed_file,
            {
                "run_id": run_id,
                "error": "DistributedRunFailed",
                "message": message,
                "time": time.time(),
            },
        )
    return code, why
