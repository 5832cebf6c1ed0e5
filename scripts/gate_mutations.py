"""Can the CI regression gate catch a real bug? Plant four and see (docs/user-guide.md, "CI regression use").

1. Reproduce the gate table (docs/ci/gate.yaml, `--profile ci`) with the code as it is; write its baseline CSV.
2. For each mutation, reproduce the KD row again in a fresh results directory (the teacher copied over, so
   only the students see the bug), with the bug planted at start-up through ``sitecustomize``, and run
   ``kdbench compare --baseline``: exit 3 means the gate caught it.
3. Print each mutation's effect (KD mean now − KD mean in the baseline, in accuracy points), the trials' std,
   and whether the gate failed.

Usage: KDBENCH_DATA=../shared/data python scripts/gate_mutations.py OUT_DIR [--trials N] [--cpu-jobs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "docs" / "ci" / "gate.yaml"

# Each bug, planted in every training process before kdbench runs (the sitecustomize hook below).
MUTATIONS = {
    "temperature ignored": """
        from kdbench import losses
        real = losses.kd
        losses.kd = lambda s, t, temperature: real(s, t, 1.0)  # the methods call losses.kd at each step
    """,
    "KD weight dropped": """
        from kdbench.methods import base
        real = base.Distiller.forward_train
        def forward_train(self, *args, **kwargs):
            logits, terms = real(self, *args, **kwargs)
            return logits, {k: (v * 0 if k == "kd" else v) for k, v in terms.items()}
        base.Distiller.forward_train = forward_train
    """,
    "teacher in train mode": """
        import torch
        from kdbench.methods import base
        def train(self, mode=True):
            torch.nn.Module.train(self, mode)  # the teacher's BatchNorm now uses and updates batch statistics
            return self
        base.Distiller.train = train
    """,
    "LR decays one epoch late": """
        from kdbench import plan
        plan.TrainSpec.lr_at = lambda self, epoch: self.lr * self.lr_decay ** sum(epoch > m + 1 for m in self.milestones)
    """,
}
HOOK = """
import os
if os.environ.get("KDBENCH_MUTATION_HOOK") == "1":
{body}
"""


def kdbench(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "kdbench", *args],
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
    )
    if check and proc.returncode not in (0,):
        raise SystemExit(
            f"kdbench {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def kd_cells(csv: Path) -> pd.Series:
    cells = pd.read_csv(csv)
    return cells[(cells["row"] == "KD") & (cells["quantity"] == "top1")].iloc[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--cpu-jobs", type=int, default=2)
    args = parser.parse_args()
    trials = ["--trials", str(args.trials)] if args.trials else []
    common = ["--profile", "ci", "--device", "cpu", "--cpu-jobs", str(args.cpu_jobs), *trials]

    base = args.out / "baseline"
    kdbench("reproduce", str(RECIPE), "--results", str(base), *common)
    baseline_csv = args.out / "baseline.csv"
    kdbench("compare", str(base), "--format", "csv", "-o", str(baseline_csv))
    before = kd_cells(baseline_csv)
    teacher = next(p for p in (base / "runs").iterdir() if p.name.startswith("ce-resnet20-"))
    rows = [("none (baseline)", before["ours_mean"], before["ours_std"], 0.0, "—")]
    for name, body in MUTATIONS.items():
        results = args.out / name.replace(" ", "-")
        shutil.rmtree(results, ignore_errors=True)
        (results / "runs").mkdir(parents=True)
        shutil.copytree(teacher, results / "runs" / teacher.name)
        hook = args.out / "hooks" / name.replace(" ", "-")
        hook.mkdir(parents=True, exist_ok=True)
        (hook / "sitecustomize.py").write_text(
            HOOK.format(body=textwrap.indent(textwrap.dedent(body), "    "))
        )
        env = {"KDBENCH_MUTATION_HOOK": "1", "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)])}
        kdbench(
            "reproduce", str(RECIPE), "--results", str(results), "--methods", "kd", *common, env=env
        )
        # The gate, as CI runs it (no hook: compare only reads), on the re-run KD cell alone: the Student row and the
        # teacher were not re-run, so their baseline cells are filtered out and allowed missing.
        gate = kdbench(
            "compare",
            str(results),
            "--methods",
            "KD",
            "--baseline",
            str(baseline_csv),
            "--allow-missing",
            check=False,
        )
        kdbench("compare", str(results), "--format", "csv", "-o", str(results / "table.csv"))
        now = kd_cells(results / "table.csv")
        rows.append(
            (
                name,
                now["ours_mean"],
                now["ours_std"],
                now["ours_mean"] - before["ours_mean"],
                "caught (exit 3)" if gate.returncode == 3 else f"missed (exit {gate.returncode})",
            )
        )
    print(
        f"| mutation | KD top-1 (mean ± std, n={int(before['n'])}) | effect (points) | gate, tolerance 1.0 |"
    )
    print("|---|---|---|---|")
    for name, mean, std, effect, verdict in rows:
        print(f"| {name} | {mean:.2f} ± {std:.2f} | {effect:+.2f} | {verdict} |")


if __name__ == "__main__":
    main()
