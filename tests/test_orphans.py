"""`reproduce` never leaves training processes behind: killed (even SIGKILL) or stopped (SIGINT/SIGTERM).

Before, `kill PID` or SIGKILL of `reproduce` left its slot workers training, re-parented to PID 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kdbench import processes

REPO = Path(__file__).resolve().parent.parent


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (Linux /proc)."""
    found, frontier = set(), [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = {int(k) for k in (task / "children").read_text().split()}
            except OSError:
                continue
            frontier += list(kids - found)
            found |= kids
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0]
    except OSError:
        return False
    return state != "Z"


def start_table(results: Path) -> tuple[subprocess.Popen, set[int]]:
    """A smoke reproduction on 2 CPU slots, once its workers are training; (process, its descendants)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kdbench",
            "reproduce",
            "kdbench/recipes/simkd/table1.yaml",
            "--profile",
            "smoke",
            "--results",
            str(results),
            "--device",
            "cpu",
            "--cpu-jobs",
            "2",
        ],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if list((results / "runs").glob("*/launch.json")) and descendants(proc.pid):
            return proc, descendants(proc.pid)
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"the reproduction never started a run: {proc.communicate()}")


def wait_gone(pids: set[int], timeout_s: float = 30) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    return {p for p in pids if alive(p)}


pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


def test_sigkill_of_reproduce_takes_its_workers_with_it(tmp_path):
    proc, kids = start_table(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not wait_gone(kids), "workers outlived a SIGKILLed reproduce"


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 128 + 15), (signal.SIGINT, 128 + 2)])
def test_sigterm_or_sigint_stops_the_table_cleanly_and_says_how_to_resume(tmp_path, sig, code):
    proc, kids = start_table(tmp_path)
    os.kill(proc.pid, sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert (
        "interrupted" in stderr
        and "Resume with:" in stderr
        and "kdbench reproduce kdbench/recipes/simkd/table1.yaml" in stderr
    )
    assert "Traceback" not in stderr
    assert not wait_gone(kids, 5), "reproduce returned with its workers still running"


def test_a_child_whose_parent_died_before_it_started_watching_ends_itself(tmp_path):
    script = (
        "from kdbench.processes import watch_parent; import time; watch_parent(); time.sleep(60)"
    )
    env = {
        **os.environ,
        processes.PARENT_ENV: "1",
    }  # its parent is this test, not pid 1: it must end at once
    proc = subprocess.run([sys.executable, "-c", script], env=env, timeout=60)
    assert proc.returncode == -signal.SIGTERM


def test_a_grandchild_does_not_inherit_the_parent_pid(tmp_path):
    script = (
        "import os; from kdbench.processes import watch_parent, PARENT_ENV; watch_parent(); "
        "print(PARENT_ENV in os.environ)"
    )
    env = {**os.environ, processes.PARENT_ENV: str(os.getpid())}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    ).stdout
    assert out.strip() == "False"  # a DDP rank's parent is its launcher: it must not watch us
