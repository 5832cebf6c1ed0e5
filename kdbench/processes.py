"""Training processes that never outlive the ``reproduce`` that started them.

* Each child starts in its own session (process group), so a Ctrl-C in the terminal reaches only
  ``reproduce``, which then stops its children itself: SIGTERM to each child's group, then SIGKILL.
* A child learns its parent's pid from ``KDBENCH_PARENT_PID`` and asks the kernel (Linux
  ``prctl(PR_SET_PDEATHSIG)``) for SIGTERM when that parent dies, even by SIGKILL; elsewhere a thread
  watches the parent pid. A run stopped this way resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

# How a training process (`kdbench train`, a worker's run) ends: trained, failed (failed.json says why), or
# refused because another process holds the run's lock (the executor waits for that one).
EXIT_DONE, EXIT_FAILED, EXIT_LOCKED = 0, 1, 75
PARENT_ENV = "KDBENCH_PARENT_PID"
_PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 10.0


def spawn(command: Sequence[str], env: dict[str, str], **popen_kwargs) -> subprocess.Popen:
    """Start ``command`` as a child that dies with this process and can be stopped with its own children."""
    return subprocess.Popen(
        list(command),
        env={**env, PARENT_ENV: str(os.getpid())},
        start_new_session=True,
        **popen_kwargs,
    )


def stop(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """End ``proc`` and every process of its group: SIGTERM, then SIGKILL after ``grace_s`` seconds."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    # The group may outlive its leader (a rank of a DDP run): end what is left.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: a SLURM allocation's or taskset's), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def watch_parent() -> None:
    """In a child started by :func:`spawn`: exit (SIGTERM) as soon as the parent is gone."""
    value = os.environ.pop(
        PARENT_ENV, None
    )  # not inherited: a DDP rank's parent is its launcher, not ours
    if not value or not value.isdigit():
        return
    parent = int(value)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0:
            if os.getppid() != parent:  # the parent died before the request took effect
                os.kill(os.getpid(), signal.SIGTERM)
            return
    threading.Thread(
        target=_poll_parent, args=(parent,), daemon=True, name="kdbench-parent-watch"
    ).start()


def _poll_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached ``reproduce``: stop the table, keep what is finished."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def interruptible() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread."""

    def handler(signum: int, frame) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
