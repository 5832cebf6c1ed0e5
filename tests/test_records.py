"""The typed records of a run (kdbench/store/records.py): their on-disk layout, versions, and old results dirs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from kdbench.io import CorruptedFile
from kdbench.results.collect import collect
from kdbench.store.records import (
    SCHEMA_VERSION,
    EpochRecord,
    RunResult,
    TopK,
    UnknownSchemaVersion,
)
from kdbench.store.run_dir import RunDir
from typer.testing import CliRunner

from planted import finished

LEGACY = (
    Path(__file__).parent / "data" / "legacy-v0"
)  # written by kdbench e1fec24 (schema version 0)
MAIN_EPOCH = {
    "epoch": 3,
    "lr": 0.05,
    "loss": 2.5,
    "loss_ce": 1.0,
    "loss_simkd": 1.5,
    "train_top1": 40.0,
    "images_per_s": 900.0,
    "test_top1": 50.0,
    "test_top5": 90.0,
    "test_top1_student_classifier": 45.0,
    "test_top5_student_classifier": 88.0,
    "test_loss_simkd": 0.25,
}


@pytest.fixture
def legacy(tmp_path) -> Path:
    """A copy of the legacy results directory (its files byte for byte, so their checksums hold)."""
    shutil.copytree(LEGACY / "results", tmp_path / "results")
    return tmp_path / "results"


def test_an_epoch_record_decodes_the_structure_its_keys_encode():
    record = EpochRecord.from_json(MAIN_EPOCH)
    assert record == EpochRecord(
        epoch=3,
        lr=0.05,
        loss=2.5,
        losses={"ce": 1.0, "simkd": 1.5},
        train_top1=40.0,
        images_per_s=900.0,
        test={"": TopK(top1=50.0, top5=90.0), "student_classifier": TopK(top1=45.0, top5=88.0)},
        test_losses={"simkd": 0.25},
    )
    assert record.is_main and (record.test_top1, record.test_top5) == (50.0, 90.0)
    # Written with the same keys and the version; read back equal.
    assert record.to_json() == {**MAIN_EPOCH, "schema_version": SCHEMA_VERSION}
    assert EpochRecord.from_json(record.to_json()) == record


def test_records_outside_the_main_schedule_keep_their_phase_and_only_what_they_measured():
    init = EpochRecord.from_json(
        {"phase": "init", "epoch": 2, "lr": 0.1, "loss": 3.0, "loss_ab": 3.0}
    )
    assert init.phase == "init" and not init.is_main and init.test == {}
    assert init.to_json() == {
        "phase": "init",
        "epoch": 2,
        "lr": 0.1,
        "loss": 3.0,
        "loss_ab": 3.0,
        "schema_version": SCHEMA_VERSION,
    }
    imported = EpochRecord.from_json(
        {"epoch": 0, "phase": "imported", "test_top1": 70.0, "test_top5": 90.0}
    )
    assert imported.phase == "imported" and imported.lr is None and imported.test_top1 == 70.0
    assert (
        "phase" not in EpochRecord.from_json(MAIN_EPOCH).to_json()
    )  # as before: main epochs have none


@pytest.mark.parametrize(
    "line, why",
    [
        ({**MAIN_EPOCH, "test_top1x": 1.0}, "unknown key 'test_top1x'"),
        ({**MAIN_EPOCH, "accuracy": 1.0}, "unknown key 'accuracy'"),
        ({"epoch": 1, "test_top1": 50.0}, "test.''.top5: Field required"),
        ({**MAIN_EPOCH, "phase": "warmup"}, "phase"),
        ({**MAIN_EPOCH, "schema_version": "1"}, "schema_version '1', not a version number"),
    ],
)
def test_an_invalid_metrics_line_is_refused_naming_the_file_the_line_and_the_repair(
    tmp_path, line, why
):
    run = RunDir(tmp_path, "r")
    run.path.mkdir(parents=True)
    run.write_metrics([EpochRecord.from_json(MAIN_EPOCH)])
    run.write_verified(run.metrics_file, lambda fh: fh.write((json.dumps(line) + "\n").encode()))
    with pytest.raises(CorruptedFile) as exc:
        run.read_metrics()
    message = str(exc.value)
    assert f"{run.metrics_file} is not a valid kdbench record (line 1)" in message
    assert why in message and f"Repair: rm -f {run.metrics_file}" in message


def test_a_result_round_trips_and_keeps_its_keys():
    result = finished(
        run_id="r", kdbench_commit=None, compute={"precision": "bf16", "compiled": True}
    )
    written = result.to_json()
    assert written["schema_version"] == SCHEMA_VERSION and written["kdbench_commit"] is None
    assert "kept" not in written and written["compute"] == {"precision": "bf16", "compiled": True}
    assert RunResult.from_json(written) == result
    assert result.trained_precision == "bf16"


def test_a_result_with_a_misspelt_key_is_refused_when_it_is_written():
    with pytest.raises(ValueError, match="best_top_1"):
        RunResult.from_json({**finished().to_json(), "best_top_1": 1.0})


def test_a_result_from_a_newer_kdbench_says_so_and_what_to_do(tmp_path):
    run = RunDir(tmp_path, "r")
    run.path.mkdir(parents=True)
    newer = {**finished().to_json(), "schema_version": SCHEMA_VERSION + 1}
    run.write_verified(run.result_file, lambda fh: fh.write(json.dumps(newer).encode()))
    with pytest.raises(UnknownSchemaVersion) as exc:
        run.result()
    message = str(exc.value)
    assert (
        f"run r: {run.result_file}: the result has schema version {SCHEMA_VERSION + 1}" in message
    )
    assert "Upgrade kdbench" in message


def test_a_result_that_is_not_one_is_refused_as_corrupted(tmp_path):
    run = RunDir(tmp_path, "r")
    run.path.mkdir(parents=True)
    run.write_verified(run.result_file, lambda fh: fh.write(b'{"best_top1": 1.0}'))
    with pytest.raises(CorruptedFile, match="epochs: Field required") as exc:
        run.result()
    assert f"Repair: rm -f {run.result_file}" in str(exc.value)


def test_the_legacy_results_dir_reads_into_the_models_and_is_never_rewritten(legacy):
    before = {p: p.read_bytes() for p in legacy.rglob("*") if p.is_file()}
    simkd = RunDir(legacy, "simkd-resnet8-s0-b3bfd7c459fa")
    result = simkd.verified_result()  # its checksums hold
    assert simkd.unverified() == ""
    assert result.heads["student_classifier"].last_top1 == 12.5
    assert result.test_losses["simkd"].last == pytest.approx(5.709814548492432)
    assert result.trained_precision == "fp32" and result.compute.teacher_cache is False
    history = simkd.read_metrics()
    assert [h.epoch for h in history] == [1, 2] and simkd.epochs_done() == 2
    assert history[-1].test["student_classifier"].top1 == 12.5
    assert set(history[-1].losses) == {"simkd"} and history[-1].lr == pytest.approx(0.001)
    # Each legacy line is what the record writes, less the version.
    lines = [json.loads(line) for line in simkd.metrics_file.read_text().splitlines()]
    assert [{**line, "schema_version": SCHEMA_VERSION} for line in lines] == [
        h.to_json() for h in history
    ]
    collect(legacy)
    assert {p: p.read_bytes() for p in legacy.rglob("*") if p.is_file()} == before


def test_collect_reads_the_legacy_results_dir_as_kdbench_e1fec24_did(legacy):
    table = collect(legacy)
    assert {k: str(v) for k, v in table.dtypes.items()} == json.loads(
        (LEGACY / "collect-dtypes.json").read_text()
    )
    expected = pd.read_json(LEGACY / "collect.json", orient="records", dtype=False)
    assert table.to_json(orient="records", double_precision=15) == expected.to_json(
        orient="records", double_precision=15
    )


@pytest.mark.parametrize(
    "args, recorded",
    [
        (["compare", "{results}", "--format", "csv"], "compare.csv"),
        (["compare", "{results}", "--format", "csv", "--metric", "last"], "compare-last.csv"),
        (["compare", "{results}"], "compare.txt"),
        (["status", str(LEGACY / "tiny.yaml"), "--results", "{results}"], "status.txt"),
    ],
)
def test_compare_and_status_show_the_legacy_results_dir_as_kdbench_e1fec24_did(
    legacy, args, recorded
):
    from kdbench.cli import app

    out = CliRunner().invoke(app, [a.format(results=legacy) for a in args], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert out.output.replace(str(legacy), "RESULTS") == (LEGACY / recorded).read_text()


def test_a_new_run_writes_the_legacy_keys_and_the_version(tmp_path):
    from kdbench import train
    from kdbench.plan import DataSpec, RunSpec, TrainSpec

    spec = RunSpec(
        profile="smoke",
        model="resnet8",
        method="ce",
        method_params={"ce_weight": 1.0, "kd_weight": 0.0, "kd_temperature": 4.0},
        teacher=None,
        data=DataSpec(
            name="synthetic",
            options={"num_classes": 4, "image_size": 16, "train_size": 16, "test_size": 8},
        ),
        train=TrainSpec(
            epochs=2,
            batch_size=8,
            lr=0.1,
            milestones=(),
            lr_decay=0.1,
            momentum=0.9,
            nesterov=False,
            weight_decay=0.0,
        ),
        seed=0,
    )
    result = train.run(
        spec, tmp_path, train.RunOptions(device="cpu", loggers=()), show_progress=False
    )
    run = RunDir(tmp_path, spec.run_id)
    assert run.result() == result and result.epochs == 2
    old = RunDir(LEGACY / "results", "ce-resnet8-s0-d2531b7cc866")
    written = json.loads(run.result_file.read_text())
    assert set(written) == set(json.loads(old.result_file.read_text())) | {"schema_version"}
    assert set(written["compute"]) == set(json.loads(old.result_file.read_text())["compute"])
    lines = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    old_lines = [json.loads(line) for line in old.metrics_file.read_text().splitlines()]
    assert [set(line) for line in lines] == [set(line) | {"schema_version"} for line in old_lines]
    assert [h.epoch for h in run.read_metrics()] == [1, 2] and run.epochs_done() == 2
