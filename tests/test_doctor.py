"""`kdbench doctor --quick`: the CPU equivalents of the device checks, as CI runs them (a subprocess, a small budget)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kdbench.tools import doctor

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_doctor_quick_reports_every_check_and_exits_zero(tmp_path: Path):
    out = tmp_path / "doctor.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdbench",
            "doctor",
            "--quick",
            "--device",
            "cpu",
            "--budget-s",
            "20",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    names = [c["name"] for c in report["checks"]]
    assert report["ok"] and report["counts"]["fail"] == 0 and report["budget_s"] == 20
    assert (
        names[0] == "tensor loader = reference loader" and report["checks"][0]["status"] == "pass"
    )
    assert {
        "torch",
        "device",
        "C compiler (Inductor, Triton)",
        "tf32 cudnn (torch.backends.cudnn.allow_tf32)",
    } <= set(report["environment"])
    assert len(names) >= len(
        doctor.CHECKS
    )  # every check reported: run, or skipped once the budget was spent
    for check in report["checks"]:
        assert check["status"] in ("pass", "skip") and check["figure"], check
    assert (
        "pass  tensor loader = reference loader: max |Δ| 0" in done.stdout
        and "doctor: " in done.stdout
    )


def test_a_failed_check_fails_the_report():
    report = doctor.Report(
        {"device": "cpu"},
        [doctor.Check("a", "pass", "1", 0.1), doctor.Check("b", "fail", "2", 0.1)],
    )
    assert not report.ok and report.counts() == {"pass": 1, "fail": 1, "skip": 0}
    assert report.to_json()["checks"][1]["status"] == "fail"


def test_a_check_that_crashes_is_a_failure_and_the_others_still_run(monkeypatch):
    def crashes(setting: doctor.Setting) -> doctor.Check:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(doctor, "CHECKS", (crashes, doctor.check_loader))
    report = doctor.run(torch.device("cpu"), budget_s=60, quick=True)
    assert [c.status for c in report.checks] == [
        "fail",
        "pass",
    ] and "illegal memory access" in report.checks[0].detail
