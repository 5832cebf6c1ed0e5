"""Fault injection (issue 7): each test causes one real fault and checks what survives it.

Kills are real SIGKILLs of real processes, corruptions are real edits of stored files, a full or
read-only disk is a real tmpfs (root only; skipped otherwise), and concurrent reproductions are two
real `kdbench reproduce` processes. Specs are smoke-sized: a few seconds each.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from kdbench import train
from kdbench.execute.local.executor import LocalExecutor, ProcessPerRun, Slot
from kdbench.io import CorruptedFile, WriteFailed, atomic_write_json, sha256_file
from kdbench.plan import (
    SMOKE_EPOCHS,
    SMOKE_TEACHER_EPOCHS,
    DataSpec,
    RunSpec,
    TeacherRef,
    TrainSpec,
)
from kdbench.results.collect import collect
from kdbench.store.records import RunResult
from kdbench.store.run_dir import RunDir, RunLocked
from kdbench.train.options import RunOptions

# Every test here starts real processes (kills, two reproductions, full disks): end to end.
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
RECIPE = "kdbench/recipes/simkd/table1.yaml"
PAIR = "wrn40-2_wrn40-1"  # the smallest networks of the table's smoke plan


def spec(epochs: int = 3, seed: int = 0, lr_decay: float = 0.1, **train_fields) -> RunSpec:
    return RunSpec(
        profile="smoke",
        model="resnet8",
        method="ce",
        method_params={"ce_weight": 1.0, "kd_weight": 0.0, "kd_temperature": 4.0},
        teacher=None,
        data=DataSpec(
            name="synthetic",
            options={"num_classes": 10, "image_size": 32, "train_size": 128, "test_size": 32},
        ),
        train=TrainSpec(
            **{
                "epochs": epochs,
                "batch_size": 32,
                "lr": 0.05,
                "milestones": (2,),
                "lr_decay": lr_decay,
                "momentum": 0.9,
                "nesterov": False,
                "weight_decay": 5e-4,
                **train_fields,
            }
        ),
        seed=seed,
    )


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def run_until_killed(script: str, results: Path, s: RunSpec) -> int:
    """Run ``script`` (Python; ``SPEC``, ``RESULTS`` defined) in a subprocess that SIGKILLs itself; its return code."""
    prelude = (
        f"from pathlib import Path\nfrom kdbench import train\nfrom kdbench.plan import RunSpec\n"
        f"SPEC = RunSpec.model_validate_json({s.model_dump_json()!r})\nRESULTS = Path({str(results)!r})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(script)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode


def fresh_result(results: Path, s: RunSpec) -> RunResult:
    return train.run(s, results, RunOptions(device="cpu"), show_progress=False)


# --- killed runs -------------------------------------------------------------------------------


def test_sigkill_mid_epoch_resumes_and_keeps_finished_epochs(tmp_path):
    """SIGKILL in the middle of epoch 2 (inside a training step): epoch 1 is kept, the rerun resumes after it."""
    s = spec()
    code = run_until_killed(
        """
        import os, signal
        from kdbench.train import loop
        real = loop._train_epoch
        def dying_step(*args, **kw):
            os.kill(os.getpid(), signal.SIGKILL)
        def epoch(step, *rest, **kw):  # rest[4] is the epoch number: die inside epoch 2's first step
            return real(dying_step if rest[4] == 2 else step, *rest, **kw)
        loop._train_epoch = epoch
        train.run(SPEC, RESULTS, train.RunOptions(device="cpu"), show_progress=False)
    """,
        tmp_path,
        s,
    )
    assert code == -signal.SIGKILL
    run = RunDir(tmp_path, s.run_id)
    before = run.read_metrics()
    assert [h.epoch for h in before] == [1] and not run.is_done()

    result = fresh_result(tmp_path, s)
    assert "resuming" in run.log_file.read_text() and result.epochs == 3
    after = run.read_metrics()
    assert [h.epoch for h in after] == [1, 2, 3] and after[0] == before[0]


@pytest.mark.parametrize(
    "moment", ["while writing the temp file", "after the checksum, before the rename"]
)
def test_sigkill_mid_checkpoint_write_never_reads_a_half_file(tmp_path, moment):
    """A kill during epoch 2's checkpoint write: epoch 1's checkpoint stays valid and the rerun resumes from it;
    the half-written temp file is removed, never read."""
    s = spec()
    hooks = {
        "while writing the temp file": """
            import io, torch
            real_save = torch.save
            def save(obj, fh, *a, **kw):
                if isinstance(obj, dict) and obj.get("epoch") == 2:
                    buf = io.BytesIO(); real_save(obj, buf, *a, **kw)
                    fh.write(buf.getvalue()[: len(buf.getvalue()) // 2]); fh.flush(); os.fsync(fh.fileno())
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_save(obj, fh, *a, **kw)
            torch.save = save
        """,
        "after the checksum, before the rename": """
            from kdbench import io as store
            real_replace, seen = os.replace, []
            def replace(src, dst):
                if str(dst).endswith("checkpoint.pt"):
                    seen.append(dst)
                    if len(seen) == 2:
                        os.kill(os.getpid(), signal.SIGKILL)
                return real_replace(src, dst)
            store.os.replace = replace
        """,
    }
    script = (
        "import os, signal\n"
        + textwrap.dedent(hooks[moment])
        + "train.run(SPEC, RESULTS, train.RunOptions(device='cpu'), show_progress=False)\n"
    )
    assert run_until_killed(script, tmp_path, s) == -signal.SIGKILL
    run = RunDir(tmp_path, s.run_id)
    assert list(run.path.glob(".checkpoint.pt.*.tmp")), "the kill left a temp file behind"
    assert (
        run.load_torch(run.checkpoint_file)["epoch"] == 1
    )  # the checkpoint in place is still epoch 1's, and verifies

    result = fresh_result(tmp_path, s)
    assert "resuming" in run.log_file.read_text() and "after epoch 1" in run.log_file.read_text()
    assert result.epochs == 3 and not list(run.path.glob(".*.tmp"))


# --- corrupted files ----------------------------------------------------------------------------


def finished(tmp_path: Path, epochs: int = 2) -> tuple[RunSpec, RunDir, dict]:
    s = spec(epochs=epochs)
    result = fresh_result(tmp_path, s)
    return s, RunDir(tmp_path, s.run_id), result


def follow_repair(message: str) -> None:
    """Run the `rm -f ...` command that an error message gives (the message is what the user acts on)."""
    command = message.split("Repair: ", 1)[1].split(" and run the same command again")[0]
    assert command.startswith("rm -f ")
    for path in shlex.split(command)[2:]:
        Path(path).unlink(missing_ok=True)


def test_truncated_checkpoint_is_refused_then_the_run_is_redone(tmp_path):
    """An interrupted run whose checkpoint was truncated: it fails naming the run and the repair, never resumes from it."""
    s, run, _ = finished(tmp_path)
    run.result_file.unlink()  # as if killed after the last checkpoint, before result.json
    run.model_file.unlink()
    with open(run.checkpoint_file, "r+b") as fh:
        fh.truncate(run.checkpoint_file.stat().st_size // 3)

    with pytest.raises(CorruptedFile) as err:
        fresh_result(tmp_path, s)
    message = str(err.value)
    assert s.run_id in message and str(run.checkpoint_file) in message and "rm -f" in message
    failure = run.failure()
    assert failure["error"] == "CorruptedFile" and failure["last_good_epoch"] == 2
    row = collect(tmp_path).set_index("run_id").loc[s.run_id]
    assert row["status"] == "failed" and "rm -f" in row["message"]

    follow_repair(message)
    result = fresh_result(tmp_path, s)
    assert (
        result.epochs == 2 and run.log_file.read_text().count("epochs 1..2") == 2
    )  # restarted from scratch


def test_interrupted_run_with_corrupted_metrics_heals_from_its_checkpoint(tmp_path):
    """metrics.jsonl is a copy of the checkpoint's history: an unfinished run rewrites it on resume."""
    s, run, result = finished(tmp_path)
    run.result_file.unlink()
    run.metrics_file.write_text('{"epoch": 1, "test_top1": 99.0}\n')  # valid JSON, wrong content
    with pytest.raises(CorruptedFile):
        run.read_metrics()
    assert fresh_result(tmp_path, s).best_top1 == result.best_top1
    assert [h.epoch for h in run.read_metrics()] == [1, 2]


def _flip_a_digit(path: Path) -> None:
    text = path.read_text()
    i = next(i for i, c in enumerate(text) if c.isdigit() and c != "9")
    path.write_text(
        text[:i] + str(int(text[i]) + 1) + text[i + 1 :]
    )  # still valid JSON: only the checksum can tell


@pytest.mark.parametrize(
    "damage", ["result.json: a digit changed", "metrics.jsonl: truncated", "model.pt: truncated"]
)
def test_corrupted_finished_run_is_never_read_as_a_number(tmp_path, damage):
    s, run, result = finished(tmp_path)
    name = damage.split(":")[0]
    path = run.path / name
    if "digit" in damage:
        _flip_a_digit(path)
    else:
        with open(path, "r+b") as fh:
            fh.truncate(path.stat().st_size - 7)

    row = collect(tmp_path).set_index("run_id").loc[s.run_id]
    if (
        name == "model.pt"
    ):  # the numbers are intact; the weights are refused where they are loaded (as a teacher)
        assert row["status"] == "done"
        with pytest.raises(CorruptedFile, match=s.run_id):
            train.load_trained_model(tmp_path, s.run_id, s.model, 10)
        message = str(pytest.raises(CorruptedFile, run.load_torch, run.model_file).value)
    else:
        assert (
            row["status"] == "corrupted" and row["best_top1"] != row["best_top1"]
        )  # NaN: no number
        message = row["message"]
        assert s.run_id in message and str(path) in message and "rm -f" in message
        with pytest.raises(CorruptedFile):
            fresh_result(tmp_path, s)  # a rerun does not trust it either
        outcomes = LocalExecutor([Slot("cpu")], ProcessPerRun(lambda *a: ["false"])).execute(
            [s], tmp_path
        )
        assert (
            outcomes[s.run_id].status == "failed" and "rm -f" in outcomes[s.run_id].message
        )  # not "reused"

    follow_repair(message)
    redone = fresh_result(
        tmp_path, s
    )  # resumes from the intact checkpoint: the same numbers, no retraining
    assert redone.best_top1 == result.best_top1 and redone.epochs == 2
    assert collect(tmp_path).set_index("run_id").loc[s.run_id, "status"] == "done"


# --- failed writes ------------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a real file system that can fill up or turn read-only (needs root)."""
    mount = tmp_path / "results"
    mount.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _digests(run: RunDir) -> dict[str, str]:
    return {
        p.name: sha256_file(p)
        for p in sorted(run.path.iterdir())
        if p.is_file() and p.name != ".lock"
    }


def test_disk_full_fails_clearly_and_damages_nothing(tmpfs):
    done, run = spec(epochs=1), RunDir(tmpfs, spec(epochs=1).run_id)
    fresh_result(tmpfs, done)
    kept = _digests(run)
    filler = tmpfs / "filler"
    with (
        open(filler, "wb", buffering=0) as fh,
        pytest.raises(OSError),
    ):  # fill the disk to the last block
        while True:
            fh.write(b"\0" * 65536)

    other = spec(epochs=1, seed=1)
    with pytest.raises(WriteFailed) as err:
        fresh_result(tmpfs, other)
    assert "No space left on device" in str(err.value) and str(
        RunDir(tmpfs, other.run_id).path
    ) in str(err.value)
    assert "free disk space" in str(err.value)
    assert (
        _digests(run) == kept
        and collect(tmpfs).set_index("run_id").loc[done.run_id, "status"] == "done"
    )

    filler.unlink()  # space freed: the same command now trains it
    assert fresh_result(tmpfs, other).epochs == 1


def test_read_only_results_fail_clearly_and_finished_runs_stay_readable(tmpfs):
    done = spec(epochs=1)
    fresh_result(tmpfs, done)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    with pytest.raises(WriteFailed) as err:
        fresh_result(tmpfs, spec(epochs=1, seed=1))
    assert (
        "Read-only file system" in str(err.value)
        and str(tmpfs) in str(err.value)
        and "writable" in str(err.value)
    )
    assert fresh_result(tmpfs, done).epochs == 1  # a finished run is still served, read-only
    assert collect(tmpfs).set_index("run_id").loc[done.run_id, "status"] == "done"


# --- divergence ---------------------------------------------------------------------------------


def test_diverging_run_is_failed_with_the_reason_and_last_good_epoch(tmp_path):
    s = spec(
        epochs=3, lr_decay=1e20
    )  # the learning rate after milestone 2 blows the weights up in epoch 3
    with pytest.raises(train.TrainingDiverged):
        fresh_result(tmp_path, s)
    run = RunDir(tmp_path, s.run_id)
    failure = run.failure()
    assert (
        failure["error"] == "TrainingDiverged"
        and failure["last_good_epoch"] == 2
        and "non-finite" in failure["message"]
    )
    row = collect(tmp_path).set_index("run_id").loc[s.run_id]
    assert row["status"] == "failed" and row["best_top1"] != row["best_top1"]  # NaN, never a number


# --- whole tables -------------------------------------------------------------------------------

FAULT_HOOK = '''
"""Test hook: CUDA's out-of-memory error from the training step of every run of method $KDBENCH_TEST_OOM."""
import os
if os.environ.get("KDBENCH_TEST_OOM"):
    import torch
    from kdbench import methods
    def forward_train(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
    methods.get(os.environ["KDBENCH_TEST_OOM"]).forward_train = forward_train
'''


def reproduce(
    results: Path, methods: str, oom: str | None = None, hook_dir: Path | None = None
) -> subprocess.Popen:
    extra = {}
    if oom:
        assert hook_dir is not None
        hook_dir.mkdir(exist_ok=True)
        (hook_dir / "sitecustomize.py").write_text(FAULT_HOOK)
        extra = {"KDBENCH_TEST_OOM": oom, "PYTHONPATH": f"{hook_dir}{os.pathsep}{REPO}"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kdbench",
            "reproduce",
            RECIPE,
            "--profile",
            "smoke",
            "--pairs",
            PAIR,
            "--methods",
            methods,
            "--results",
            str(results),
            "--device",
            "cpu",
        ],
        cwd=REPO,
        env={**env(), **extra},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_reproduce_processes_train_every_run_once(tmp_path):
    procs = [reproduce(tmp_path, "kd"), reproduce(tmp_path, "kd")]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2  # the teacher and the KD student
    for path in runs:
        log = (path / "train.log").read_text()
        assert log.count(f"run {path.name}: ") == 1, (
            f"{path.name} was trained more than once:\n{log}"
        )
        expected = (
            SMOKE_TEACHER_EPOCHS if path.name.startswith("ce-") else SMOKE_EPOCHS
        )  # the teacher, the student
        assert json.loads((path / "result.json").read_text())["epochs"] == expected
    assert all(r["status"] == "done" for r in collect(tmp_path).to_dict("records"))


def test_a_trainer_leaves_the_executors_unlocked_writes_alone(tmp_path):
    """The race behind a flaky concurrent reproduction: a trainer that takes the lock clears temps of killed
    writers, but an executor writes spec.json without the lock, maybe at that very moment."""
    run = RunDir(tmp_path, spec().run_id)
    run.path.mkdir(parents=True)
    killed = [
        run.path / f".{name}.k1ll3d.tmp"
        for name in (
            "checkpoint.pt",
            "model.pt",
            "metrics.jsonl",
            "result.json",
            "failed.json",
            "checksums.json",
            "launch.json",
        )
    ]
    in_flight = [run.path / ".spec.json.wr1t1ng.tmp"]
    for path in killed + in_flight:
        path.write_bytes(b"partial")
    with run.lock():
        assert run.remove_stale_temps() == sorted(killed)
    assert all(p.exists() for p in in_flight) and not any(p.exists() for p in killed)


def test_only_the_process_that_trains_a_run_records_where_it_runs(tmp_path):
    """launch.json (what `kdbench status` shows) is written under the run lock: a process that lost the race
    for the run, as the second of two concurrent reproductions does, cannot overwrite it."""
    s = spec(epochs=1)
    run = RunDir(tmp_path, s.run_id)
    with run.lock(), pytest.raises(RunLocked):
        train.run(s, tmp_path, RunOptions(device="cpu", slot="cpu1"), show_progress=False)
    assert not run.launch_file.exists()
    train.run(s, tmp_path, RunOptions(device="cpu", slot="cpu0"), show_progress=False)
    launch = json.loads(run.launch_file.read_text())
    assert launch["slot"] == "cpu0" and launch["epochs_before"] == 0


def _compare_cells(results: Path):
    from kdbench.results.compare import compare

    [table] = compare(results, "simkd-table1")
    cells = table.cells
    return cells[cells["column"] == PAIR].set_index("method")


def test_out_of_memory_fails_its_cell_and_the_table_goes_on(tmp_path):
    """KD runs out of memory (injected); the teacher and the Student row finish; compare shows KD as failed."""
    proc = reproduce(tmp_path / "results", "kd,ce", oom="kd", hook_dir=tmp_path / "hook")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0 and "out of memory" in out
    failed = [
        RunDir(tmp_path / "results", p.name) for p in (tmp_path / "results" / "runs").glob("kd-*")
    ]
    assert len(failed) == 1
    failure = failed[0].failure()
    assert (
        failure["error"] == "OutOfMemoryError"
        and failure["last_good_epoch"] == 0
        and "--runs-per-gpu 1" in failure["message"]
    )

    cells = _compare_cells(tmp_path / "results")
    assert (
        cells.loc["kd", "status"] == "failed"
        and cells.loc["kd", "ours_mean"] != cells.loc["kd", "ours_mean"]
    )  # NaN
    assert cells.loc["ce", "status"] == "done" and cells.loc["ce", "n"] == 1


def test_failed_teacher_skips_its_students_and_says_why(tmp_path):
    proc = reproduce(tmp_path / "results", "kd", oom="ce", hook_dir=tmp_path / "hook")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0
    [teacher] = (tmp_path / "results" / "runs").glob("ce-*")
    assert not list((tmp_path / "results" / "runs").glob("kd-*"))  # never started
    assert "skipped" in out and f"teacher run {teacher.name}" in " ".join(out.split())
    assert (
        _compare_cells(tmp_path / "results").loc["kd", "ours_mean"]
        != _compare_cells(tmp_path / "results").loc["kd", "ours_mean"]
    )


# --- run identity -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},
        {"model": "resnet14"},
        {"method": "kd"},
        {"method_params": {"ce_weight": 0.5, "kd_weight": 0.0, "kd_temperature": 4.0}},
        {"profile": "ci"},
        {"teacher": TeacherRef(model="resnet32", run_id="ce-resnet32-s0-000000000000")},
        {
            "data": DataSpec(
                name="synthetic",
                options={"num_classes": 10, "image_size": 32, "train_size": 256, "test_size": 32},
            )
        },
        {"train.epochs": 4},
        {"train.lr": 0.1},
        {"train.batch_size": 64},
        {"train.milestones": (1,)},
        {"train.lr_decay": 0.2},
        {"train.momentum": 0.5},
        {"train.weight_decay": 1e-4},
        {"train.nesterov": True},
    ],
)
def test_any_change_that_alters_the_result_changes_the_run_id(change):
    base = spec()
    ((key, value),) = change.items()
    if key.startswith("train."):
        changed = base.model_copy(update={"train": base.train.model_copy(update={key[6:]: value})})
    else:
        changed = base.model_copy(update={key: value})
    assert RunSpec.model_validate(changed.model_dump(mode="json")).run_id != base.run_id


def test_a_run_whose_spec_no_longer_matches_its_id_is_refused(tmp_path):
    s, run, _ = finished(tmp_path, epochs=1)
    edited = {
        **json.loads(run.spec_file.read_text()),
        "seed": 7,
    }  # as if a recipe value had been edited in place
    atomic_write_json(run.spec_file, edited)

    with pytest.raises(CorruptedFile, match=f"run {s.run_id}: .*spec.json describes run"):
        fresh_result(tmp_path, s)
    row = collect(tmp_path).set_index("run_id").loc[s.run_id]
    assert row["status"] == "corrupted" and row["best_top1"] != row["best_top1"]
    outcomes = LocalExecutor([Slot("cpu")], ProcessPerRun(lambda *a: ["false"])).execute(
        [s], tmp_path
    )
    assert outcomes[s.run_id].status == "failed" and "describes run" in outcomes[s.run_id].message
