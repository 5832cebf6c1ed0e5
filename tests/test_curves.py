"""Training curves (issue 15): TensorBoard event files equal metrics.jsonl, each epoch once across a resume;
W&B and MLflow (fake modules with the calls kdbench makes) likewise; --log-to travels through every executor
path; a missing extra is one clear error; a failing backend never fails the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import types
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from kdbench import cli, train
from kdbench.errors import KdbenchError
from kdbench.execute.local.executor import (
    LocalExecutor,
    ProcessPerRun,
    Slot,
    SlotWorkers,
    train_command,
)
from kdbench.execute.slurm import jobs as slurm_jobs
from kdbench.io import atomic_write_json
from kdbench.plan import DataSpec, RunSpec, TrainSpec
from kdbench.store.records import EpochRecord
from kdbench.store.run_dir import RunDir
from kdbench.train import curves, loop
from kdbench.train.options import RunOptions
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent


def spec(
    epochs: int = 3, train_size: int = 128, test_size: int = 32, batch_size: int = 32
) -> RunSpec:
    return RunSpec(
        profile="smoke",
        model="resnet8",
        method="ce",
        method_params={"ce_weight": 1.0, "kd_weight": 0.0, "kd_temperature": 4.0},
        teacher=None,
        data=DataSpec(
            name="synthetic",
            options={
                "num_classes": 10,
                "image_size": 16,
                "train_size": train_size,
                "test_size": test_size,
            },
        ),
        train=TrainSpec(
            epochs=epochs,
            batch_size=batch_size,
            lr=0.05,
            milestones=(2,),
            lr_decay=0.1,
            momentum=0.9,
            nesterov=False,
            weight_decay=5e-4,
        ),
        seed=0,
    )


def tiny() -> RunSpec:
    return spec(epochs=1, train_size=16, test_size=8, batch_size=8)


def tb_view(run: RunDir) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard shows: every scalar curve of the run's event files, as (step, value)."""
    acc = EventAccumulator(str(run.tb_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tb_raw(run: RunDir) -> Counter:
    """How often each (tag, step) was written, over all event files of the run (no de-duplication)."""
    seen: Counter = Counter()
    for path in sorted(run.tb_dir.glob("events.out.tfevents.*")):
        for event in LegacyEventFileLoader(str(path)).Load():
            for value in event.summary.value:
                seen[value.tag, event.step] += 1
    return seen


def expected(history: list[EpochRecord]) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl's values per epoch at TensorBoard's precision (float32 scalars)."""
    curves_: dict[str, list[tuple[int, float]]] = {}
    for record in history:
        for name, value in curves.scalars(record).items():
            curves_.setdefault(name, []).append((record.epoch, float(np.float32(value))))
    return curves_


def test_curve_names_of_metrics_keys():
    record = {
        "epoch": 4,
        "lr": 0.1,
        "loss": 2.5,
        "loss_ce": 1.0,
        "loss_kd": 1.5,
        "train_top1": 40.0,
        "images_per_s": 900.0,
        "test_top1": 50.0,
        "test_top5": 90.0,
        "test_top1_aux": 45.0,
        "test_top5_aux": 88.0,
        "test_loss_l2": 0.25,
    }
    assert curves.scalars(EpochRecord.from_json(record)) == {
        "train/lr": 0.1,
        "loss/total": 2.5,
        "loss/ce": 1.0,
        "loss/kd": 1.5,
        "train/top1": 40.0,
        "train/images_per_s": 900.0,
        "test/top1": 50.0,
        "test/top5": 90.0,
        "test/top1_aux": 45.0,
        "test/top5_aux": 88.0,
        "test_loss/l2": 0.25,
    }
    init = EpochRecord.from_json({"phase": "init", "epoch": 2, "lr": 0.1, "loss": 3.0})
    assert curves.scalars(init) == {"init/train/lr": 0.1, "init/loss/total": 3.0}
    imported = {"epoch": 0, "phase": "imported", "test_top1": 70.0, "test_top5": 90.0}
    assert curves.scalars(EpochRecord.from_json(imported)) == {
        "test/top1": 70.0,
        "test/top5": 90.0,
    }


def test_log_to_values():
    assert curves.parse("tensorboard") == ("tensorboard",) and curves.parse("none") == ()
    assert curves.parse("tensorboard, wandb,mlflow,wandb") == ("tensorboard", "wandb", "mlflow")
    assert (
        curves.flag(()) == "none" and curves.flag(("tensorboard", "mlflow")) == "tensorboard,mlflow"
    )
    with pytest.raises(KdbenchError, match="unknown: tb"):
        curves.parse("tb,wandb")


def test_tensorboard_curves_equal_metrics_jsonl(tmp_path):
    s = spec()
    result = train.run(s, tmp_path, RunOptions(device="cpu"), show_progress=False)
    run = RunDir(tmp_path, s.run_id)
    history = run.read_metrics()
    view = tb_view(run)
    assert view == expected(history)
    # The curves researchers look for, read back against metrics.jsonl's own keys.
    for name, key in (
        ("loss/total", "loss"),
        ("loss/ce", "loss_ce"),
        ("test/top1", "test_top1"),
        ("test/top5", "test_top5"),
        ("train/lr", "lr"),
        ("train/images_per_s", "images_per_s"),
        ("train/top1", "train_top1"),
    ):
        assert view[name] == [(h.epoch, float(np.float32(h.values()[key]))) for h in history], name
    assert view["train/lr"] == [
        (1, pytest.approx(0.05)),
        (2, pytest.approx(0.05)),
        (3, pytest.approx(0.005)),
    ]  # milestone 2
    assert len(list(run.tb_dir.glob("events.out.tfevents.*"))) == 1 and result.epochs == 3


def run_until_killed(script: str, results: Path, s: RunSpec) -> int:
    """Run ``script`` (``SPEC``, ``RESULTS`` defined) in a subprocess that SIGKILLs itself; its return code."""
    prelude = (
        f"import os, signal\nfrom pathlib import Path\nfrom kdbench import train\nfrom kdbench.plan import RunSpec\n"
        f"SPEC = RunSpec.model_validate_json({s.model_dump_json()!r})\nRESULTS = Path({str(results)!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", prelude + script], env=env, capture_output=True, timeout=300
    ).returncode


KILLS = {
    # Inside epoch 2's first step: epoch 1 is checkpointed and recorded.
    "mid-epoch": """
        from kdbench.train import loop
        real = loop._train_epoch
        def dying_step(*args, **kw):
            os.kill(os.getpid(), signal.SIGKILL)
        def epoch(step, *rest, **kw):
            return real(dying_step if rest[4] == 2 else step, *rest, **kw)
        loop._train_epoch = epoch
    """,
    # After epoch 2's checkpoint, before metrics.jsonl lists it: the next attempt sends epoch 2.
    "between checkpoint and metrics": """
        from kdbench.store.run_dir import RunDir
        real = RunDir.write_metrics
        def write(self, history):
            if len(history) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, history)
        RunDir.write_metrics = write
    """,
}


@pytest.mark.parametrize("moment", list(KILLS))
def test_a_killed_and_resumed_run_shows_each_epoch_once(tmp_path, moment):
    s = spec()
    script = (
        textwrap.dedent(KILLS[moment])
        + "train.run(SPEC, RESULTS, train.RunOptions(device='cpu'), show_progress=False)\n"
    )
    assert run_until_killed(script, tmp_path, s) == -signal.SIGKILL
    run = RunDir(tmp_path, s.run_id)
    assert [h.epoch for h in run.read_metrics()] == [1] and not run.is_done()
    assert {step for _, step in tb_raw(run)} == {1}

    train.run(s, tmp_path, RunOptions(device="cpu"), show_progress=False)
    history = run.read_metrics()
    assert [h.epoch for h in history] == [1, 2, 3] and "resuming" in run.log_file.read_text()
    assert len(list(run.tb_dir.glob("events.out.tfevents.*"))) == 2  # one event file per attempt
    raw = tb_raw(run)
    assert set(raw.values()) == {1} and {step for _, step in raw} == {
        1,
        2,
        3,
    }  # every point written exactly once
    assert tb_view(run) == expected(history)


class FakeWandb(types.ModuleType):
    """The calls kdbench makes: ``run = wandb.init(...)``, ``run.log(data, step=)``, ``run.finish(exit_code=)``."""

    def __init__(self, fail_log_at: int | None = None):
        super().__init__("wandb")
        self.inits: list[dict] = []
        self.logged: list[tuple[int, dict]] = []
        self.finished: list[int] = []
        self.fail_log_at = fail_log_at

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return types.SimpleNamespace(
            log=self._log, finish=lambda exit_code=0: self.finished.append(exit_code)
        )

    def _log(self, data: dict, step: int | None = None) -> None:
        if self.fail_log_at is not None and len(self.logged) == self.fail_log_at:
            raise ConnectionError("wandb server unreachable")
        self.logged.append((step, data))


class FakeMlflow(types.ModuleType):
    """The calls kdbench makes: set_experiment, start_run (new or by run_id), log_metrics(step=), end_run(status=)."""

    def __init__(self, fail_start: bool = False):
        super().__init__("mlflow")
        self.experiments: list[str] = []
        self.starts: list[dict] = []
        self.logged: list[tuple[int, dict]] = []
        self.ended: list[str] = []
        self.fail_start = fail_start

    def set_experiment(self, name: str) -> None:
        self.experiments.append(name)

    def start_run(
        self, run_id: str | None = None, run_name: str | None = None, tags: dict | None = None
    ):
        if self.fail_start:
            raise ConnectionError("no tracking server")
        self.starts.append({"run_id": run_id, "run_name": run_name, "tags": tags})
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id or "mlflow-0001"))

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.logged.append((step, dict(metrics)))

    def end_run(self, status: str = "FINISHED") -> None:
        self.ended.append(status)


@pytest.fixture
def fakes(monkeypatch) -> tuple[FakeWandb, FakeMlflow]:
    for name in ("WANDB_PROJECT", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    wandb, mlflow = FakeWandb(), FakeMlflow()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    return wandb, mlflow


def test_wandb_and_mlflow_get_each_epoch_once_across_a_failed_and_resumed_attempt(
    tmp_path, fakes, monkeypatch
):
    wandb, mlflow = fakes
    s = spec()
    real = loop._train_epoch

    def failing(step, *rest, **kw):
        if rest[4] == 2:
            raise RuntimeError("injected failure in epoch 2")
        return real(step, *rest, **kw)

    monkeypatch.setattr(loop, "_train_epoch", failing)
    with pytest.raises(RuntimeError, match="injected"):
        train.run(
            s, tmp_path, RunOptions(device="cpu", loggers=("wandb", "mlflow")), show_progress=False
        )
    monkeypatch.setattr(loop, "_train_epoch", real)
    train.run(
        s, tmp_path, RunOptions(device="cpu", loggers=("wandb", "mlflow")), show_progress=False
    )

    run = RunDir(tmp_path, s.run_id)
    history = run.read_metrics()
    assert [h.epoch for h in history] == [
        1,
        2,
        3,
    ] and not run.tb_dir.exists()  # tensorboard was not asked for
    # W&B: one run per run id, resumed by the second attempt; its step (metrics.jsonl's line) only grows.
    assert [(i["id"], i["name"], i["resume"], i["project"]) for i in wandb.inits] == [
        (s.run_id, s.run_id, "allow", "kdbench")
    ] * 2
    assert wandb.inits[0]["config"] == s.model_dump(mode="json") and wandb.inits[0]["dir"] == str(
        run.path
    )
    assert wandb.logged == [
        (i, {**curves.scalars(h), "epoch": h.epoch}) for i, h in enumerate(history)
    ]
    assert wandb.finished == [1, 0]
    # MLflow: the second attempt reopens the first one's MLflow run (its id kept in the run directory).
    assert mlflow.experiments == ["kdbench", "kdbench"]
    assert (
        mlflow.starts[0]["run_name"] == s.run_id
        and mlflow.starts[0]["tags"]["kdbench.run_id"] == s.run_id
    )
    assert mlflow.starts[1] == {"run_id": "mlflow-0001", "run_name": None, "tags": None}
    assert mlflow.logged == [(h.epoch, curves.scalars(h)) for h in history]
    assert mlflow.ended == ["FAILED", "FINISHED"]


def test_a_missing_extra_is_one_clear_error_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    s = spec()
    with pytest.raises(
        KdbenchError,
        match=r"--log-to wandb needs the wandb package.*pip install 'kdbench\[wandb\]'",
    ):
        train.run(
            s,
            tmp_path,
            RunOptions(device="cpu", loggers=("tensorboard", "wandb")),
            show_progress=False,
        )
    assert not (tmp_path / "runs").exists()

    spec_file = tmp_path / "spec.json"
    atomic_write_json(spec_file, s.model_dump(mode="json"))
    out = CliRunner().invoke(
        cli.app,
        [
            "train",
            str(spec_file),
            "--results",
            str(tmp_path),
            "--device",
            "cpu",
            "--log-to",
            "tensorboard,wandb",
        ],
    )
    assert out.exit_code == 2 and out.output.count("error:") == 1 and "kdbench[wandb]" in out.output
    table = [
        "reproduce",
        "simkd-table1",
        "--profile",
        "smoke",
        "--pairs",
        "wrn40-2_wrn40-1",
        "--methods",
        "KD",
    ]
    out = CliRunner().invoke(cli.app, [*table, "--results", str(tmp_path), "--log-to", "wandb"])
    assert out.exit_code == 2 and out.output.count("error:") == 1 and "kdbench[wandb]" in out.output
    assert not (tmp_path / "runs").exists()


def test_failing_backends_never_fail_the_run(tmp_path, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_scalar", full_disk)
    monkeypatch.setitem(
        sys.modules, "wandb", FakeWandb(fail_log_at=1)
    )  # epoch 1 goes through, epoch 2 fails
    monkeypatch.setitem(sys.modules, "mlflow", FakeMlflow(fail_start=True))
    s = spec()
    result = train.run(
        s,
        tmp_path,
        RunOptions(device="cpu", loggers=("tensorboard", "wandb", "mlflow")),
        show_progress=False,
    )
    run = RunDir(tmp_path, s.run_id)
    assert (
        result.epochs == 3 and [h.epoch for h in run.read_metrics()] == [1, 2, 3] and run.is_done()
    )
    log = run.log_file.read_text()
    assert log.count("curves to tensorboard stopped (epoch 1: OSError") == 1
    assert (
        log.count("curves to wandb stopped (epoch 2: ConnectionError: wandb server unreachable)")
        == 1
    )
    assert log.count("curves to mlflow not recorded: it failed to start (ConnectionError") == 1
    assert log.count("WARNING") == 3 and len(sys.modules["wandb"].logged) == 1


@pytest.mark.e2e
def test_log_to_travels_through_the_worker_and_the_train_command(tmp_path, monkeypatch):
    """A fake mlflow package on the children's path records what they log: the worker's JSON request and
    `kdbench train --log-to` (the process-per-run command) both carry exactly the asked loggers."""
    stub = tmp_path / "stub" / "mlflow"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(
        textwrap.dedent("""
        import json, os
        def _record(*call):
            with open(os.environ["FAKE_MLFLOW_LOG"], "a") as fh:
                fh.write(json.dumps(call) + "\\n")
        def set_experiment(name): _record("set_experiment", name)
        class _Info:
            run_id = "fake"
        class _Active:
            info = _Info()
        def start_run(run_id=None, run_name=None, tags=None):
            _record("start_run", run_name)
            return _Active()
        def log_metrics(metrics, step=None): _record("log_metrics", step, metrics)
        def end_run(status="FINISHED"): _record("end_run", status)
    """)
    )
    calls = tmp_path / "mlflow-calls.jsonl"
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join([str(stub.parent), str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    monkeypatch.setenv("FAKE_MLFLOW_LOG", str(calls))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    by_worker = spec(epochs=1, train_size=16, test_size=8, batch_size=8)
    by_command = spec(epochs=2, train_size=16, test_size=8, batch_size=8)
    launchers = {
        by_worker.run_id: SlotWorkers(RunOptions(loggers=("mlflow",))),
        by_command.run_id: ProcessPerRun(
            partial(train_command, options=RunOptions(loggers=("mlflow",)))
        ),
    }
    for s in (by_worker, by_command):
        outcomes = LocalExecutor([Slot("cpu")], launchers[s.run_id]).execute([s], tmp_path)
        assert outcomes[s.run_id].status == "done", outcomes[s.run_id].message
    seen = [json.loads(line) for line in calls.read_text().splitlines()]
    for s in (by_worker, by_command):
        history = RunDir(tmp_path, s.run_id).read_metrics()
        assert not RunDir(
            tmp_path, s.run_id
        ).tb_dir.exists()  # only what was asked: not the default tensorboard
        start = seen.index(["start_run", s.run_id])
        logged = [c for c in seen[start : start + 2 + len(history)] if c[0] == "log_metrics"]
        assert logged == [["log_metrics", h.epoch, curves.scalars(h)] for h in history]
    assert seen.count(["end_run", "FINISHED"]) == 2


def test_log_to_travels_through_slurm_jobs_and_nproc(tmp_path, monkeypatch, fakes):
    _, mlflow = fakes
    s = tiny()
    rundir = RunDir(tmp_path, s.run_id)
    atomic_write_json(rundir.spec_file, s.model_dump(mode="json"))
    options = RunOptions(device="cpu", loggers=("mlflow",)).to_json()
    result = slurm_jobs.TrainJob(str(tmp_path), 1, options)(
        s.run_id
    )  # the job's own call, in this process
    assert result.epochs == 1 and mlflow.logged == [(1, curves.scalars(rundir.read_metrics()[0]))]
    assert not rundir.tb_dir.exists()

    commands = []
    monkeypatch.setattr(
        slurm_jobs.subprocess,
        "run",
        lambda command, check: commands.append(command) or subprocess.CompletedProcess(command, 1),
    )
    with pytest.raises(KdbenchError):
        slurm_jobs.TrainJob(str(tmp_path / "other"), 2, options)(
            s.run_id
        )  # a multi-GPU job: kdbench train --nproc 2
    assert commands and commands[0][commands[0].index("--log-to") + 1] == "mlflow"

    ranks = []
    monkeypatch.setattr(
        cli, "_train_processes", lambda spec, run_id, results, nproc, options: ranks.append(options)
    )
    out = CliRunner().invoke(
        cli.app,
        [
            "train",
            str(rundir.spec_file),
            "--results",
            str(tmp_path),
            "--nproc",
            "2",
            "--log-to",
            "mlflow,tensorboard",
        ],
    )
    assert out.exit_code == 0, out.output
    assert ranks[0][ranks[0].index("--log-to") + 1] == "mlflow,tensorboard"
