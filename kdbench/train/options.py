"""How a run is trained, as opposed to what it trains: the options that never change its result.

A :class:`RunOptions` is the one form these options take between processes: ``kdbench train``'s flags
(:meth:`RunOptions.to_argv`, the process-per-run command and each DDP rank), the JSON request of a
long-lived worker and a SLURM job's payload (:meth:`RunOptions.to_json`), and ``train.run``'s argument.
None of it is part of the :class:`~kdbench.plan.RunSpec` or its run id; ``result.json`` records the
compute options a run used (kdbench/train/compute.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from kdbench.data import LOADERS
from kdbench.errors import KdbenchError
from kdbench.train import curves
from kdbench.train.compute import ComputeOptions


@dataclass(frozen=True)
class RunOptions:
    """Where and how one run trains (every field has ``kdbench train``'s default)."""

    device: str = "auto"  # auto (CUDA if present, else CPU), cpu, cuda or cuda:N
    data_dir: str | None = None  # None: $KDBENCH_DATA, else ~/.cache/kdbench/data
    loader: str = "auto"  # one of data.LOADERS: every kind gives the same batches
    workers: int = 0  # DataLoader worker processes
    compute: ComputeOptions = field(default_factory=ComputeOptions)
    slot: str | None = (
        None  # the local executor's slot, recorded in launch.json for `kdbench status`
    )
    loggers: tuple[str, ...] = (
        curves.DEFAULT
    )  # --log-to: where rank 0 also sends each epoch's metrics

    def __post_init__(self) -> None:
        if isinstance(self.data_dir, Path):
            object.__setattr__(self, "data_dir", str(self.data_dir))
        if isinstance(self.loggers, list):
            object.__setattr__(self, "loggers", tuple(self.loggers))
        _expect("device", self.device, str)
        _expect("data_dir", self.data_dir, (str, type(None)))
        _expect("loader", self.loader, str)
        _expect("slot", self.slot, (str, type(None)))
        _expect("compute", self.compute, ComputeOptions)
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise KdbenchError(
                f"run option workers must be a number of processes >= 0, not {self.workers!r}."
            )
        if not self.device:
            raise KdbenchError("run option device is empty; use auto, cpu, cuda or cuda:N.")
        LOADERS.get(self.loader)  # an unknown loader: an error naming the known ones
        if not isinstance(self.loggers, tuple) or not all(
            isinstance(name, str) for name in self.loggers
        ):
            raise KdbenchError(f"run option loggers must be a list of names, not {self.loggers!r}.")
        unknown = [name for name in self.loggers if name not in curves.MODULES]
        if unknown:
            raise KdbenchError(
                f"unknown curve logger {unknown[0]!r}; choose from {', '.join(curves.MODULES)}."
            )

    def replace(self, **changes: Any) -> RunOptions:
        """A copy with ``changes`` (e.g. a slot's device and name)."""
        return dataclasses.replace(self, **changes)

    def to_argv(self) -> list[str]:
        """The ``kdbench train`` flags that ask for these options."""
        c = self.compute
        return [
            "--device",
            self.device,
            "--loader",
            self.loader,
            "--workers",
            str(self.workers),
            "--log-to",
            curves.flag(self.loggers),
            *(["--data-dir", self.data_dir] if self.data_dir is not None else []),
            *(["--slot", self.slot] if self.slot is not None else []),
            "--precision",
            c.precision,
            "--teacher-cache",
            c.teacher_cache,
            *([] if c.channels_last is None else [_switch("channels-last", c.channels_last)]),
            *([] if c.compile is None else [_switch("compile", c.compile)]),
            *(["--compile-mode", c.compile_mode] if c.compile_mode != "default" else []),
        ]

    def train_command(self, spec_file: Path, results: Path) -> list[str]:
        """The process that trains one spec with these options: ``python -m kdbench train SPEC`` and its flags
        (what both executors start; a multi-process run adds ``--nproc N``)."""
        return [
            sys.executable,
            "-m",
            "kdbench",
            "train",
            str(spec_file),
            "--results",
            str(results),
            *self.to_argv(),
        ]

    @classmethod
    def from_argv(cls, argv: Sequence[str]) -> RunOptions:
        """The options ``kdbench train`` flags ask for (those :meth:`to_argv` writes); other flags are an error."""
        parsed = _PARSER.parse_args(list(argv))
        return cls(
            device=parsed.device,
            data_dir=parsed.data_dir,
            loader=parsed.loader,
            workers=parsed.workers,
            compute=ComputeOptions(
                precision=parsed.precision,
                channels_last=parsed.channels_last,
                compile=parsed.compile,
                teacher_cache=parsed.teacher_cache,
                compile_mode=parsed.compile_mode,
            ),
            slot=parsed.slot,
            loggers=curves.parse(parsed.log_to),
        )

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values: a worker's request, a SLURM job's payload."""
        return {
            "device": self.device,
            "data_dir": self.data_dir,
            "loader": self.loader,
            "workers": self.workers,
            "compute": self.compute.to_json(),
            "slot": self.slot,
            "loggers": list(self.loggers),
        }

    @classmethod
    def from_json(cls, value: Any) -> RunOptions:
        """The options :meth:`to_json` wrote; a missing key takes its default, an unknown key is an error."""
        if not isinstance(value, dict):
            raise KdbenchError(f"run options must be a JSON object, not {value!r}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise KdbenchError(
                f"unknown run option {unknown[0]!r} in {value!r}; known: {', '.join(sorted(known))}."
            )
        fields = dict(value)
        if "compute" in fields:
            compute = fields["compute"]
            compute_keys = {f.name for f in dataclasses.fields(ComputeOptions)}
            if not isinstance(compute, dict) or set(compute) - compute_keys:
                raise KdbenchError(
                    f"run option compute must be an object with keys among "
                    f"{', '.join(sorted(compute_keys))}, not {compute!r}."
                )
            fields["compute"] = ComputeOptions(**compute)
        if isinstance(fields.get("loggers"), list):
            fields["loggers"] = tuple(fields["loggers"])
        return cls(**fields)


def _expect(name: str, value: Any, types: type | tuple[type, ...]) -> None:
    if not isinstance(value, types):
        raise KdbenchError(f"run option {name} has the wrong type: {value!r}.")


def _switch(name: str, on: bool) -> str:
    return f"--{name}" if on else f"--no-{name}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise KdbenchError(f"bad kdbench train flags: {message}.")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kdbench train", add_help=False, allow_abbrev=False)
    defaults, compute = RunOptions(), ComputeOptions()
    for flag, default in (
        ("--device", defaults.device),
        ("--data-dir", defaults.data_dir),
        ("--loader", defaults.loader),
        ("--slot", defaults.slot),
        ("--log-to", curves.flag(defaults.loggers)),
        ("--precision", compute.precision),
        ("--teacher-cache", compute.teacher_cache),
        ("--compile-mode", compute.compile_mode),
    ):
        parser.add_argument(flag, default=default)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    for name, dest in (("channels-last", "channels_last"), ("compile", "compile")):
        parser.add_argument(f"--{name}", dest=dest, action="store_const", const=True)
        parser.add_argument(f"--no-{name}", dest=dest, action="store_const", const=False)
    return parser


_PARSER = _parser()
