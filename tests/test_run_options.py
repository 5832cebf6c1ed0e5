"""RunOptions, the one form of a run's options: `kdbench train` flags and JSON, round trips for every field,
the CLI's own parse of the flags, and clear errors for bad input."""

from __future__ import annotations

import dataclasses
import json

import pytest
from kdbench import cli, train
from kdbench.errors import KdbenchError
from kdbench.plan import DataSpec, RunSpec, TrainSpec
from kdbench.train import curves
from kdbench.train.compute import ComputeOptions
from kdbench.train.options import RunOptions
from typer.testing import CliRunner

from planted import finished

# Every field away from its default (and each tri-state switch both ways): a field a round trip loses fails here.
CHANGED = [
    RunOptions(device="cuda:1"),
    RunOptions(device="cpu", data_dir="/data/kd"),
    RunOptions(loader="tensor"),
    RunOptions(workers=3),
    RunOptions(slot="gpu0.1"),
    RunOptions(loggers=()),
    RunOptions(loggers=("mlflow", "tensorboard")),
    RunOptions(compute=ComputeOptions(precision="faithful")),
    RunOptions(compute=ComputeOptions(channels_last=True)),
    RunOptions(compute=ComputeOptions(channels_last=False)),
    RunOptions(compute=ComputeOptions(compile=True, compile_mode="reduce-overhead")),
    RunOptions(compute=ComputeOptions(compile=False)),
    RunOptions(compute=ComputeOptions(teacher_cache="off")),
    RunOptions(
        device="cuda",
        data_dir="d",
        loader="ffcv",
        workers=8,
        compute=ComputeOptions("bf16", True, True, "on", "reduce-overhead"),
        slot="cuda0",
        loggers=("wandb",),
    ),
]


def test_the_examples_change_every_field():
    default = RunOptions()
    changed = {
        f.name
        for o in CHANGED
        for f in dataclasses.fields(o)
        if getattr(o, f.name) != getattr(default, f.name)
    }
    assert changed == {f.name for f in dataclasses.fields(RunOptions)}
    compute = {
        f.name
        for o in CHANGED
        for f in dataclasses.fields(ComputeOptions)
        if getattr(o.compute, f.name) != getattr(default.compute, f.name)
    }
    assert compute == {f.name for f in dataclasses.fields(ComputeOptions)}


@pytest.mark.parametrize("options", [RunOptions(), *CHANGED])
def test_argv_round_trip(options):
    assert RunOptions.from_argv(options.to_argv()) == options


@pytest.mark.parametrize("options", [RunOptions(), *CHANGED])
def test_json_round_trip(options):
    assert RunOptions.from_json(json.loads(json.dumps(options.to_json()))) == options


def spec() -> RunSpec:
    return RunSpec(
        profile="smoke",
        model="resnet8",
        method="ce",
        method_params={},
        teacher=None,
        data=DataSpec(name="synthetic", options={"train_size": 8, "test_size": 4}),
        train=TrainSpec(
            epochs=1,
            batch_size=4,
            lr=0.1,
            milestones=(),
            lr_decay=0.1,
            momentum=0.9,
            nesterov=False,
            weight_decay=5e-4,
        ),
        seed=0,
    )


@pytest.mark.parametrize("options", [RunOptions(), *CHANGED])
def test_kdbench_train_parses_the_flags_into_the_same_options(options, tmp_path, monkeypatch):
    """What `kdbench train` receives from to_argv() is what train.run gets: the CLI and from_argv agree."""
    seen = []
    monkeypatch.setattr(
        train,
        "run",
        lambda s, results, options: (
            seen.append(options)
            or finished(run_id=s.run_id, best_top1=0.0, best_epoch=1, last_top1=0.0)
        ),
    )
    monkeypatch.setattr(
        curves, "require", lambda names: None
    )  # wandb and mlflow need not be installed
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec().model_dump(mode="json")))
    out = CliRunner().invoke(
        cli.app, ["train", str(spec_file), "--results", str(tmp_path), *options.to_argv()]
    )
    assert out.exit_code == 0, out.output
    assert seen == [options]


def test_paths_and_lists_are_normalised():
    from pathlib import Path

    options = RunOptions(data_dir=Path("/data"), loggers=["mlflow"])
    assert options.data_dir == "/data" and options.loggers == ("mlflow",)
    hash(options)  # frozen, and hashable with its normalised fields


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"loader": "fast"}, "unknown loader 'fast'"),
        ({"workers": -1}, "workers must be a number of processes >= 0"),
        ({"workers": True}, "workers must be a number"),
        ({"workers": "2"}, "workers must be a number"),
        ({"device": ""}, "device is empty"),
        ({"device": 0}, "run option device has the wrong type"),
        ({"data_dir": 3}, "run option data_dir has the wrong type"),
        ({"slot": 1}, "run option slot has the wrong type"),
        ({"loggers": ("neptune",)}, "unknown curve logger 'neptune'"),
        ({"loggers": "mlflow"}, "loggers must be a list of names"),
        ({"compute": {"precision": "bf16"}}, "run option compute has the wrong type"),
    ],
)
def test_bad_options_are_refused_with_the_field_named(fields, message):
    with pytest.raises(KdbenchError, match=message):
        RunOptions(**fields)


@pytest.mark.parametrize(
    "value, message",
    [
        ([], "run options must be a JSON object"),
        ({"devices": "cpu"}, "unknown run option 'devices'"),
        ({"compute": {"precison": "bf16"}}, "run option compute must be an object with keys among"),
        ({"compute": "bf16"}, "run option compute must be an object"),
        ({"compute": {"precision": "fp16"}}, "unknown precision 'fp16'"),
        ({"loader": "fast"}, "unknown loader 'fast'"),
    ],
)
def test_bad_json_is_refused(value, message):
    with pytest.raises(KdbenchError, match=message):
        RunOptions.from_json(value)


def test_missing_json_keys_take_their_defaults():
    assert RunOptions.from_json({}) == RunOptions()
    assert RunOptions.from_json({"compute": {"precision": "fp32"}}) == RunOptions(
        compute=ComputeOptions(precision="fp32")
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--nproc", "2"], "unrecognized arguments: --nproc 2"),
        (["--device"], "argument --device: expected one argument"),
        (["--workers", "many"], "argument --workers: invalid int value"),
        (["--log-to", "neptune"], "--log-to .neptune.: choose one or more of"),
        (["--precision", "fp16"], "unknown precision 'fp16'"),
        (["--dev", "cpu"], "unrecognized arguments: --dev cpu"),  # no abbreviations
    ],
)
def test_bad_flags_are_refused(argv, message):
    with pytest.raises(KdbenchError, match=message):
        RunOptions.from_argv(argv)


def test_the_train_command_carries_every_option_back_to_kdbench_train(tmp_path):
    import sys

    options = RunOptions(device="cpu", loader="torch", workers=2, slot="cpu1", loggers=())
    command = options.train_command(tmp_path / "spec.json", tmp_path / "results")
    assert command[:7] == [
        sys.executable,
        "-m",
        "kdbench",
        "train",
        str(tmp_path / "spec.json"),
        "--results",
        str(tmp_path / "results"),
    ]
    assert RunOptions.from_argv(command[7:]) == options
