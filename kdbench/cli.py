"""kdbench command line: thin wrappers over the library (parse, call, print).

Heavy modules (torch, pandas) are imported inside the commands so that ``kdbench --help`` is fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Optional

import typer
from rich.console import Console
from typer.core import TyperCommand

from kdbench.errors import KdbenchError
from kdbench.layout import fit, paragraph

if TYPE_CHECKING:
    from typer._click import Context, HelpFormatter  # typer's own click

    from kdbench.train.compute import CacheMode, CompileMode, Precision

app = typer.Typer(
    help=(
        "Reproduce knowledge-distillation papers' result tables.\n\n"
        "Typical use: `kdbench list` to see the tables, `kdbench show simkd-table1` to see what a table "
        "will train, `kdbench reproduce simkd-table1` to train it (teachers first, then every student "
        "trial), and `kdbench compare results/` to print the paper's table with our mean ± std beside "
        "the published numbers. Add `--profile smoke` to try the whole pipeline on synthetic data in minutes."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console()
err = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from kdbench import __version__

        print(f"kdbench {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print kdbench's version and exit.",
        ),
    ] = False,
    recipes: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--recipes",
            help=(
                "Also find recipes (by name) in this directory, before the subcommand: `kdbench --recipes DIR list`; repeatable. "
                "Same as KDBENCH_RECIPES=DIR (os.pathsep-separated), which it extends; installed plugins' recipes are always found."
            ),
        ),
    ] = None,
) -> None:
    """Reproduce knowledge-distillation papers' result tables."""
    if recipes:
        import os

        from kdbench.recipe import RECIPES_ENV

        # The environment carries the search path to every process a command starts (workers, SLURM jobs).
        os.environ[RECIPES_ENV] = os.pathsep.join(
            [
                *(str(p.resolve()) for p in recipes),
                *filter(None, os.environ.get(RECIPES_ENV, "").split(os.pathsep)),
            ]
        )


# Help panels (typer's rich_help_panel): an option in an executor's panel is refused with the other executors.
COMPUTE, LOCAL, SLURM = "Compute", "Local executor", "SLURM executor"
EXECUTOR_OF_PANEL = {LOCAL: "local", SLURM: "slurm"}
ExecutorKind = Literal["local", "slurm"]  # the names of kdbench/execute/factory.py's EXECUTORS


class PanelledCommand(TyperCommand):
    """Plain help (no rich boxes) with the options grouped under their ``rich_help_panel`` headings."""

    def format_options(self, ctx: Context, formatter: HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                heading = "Arguments"
            else:
                heading = getattr(param, "rich_help_panel", None) or "Options"
            sections.setdefault(heading, []).append(record)
        for heading, records in sections.items():
            with formatter.section(heading):
                formatter.write_dl(records)


RecipeArg = Annotated[
    str,
    typer.Argument(
        help="Recipe name (e.g. simkd-table1, see `kdbench list`) or path to a recipe YAML file."
    ),
]
ResultsOpt = Annotated[
    Path,
    typer.Option("--results", help="Results directory (runs/ and tables/ are created inside)."),
]
ProfileOpt = Annotated[
    str,
    typer.Option(
        "--profile",
        help="full = the paper's protocol; ci = a small real-data subset; smoke = synthetic data, a few steps.",
    ),
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set",
        help=(
            "Override a recipe field: PATH=VALUE, PATH dotted, list items by index or id/label (rows.KD.params.kd_temperature=2), "
            "VALUE as YAML (training.milestones=[150,180,210]); repeatable. The overridden recipe is validated like the file "
            "and is what is planned: new run ids."
        ),
    ),
]
TrialsOpt = Annotated[
    Optional[int],
    typer.Option(
        "--trials", min=1, help="Trials (seeds) per cell; default: the recipe's (smoke: 1)."
    ),
]
DataDirOpt = Annotated[
    Optional[str],
    typer.Option(
        "--data-dir",
        help="Where datasets live (default: $KDBENCH_DATA, else ~/.cache/kdbench/data).",
        rich_help_panel=COMPUTE,
    ),
]
LoaderOpt = Annotated[
    str,
    typer.Option(
        "--loader",
        help=(
            "auto (default: tensor when the dataset fits on the device, else torch), torch (reference DataLoader), tensor "
            "(whole dataset on the device, batched crop/flip), or ffcv (reads the .beton files of `kdbench data prepare`; "
            "needs pip install 'kdbench[ffcv]', else falls back to tensor). Every loader replays the same epoch plan, "
            "so results are identical."
        ),
        rich_help_panel=COMPUTE,
    ),
]
# Compute options: how a run computes, not what (not part of the run id; result.json records them).
PrecisionOpt = Annotated[
    Literal["auto", "fp32", "bf16", "faithful"],  # train/compute.py PRECISIONS
    typer.Option(
        "--precision",
        help=(
            "auto (bf16 on CUDA, fp32 on CPU), bf16 (autocast for the network passes), fp32 (PyTorch's default fp32: TF32 cuDNN "
            "convolutions on Ampere+ GPUs, IEEE matmuls) or faithful (IEEE fp32 throughout, TF32 off: the authors' arithmetic). "
            "Losses are always computed in fp32; result.json records the precision and TF32 flags, and compare marks cells "
            'that pool precisions. See docs/protocol-choices.md, "Precision".'
        ),
        rich_help_panel=COMPUTE,
    ),
]
ChannelsLastOpt = Annotated[
    bool | None,
    typer.Option(
        "--channels-last/--no-channels-last",
        help="NHWC memory format for the networks (default: on for CUDA).",
        rich_help_panel=COMPUTE,
    ),
]
CompileOpt = Annotated[
    bool | None,
    typer.Option(
        "--compile/--no-compile",
        help="torch.compile the networks, falling back to eager with a warning if compiling fails (default: on for CUDA).",
        rich_help_panel=COMPUTE,
    ),
]
CompileModeOpt = Annotated[
    Literal["default", "reduce-overhead"],  # train/compute.py COMPILE_MODES
    typer.Option(
        "--compile-mode",
        help="default, or reduce-overhead: CUDA graphs over the compiled networks (CUDA and --compile only; off by default until measured: kdbench doctor times it on a GPU).",
        rich_help_panel=COMPUTE,
    ),
]
LogToOpt = Annotated[
    str,
    typer.Option(
        "--log-to",
        help=(
            "Where each epoch's metrics also go, comma-separated: tensorboard (default; event files in RESULTS/runs/<run id>/tb/, "
            "see `tensorboard --logdir RESULTS/runs`), wandb (pip install 'kdbench[wandb]'), mlflow (pip install "
            "'kdbench[mlflow]'), or none. metrics.jsonl is always written."
        ),
        rich_help_panel=COMPUTE,
    ),
]
TeacherCacheOpt = Annotated[
    Literal["auto", "on", "off"],  # train/compute.py CACHE_MODES
    typer.Option(
        "--teacher-cache",
        help="Logit-only methods (kd, dkd, dist, ...) can look the teacher's logits up from a per-view cache built once per teacher under RESULTS/teacher_cache. auto: when it exists, or when the run has at least 162 epochs (it then pays for itself); on: always; off: run the teacher every step.",
        rich_help_panel=COMPUTE,
    ),
]
TeachersOpt = Annotated[
    Optional[str],
    typer.Option(
        "--teachers",
        help="Where the teachers come from: released (import the authors' released checkpoints where the recipe names them, downloading them into DATA_DIR/teachers/) or trained (kdbench trains every teacher). Default: the recipe's teacher_source, what the paper did.",
    ),
]

PairsOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--pairs",
        help="Only these columns (pair ids from `kdbench show`); repeat or comma-separate.",
    ),
]
MethodsOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--methods",
        help="Only these rows (row labels or method names); repeat or comma-separate.",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]


def _split(values: Optional[list[str]]) -> Optional[list[str]]:
    """Accept both `--pairs a --pairs b` and `--pairs a,b`."""
    if not values:
        return None
    return [v for value in values for v in value.split(",") if v]


def _check_loader(loader: str) -> None:
    """Refuse an unknown ``--loader`` before anything is planned (the registry's did-you-mean error)."""
    from kdbench.data import LOADERS

    LOADERS.get(loader)


def _check_device(device: str) -> None:
    """Refuse a device this machine does not have before anything is planned (torch would fail deep inside)."""
    if device in ("auto", "cpu"):
        return
    import re

    import torch

    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise KdbenchError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N.")
    if not torch.cuda.is_available():
        build = "" if torch.version.cuda else " (this torch is built without CUDA)"
        raise KdbenchError(
            f"--device {device} requested but CUDA is not available on this machine{build}; "
            "use --device cpu or auto."
        )
    count = torch.cuda.device_count()
    if ":" in device and int(device.split(":")[1]) >= count:
        raise KdbenchError(
            f"--device {device}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}."
        )


def _check_output(path: Optional[Path], option: str, makes_folder: bool = False) -> None:
    """Refuse an output path that cannot be written (a folder, or in a missing folder unless the writer
    ``makes_folder``) before any work is done."""
    if path is None:
        return
    if path.is_dir():
        raise KdbenchError(
            f"{option} {path} is a directory: give a file name, e.g. {path / 'table.md'}."
        )
    if not makes_folder and not path.parent.is_dir():
        raise KdbenchError(
            f"{option} {path}: the folder {path.parent} does not exist; create it (mkdir -p "
            f"{path.parent}) or choose another path."
        )


def _run_options(
    *,
    device: str = "auto",
    data_dir: str | None = None,
    loader: str = "auto",
    workers: int = 0,
    precision: Precision = "auto",
    channels_last: bool | None = None,
    compile_: bool | None = None,
    compile_mode: CompileMode = "default",
    teacher_cache: CacheMode = "auto",
    loggers: tuple[str, ...] | None = None,
    slot: str | None = None,
):
    """The :class:`~kdbench.train.options.RunOptions` that a command's flags ask for (``loggers``: parsed
    ``--log-to``, default curves.DEFAULT); ``reproduce`` and ``train`` build theirs here."""
    from kdbench.train import curves
    from kdbench.train.compute import ComputeOptions
    from kdbench.train.options import RunOptions

    return RunOptions(
        device=device,
        data_dir=data_dir,
        loader=loader,
        workers=workers,
        compute=ComputeOptions(
            precision=precision,
            channels_last=channels_last,
            compile=compile_,
            teacher_cache=teacher_cache,
            compile_mode=compile_mode,
        ),
        slot=slot,
        loggers=curves.DEFAULT if loggers is None else loggers,
    )


def _runs_per_gpu(value: str):
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise KdbenchError(f"--runs-per-gpu takes a positive number or auto, not {value!r}.")
    return int(value)


def _fail(exc: Exception) -> None:
    from rich.markup import escape

    err.print(
        f"[bold red]error:[/] {escape(str(exc))}", highlight=False
    )  # messages hold brackets: kdbench[slurm]
    raise typer.Exit(2)


@app.command(cls=PanelledCommand)
def reproduce(
    ctx: typer.Context,
    recipe: RecipeArg,
    profile: ProfileOpt = "full",
    results: ResultsOpt = Path("results"),
    trials: TrialsOpt = None,
    set_: SetOpt = None,
    pairs: PairsOpt = None,
    methods: MethodsOpt = None,
    device: Annotated[
        str,
        typer.Option(
            "--device",
            help="auto (CUDA if present, else CPU), cpu, cuda, or cuda:N.",
            rich_help_panel=COMPUTE,
        ),
    ] = "auto",
    runs_per_gpu: Annotated[
        str,
        typer.Option(
            "--runs-per-gpu",
            help="Runs trained at once on each GPU: a number, or auto (as many as fit in its free memory; see kdbench/execute/local/packing.py).",
            rich_help_panel=LOCAL,
        ),
    ] = "auto",
    cpu_jobs: Annotated[
        int,
        typer.Option(
            "--cpu-jobs",
            min=1,
            help="Without GPUs: runs trained at once, sharing the cores.",
            rich_help_panel=LOCAL,
        ),
    ] = 1,
    gpus_per_run: Annotated[
        int,
        typer.Option(
            "--gpus-per-run",
            min=0,
            help=(
                "GPUs per run (DDP, `kdbench train --nproc N`), teachers and students alike; such a run has its GPUs to itself. "
                "Without GPUs, each of its ranks takes one of the --cpu-jobs slots. slurm: 0 asks for no GPU (one process)."
            ),
            rich_help_panel=COMPUTE,
        ),
    ] = 1,
    data_dir: DataDirOpt = None,
    loader: LoaderOpt = "auto",
    ci_train_fraction: Annotated[
        Optional[float],
        typer.Option("--ci-train-fraction", help="ci profile: fraction of the training set."),
    ] = None,
    ci_epochs: Annotated[
        Optional[int], typer.Option("--ci-epochs", help="ci profile: epochs per run.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan and exit without training.")
    ] = False,
    precision: PrecisionOpt = "auto",
    channels_last: ChannelsLastOpt = None,
    compile_: CompileOpt = None,
    compile_mode: CompileModeOpt = "default",
    teacher_cache: TeacherCacheOpt = "auto",
    log_to: LogToOpt = "tensorboard",
    teachers: TeachersOpt = None,
    executor: Annotated[
        ExecutorKind,
        typer.Option(
            "--executor",
            help="local (this machine's GPUs or CPU) or slurm (one job per run, a job array per cell's trials; needs pip install 'kdbench[slurm]').",
        ),
    ] = "local",
    partition: Annotated[
        Optional[str], typer.Option("--partition", help="Partition.", rich_help_panel=SLURM)
    ] = None,
    account: Annotated[
        Optional[str], typer.Option("--account", help="Account.", rich_help_panel=SLURM)
    ] = None,
    qos: Annotated[
        Optional[str], typer.Option("--qos", help="Quality of service.", rich_help_panel=SLURM)
    ] = None,
    time_min: Annotated[
        int,
        typer.Option(
            "--time",
            min=1,
            help="Time limit per job in minutes; a job that hits it is requeued and resumes from its checkpoint.",
            rich_help_panel=SLURM,
        ),
    ] = 240,
    constraint: Annotated[
        Optional[str],
        typer.Option(
            "--constraint", help="Node features (e.g. a GPU type).", rich_help_panel=SLURM
        ),
    ] = None,
    slurm_setup: Annotated[
        Optional[list[str]],
        typer.Option(
            "--slurm-setup",
            help="A shell line run before each job (e.g. 'module load cuda'); repeat for several.",
            rich_help_panel=SLURM,
        ),
    ] = None,
    cpus_per_run: Annotated[
        Optional[int],
        typer.Option("--cpus-per-run", min=1, help="CPUs per job.", rich_help_panel=SLURM),
    ] = None,
    mem_gb: Annotated[
        Optional[float],
        typer.Option("--mem-gb", min=0.1, help="Memory per job in GB.", rich_help_panel=SLURM),
    ] = None,
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait",
            help="Submit every job, print their ids and return; later run `kdbench compare`, or the same reproduce without --no-wait to follow the queued jobs.",
            rich_help_panel=SLURM,
        ),
    ] = False,
    wait_timeout: Annotated[
        Optional[float],
        typer.Option(
            "--wait-timeout",
            min=0.0,
            help="Stop waiting after this many minutes (the jobs go on).",
            rich_help_panel=SLURM,
        ),
    ] = None,
) -> None:
    """Train everything a table needs: teachers first, then every student trial. Finished runs are reused."""
    try:
        from kdbench.execute.factory import ExecutorOptions, make_executor
        from kdbench.execute.local.executor import LocalOptions
        from kdbench.execute.progress import RunProgress
        from kdbench.execute.reproduce import reproduce_table, submit_table
        from kdbench.execute.slurm.executor import SlurmExecutor, SlurmOptions
        from kdbench.plan import identified
        from kdbench.plan import plan as make_plan
        from kdbench.processes import Interrupted, interruptible
        from kdbench.recipe import load_recipe
        from kdbench.train import curves

        _refuse_other_executors_options(ctx, executor)
        _check_loader(loader)
        if executor == "local" and not dry_run:  # slurm jobs run on the cluster's nodes, not here
            _check_device(device)
        loggers = curves.parse(log_to)
        loaded = load_recipe(recipe, set_ or ()).with_teacher_source(teachers)
        if profile != "smoke":  # smoke trains on generated data
            loaded = identified(loaded, data_dir)
        ci = {"train_fraction": ci_train_fraction, "epochs": ci_epochs}
        table_plan = make_plan(
            loaded,
            profile,
            trials=trials,
            columns=_split(pairs),
            rows=_split(methods),
            ci_overrides=ci,
        )
        if dry_run:
            _print_plan(table_plan, results, data_dir)
            return
        curves.require(loggers)  # a missing extra is one error here, not one per run
        run_options = _run_options(
            device=device,
            data_dir=data_dir,
            loader=loader,
            precision=precision,
            channels_last=channels_last,
            compile_=compile_,
            compile_mode=compile_mode,
            teacher_cache=teacher_cache,
            loggers=loggers,
        )
        from kdbench.train.checkpoints import prepare as prepare_teachers

        prepare_teachers(
            table_plan.specs.values(), data_dir
        )  # every imported teacher's file, before any run starts
        _warn_reused_precisions(table_plan, results, precision)
        _prepare_data(table_plan, results, data_dir)
        options = ExecutorOptions(
            run=run_options,
            local=LocalOptions(_runs_per_gpu(runs_per_gpu), cpu_jobs, gpus_per_run),
            slurm=SlurmOptions(
                partition=partition,
                account=account,
                qos=qos,
                time_min=time_min,
                constraint=constraint,
                setup=tuple(slurm_setup or ()),
                gpus_per_run=gpus_per_run,
                cpus_per_run=cpus_per_run,
                mem_gb=mem_gb,
            ),
            wait_timeout_s=wait_timeout * 60 if wait_timeout is not None else None,
            on_submitted=_print_submission,
        )
        runner = make_executor(executor, options, table_plan)
        if no_wait:  # a SLURM executor (the option is refused with the others)
            assert isinstance(runner, SlurmExecutor)
            _print_submission(
                submit_table(table_plan, results, runner, ci, explicit_trials=trials is not None)
            )
            console.print(
                f"Jobs submitted; they go on without this process. Later: kdbench compare {results} "
                f"--recipe {table_plan.recipe.name}"
            )
            return
        title = f"{table_plan.recipe.name} ({profile}) → {results}"
        with (
            interruptible(),
            RunProgress(console, table_plan.ordered(), results, runner.parallel, title) as progress,
        ):
            runner.listener = progress.event
            outcomes = reproduce_table(
                table_plan, results, runner, ci, explicit_trials=trials is not None
            )
    except KdbenchError as exc:
        _fail(exc)
    except Interrupted as stop:  # the executor has stopped its runs, or left its jobs queued
        import shlex

        again = "kdbench " + shlex.join(sys.argv[1:])
        err.print(
            f"interrupted ({stop}): finished runs are kept, {runner.interrupted}. Resume with:\n  {again}",
            highlight=False,
        )
        raise typer.Exit(128 + stop.signum) from None
    failed = [o for o in outcomes.values() if o.status != "done"]
    console.print(
        f"{len(outcomes) - len(failed)} of {len(outcomes)} runs done"
        + (f"; {len(failed)} failed or skipped (see above)." if failed else ".")
        + f" Next: kdbench compare {results} --recipe {table_plan.recipe.name}"
    )
    if failed:
        raise typer.Exit(1)


def _refuse_other_executors_options(ctx: typer.Context, executor: str) -> None:
    """An option of one executor's panel given with another executor is an error, not silently ignored."""
    for param in ctx.command.params:
        owner = EXECUTOR_OF_PANEL.get(getattr(param, "rich_help_panel", None) or "")
        source = ctx.get_parameter_source(param.name or "")
        given = source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
        if owner is not None and owner != executor and given:
            raise KdbenchError(
                f"{param.opts[0]} is an option of --executor {owner}; --executor {executor} does not "
                f"use it: drop it, or add --executor {owner}."
            )


def _prepare_data(table_plan, results: Path, data_dir: Optional[str]) -> None:
    """Every dataset the unfinished runs need, ready before the first run is scheduled (downloaded once)."""
    from kdbench.data.registry import prepare_datasets
    from kdbench.store.run_dir import RunDir

    todo = [s for s in table_plan.specs.values() if not RunDir(results, s.run_id).is_done()]
    prepare_datasets(((s.data.name, s.data.options) for s in todo), data_dir)


def _warn_reused_precisions(table_plan, results: Path, precision: str) -> None:
    """Say which finished runs a --precision reproduce reuses although they were trained in another precision."""
    from collections import Counter

    from kdbench.execute.reproduce import reused_in_other_precisions

    if precision == "auto":  # resolved per slot's device: no one precision to compare with
        return
    other = reused_in_other_precisions(table_plan.ordered(), results, precision)
    if other:
        counts = ", ".join(f"{n} in {p}" for p, n in sorted(Counter(other.values()).items()))
        err.print(
            f"[yellow]warning: {len(other)} finished runs of this table are reused as they are, trained {counts}, "
            f"not {precision} (precision is not part of the run id); compare marks the cells that mix precisions. "
            f"To train the whole table in {precision}, reproduce it into a --results folder of its own.[/]"
        )


@app.command()
def status(
    recipe: Annotated[
        Optional[str],
        typer.Argument(
            help="A recipe's table (name or YAML path); default: every run under RESULTS/runs, grouped by state."
        ),
    ] = None,
    results: ResultsOpt = Path("results"),
    profile: Annotated[
        Optional[str],
        typer.Option("--profile", help="The table's profile; default: the one reproduced last."),
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Refresh every 2 seconds until Ctrl-C.")
    ] = False,
    teachers: TeachersOpt = None,
    json_out: Annotated[
        bool,
        typer.Option("--json", help="Print every run's state as JSON to stdout, and nothing else."),
    ] = False,
) -> None:
    """Runs done / running / failed / skipped / pending, epoch x/y of each running run, and an ETA, from the results store."""
    try:
        from kdbench.results.status import overview

        if json_out:
            from kdbench.results.export import dumps, status_document

            sys.stdout.write(dumps(status_document(results, recipe, profile, teachers)))
            return
        if not watch:
            console.print(overview(results, recipe, profile, teachers, console.width))
            return
        import time

        from rich.live import Live

        if (
            not console.is_terminal
        ):  # a pipe or a log file: Live draws nothing there; a line per change instead
            from kdbench.results.status import changes

            seen: dict[str, tuple] = {}
            console.print(
                f"watching {recipe or 'every run'} in {results} every 2 s: one line per run whose state or "
                "epoch changes (Ctrl-C to stop)",
                highlight=False,
                soft_wrap=True,
            )
            while True:
                for line in changes(results, recipe, profile, seen, teachers):
                    console.print(line, highlight=False, soft_wrap=True, markup=False)
                time.sleep(2)

        with Live(
            overview(results, recipe, profile, teachers, console.width),
            console=console,
            refresh_per_second=1,
        ) as live:
            while True:
                time.sleep(2)
                live.update(overview(results, recipe, profile, teachers, console.width))
    except KdbenchError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        pass


@app.command()
def clean(
    results: ResultsOpt = Path("results"),
    failed: Annotated[
        bool, typer.Option("--failed", help="Remove failed runs (failed.json, no result.json).")
    ] = False,
    orphaned: Annotated[
        bool,
        typer.Option(
            "--orphaned",
            help=(
                "Remove unfinished runs that no reproduced table (RESULTS/tables) refers to or that have no spec.json, "
                "and temp files left by interrupted writes."
            ),
        ),
    ] = False,
    run: Annotated[
        Optional[list[str]],
        typer.Option(
            "--run",
            help="Remove this run (repeatable); a finished one only after confirmation or --yes.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be removed; remove nothing.")
    ] = False,
    yes: Annotated[
        bool,
        typer.Option("--yes", help="Do not ask before removing finished runs named with --run."),
    ] = False,
) -> None:
    """Remove failed runs, orphaned runs and stray temp files (default: --failed --orphaned). Running runs are never
    touched, finished runs only when named with --run."""
    try:
        from kdbench.results.clean import describe, find, remove

        found = find(
            results,
            failed=failed or not (orphaned or run),
            orphaned=orphaned or not (failed or run),
            run_ids=_split(run) or [],
        )
    except KdbenchError as exc:
        _fail(exc)
    for note in found.kept:
        err.print(f"left alone: {note}", highlight=False)
    finished = [r for r in found.removals if r.finished]
    if finished and not (
        dry_run
        or yes
        or typer.confirm(
            f"Remove {len(finished)} finished run(s) ({', '.join(str(r.run_id) for r in finished)})? Their results are lost."
        )
    ):
        err.print("nothing removed (run again with --yes to remove finished runs).")
        raise typer.Exit(1)
    removed = 0
    for removal in found.removals:
        if dry_run:
            console.print(
                paragraph(f"would remove {describe(removal)}", console.width),
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        elif remove(removal, results):
            removed += 1
            console.print(
                paragraph(f"removed {describe(removal)}", console.width),
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        else:
            err.print(
                f"left alone: {removal.run_id}: started or finished while cleaning", highlight=False
            )
    console.print(
        f"{len(found.removals)} item(s) would be removed (dry run)."
        if dry_run
        else f"{removed} item(s) removed."
    )


@app.command()
def compare(
    results: Annotated[
        Path, typer.Argument(help="Results directory written by `kdbench reproduce`.")
    ] = Path("results"),
    recipe: Annotated[
        Optional[str],
        typer.Option(
            "--recipe",
            help="Only this table; a table not reproduced yet is shown with the published numbers only.",
        ),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="table (terminal), markdown, latex, html, or csv (one row per cell)."
        ),
    ] = "table",
    metric: Annotated[
        Optional[str],
        typer.Option(
            "--metric",
            help="best = best test accuracy over epochs, last = final epoch (with at_epoch: that epoch); for every cell, over the rows' and columns' own. Default: each cell's (row, column, else the recipe's).",
        ),
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="Write to this file instead of the terminal."),
    ] = None,
    plot: Annotated[
        Optional[Path],
        typer.Option(
            "--plot", help="Also draw ours (mean ± std) against the published values to this PNG."
        ),
    ] = None,
    alpha: Annotated[
        float,
        typer.Option(
            "--alpha",
            min=0.0,
            max=0.5,
            help="Level of the per-cell verdict: its interval is (1 − 2·alpha), its difference test two-sided at alpha.",
        ),
    ] = 0.05,
    margin: Annotated[
        Optional[float],
        typer.Option(
            "--margin",
            help="Equivalence margin δ in accuracy points: reproduced when the interval of ours − paper lies inside ±δ. Default: the recipe's margin, else 1.0.",
        ),
    ] = None,
    baseline: Annotated[
        Optional[Path],
        typer.Option(
            "--baseline",
            help="CI regression mode: a stored `compare --format csv`; exit 3 if a cell regressed.",
        ),
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(
            "--tolerance", min=0.0, help="Regression mode: allowed drop in accuracy points."
        ),
    ] = 1.0,
    allow_missing: Annotated[
        bool,
        typer.Option(
            "--allow-missing",
            help="Regression mode: pass even when some baseline cells are not in this comparison (by default every one must be found).",
        ),
    ] = False,
    teachers: TeachersOpt = None,
    pairs: PairsOpt = None,
    methods: MethodsOpt = None,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the comparison as JSON (a list of tables; docs/user-guide.md gives its shape) to stdout, and nothing else.",
        ),
    ] = False,
) -> None:
    """Print each reproduced table in the paper's layout: ours (mean ± std, n) beside the published mean ± std, with a verdict per cell."""
    try:
        from kdbench.results import render
        from kdbench.results.compare import compare as compare_tables

        if fmt not in render.FORMATS:
            raise KdbenchError(
                f"unknown format {fmt!r}; choose one of {', '.join(render.FORMATS)}."
            )
        _check_output(output, "--output")
        _check_output(plot, "--plot", makes_folder=True)  # results/plot.py creates its folder
        comparisons = compare_tables(results, recipe, metric, alpha, margin, teachers=teachers)
        if pairs or methods:
            from kdbench.results.compare import select

            comparisons = [select(c, _split(pairs), _split(methods)) for c in comparisons]
    except KdbenchError as exc:
        _fail(exc)
    if json_out:
        from kdbench.results.export import comparison, dumps

        sys.stdout.write(dumps([comparison(c) for c in comparisons]))
        raise typer.Exit(0 if comparisons else 1)
    if not comparisons:
        err.print(
            f"no reproduced tables under {results}/tables. Run `kdbench reproduce RECIPE` first, "
            "or pass --recipe NAME to list a table's published numbers."
        )
        raise typer.Exit(1)
    try:
        _print_tables(comparisons, fmt, output)
        if plot is not None:
            from kdbench.results.plot import plot as draw

            err.print(f"wrote {draw(comparisons, plot)}")
    except OSError as exc:  # the path was writable a moment ago: a full disk, no permission
        _fail(KdbenchError(f"could not write {exc.filename or output}: {exc.strerror or exc}."))
    from rich.markup import escape

    for (
        comp
    ) in comparisons:  # why a cell shows 'failed' or 'unverified': the run, the file and the fix
        for problem in comp.problems:
            err.print(
                f"[yellow]{comp.recipe.name}[/] {escape(problem)}", highlight=False, soft_wrap=True
            )
    if baseline is not None:
        import pandas as pd

        from kdbench.results.regression import regressions

        try:
            gate = regressions(pd.concat([c.cells for c in comparisons]), baseline, tolerance)
        except KdbenchError as exc:
            _fail(exc)
        if gate.missing:
            head = "[bold red]" if not allow_missing else "[yellow]"
            err.print(
                f"{head}{len(gate.missing)} baseline cell(s) not found[/] in this comparison (same recipe, profile, "
                "row, column and metric):\n  " + "\n  ".join(gate.missing),
                highlight=False,
            )
        if gate.regressed:
            err.print(
                f"[bold red]{len(gate.regressed)} regressed cell(s)[/] against {baseline}:\n  "
                + "\n  ".join(gate.regressed),
                highlight=False,
            )
        if gate.regressed or (gate.missing and not allow_missing):
            if gate.missing and not allow_missing:
                err.print(
                    "Reproduce the missing cells (same --profile and --metric as the baseline), or pass "
                    "--allow-missing to check only the cells both have."
                )
            raise typer.Exit(3)
        found = gate.checked - len(gate.missing)
        err.print(
            f"no regression against {baseline}: {found} of {gate.checked} baseline cell(s) checked "
            f"(tolerance {tolerance:g} points)"
        )


@app.command()
def report(
    recipe: RecipeArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write.")] = Path(
        "report.html"
    ),
    results: ResultsOpt = Path("results"),
    metric: Annotated[
        Optional[str],
        typer.Option("--metric", help="best or last, for every cell (as compare --metric)."),
    ] = None,
    alpha: Annotated[
        float,
        typer.Option(
            "--alpha", min=0.0, max=0.5, help="Level of the verdicts (as compare --alpha)."
        ),
    ] = 0.05,
    margin: Annotated[
        Optional[float],
        typer.Option("--margin", help="Equivalence margin δ in points (as compare --margin)."),
    ] = None,
    pairs: Annotated[
        Optional[list[str]],
        typer.Option("--pairs", help="Only these columns (pair ids); repeat or comma-separate."),
    ] = None,
    methods: Annotated[
        Optional[list[str]],
        typer.Option("--methods", help="Only these rows (row labels or method names)."),
    ] = None,
) -> None:
    """Write one self-contained HTML page of a table (no external files or URLs): the comparison with its verdicts
    and margin, the plot, training curves per cell, every run's provenance and the protocol notes."""
    try:
        from kdbench.results.compare import compare as compare_tables
        from kdbench.results.compare import select
        from kdbench.results.report import write_report

        (comp,) = compare_tables(results, recipe, metric, alpha, margin)
        if pairs or methods:
            comp = select(comp, _split(pairs), _split(methods))
        written = write_report(comp, results, output)
    except KdbenchError as exc:
        _fail(exc)
    err.print(f"wrote {written}")


def _print_submission(submission) -> None:
    """One line per SLURM job (an array once), so the user can follow them with squeue."""

    def grouped(run_ids: list[str]) -> str:
        arrays: dict[str, int] = {}
        for run_id in run_ids:
            master = submission.jobs[run_id].job_id.split("_")[0]
            arrays[master] = arrays.get(master, 0) + 1
        return ", ".join(f"{j} ({n} runs)" if n > 1 else j for j, n in arrays.items()) or "none"

    new = [run_id for run_id in submission.jobs if run_id not in submission.attached]
    aggregate = (
        f"; table job {submission.aggregate.job_id}" if submission.aggregate is not None else ""
    )
    attached = (
        f"; {len(submission.attached)} already queued as jobs {grouped(submission.attached)}, followed, not resubmitted"
        if submission.attached
        else ""
    )
    console.print(
        f"SLURM: {len(new)} runs submitted as jobs {grouped(new)}{aggregate}{attached}; "
        f"{len(submission.reused)} already done. Job output: {submission.folder}/<job id>/",
        highlight=False,
    )


def _print_tables(comparisons, fmt: str, output: Optional[Path]) -> None:
    from kdbench.results import render

    if fmt == "table" and output is None:
        for comp in comparisons:
            console.print(render.terminal(comp, console.width))
        return
    renderers = {
        "markdown": render.to_markdown,
        "latex": render.to_latex,
        "html": render.to_html,
        "table": _plain_table,
    }
    text = (
        render.to_csv(comparisons)
        if fmt == "csv"
        else "\n".join(renderers[fmt](c) for c in comparisons)
    )
    if output is not None:
        output.write_text(text)
        err.print(f"wrote {output}")
    else:
        sys.stdout.write(text)


def _plain_table(comp) -> str:
    import io

    from kdbench.results import render

    capture = Console(width=200, record=True, file=io.StringIO())
    capture.print(render.terminal(comp, 200))
    return capture.export_text()


@app.command("list")
def list_recipes() -> None:
    """List the recipes (paper tables) kdbench can reproduce, with what each needs."""
    from rich.markup import escape
    from rich.table import Table

    from kdbench import methods
    from kdbench.recipe import load_recipe, recipe_files, table_catalog

    table = Table(
        title="Recipes (the seed papers' tables, and those of --recipes directories and plugins)",
        title_justify="left",
    )
    table.add_column("recipe", no_wrap=True)  # names are copied into commands: never broken
    for column in ("paper / table", "status", "dataset", "pairs × rows", "trials", "notes"):
        table.add_column(column, overflow="fold")
    for name, path in recipe_files().items():
        try:
            r = load_recipe(path)
        except KdbenchError as exc:
            table.add_row(name, "", "[red]invalid recipe[/]", "", "", "", escape(str(exc)))
            continue
        missing = sorted(
            {
                row.method
                for row in r.rows
                if not row.is_teacher_row and not methods.is_implemented(row.method)
            }
        )
        literature = [row.label for row in r.rows if row.literature]
        notes = (f"not implemented: {', '.join(missing)}. " if missing else "") + (
            f"literature rows: {', '.join(literature)}" if literature else ""
        )
        table.add_row(
            name,
            f"{r.paper.split(':')[0]} {r.table}",
            "[green]runnable[/]",
            r.dataset.name,
            f"{len(r.columns)} × {len(r.rows)}",
            str(r.trials),
            notes or "—",
        )
    for entry in table_catalog():
        style = {"not supported": "red", "planned": "dim"}[entry.status]
        table.add_row(
            entry.name,
            f"{entry.paper} {entry.table}",
            f"[{style}]{entry.status}[/]",
            "",
            "",
            "",
            entry.reason,
        )
    console.print(fit(table, console.width))
    console.print(f"Methods implemented: {', '.join(methods.names())}")


@app.command("methods")
def list_methods() -> None:
    """List the distillation methods: source paper, parameters with defaults, and named variants."""
    from rich.table import Table

    from kdbench import methods

    table = Table(title="Methods", title_justify="left", show_lines=True)
    for column in ("method", "paper", "defaults", "variants"):
        table.add_column(column, overflow="fold")
    for name in methods.names():
        cls = methods.get(name)
        defaults = ", ".join(f"{k}={v}" for k, v in cls.Params().model_dump().items())
        variants = (
            "\n".join(f"{v}: {variant.description}" for v, variant in cls.variants.items()) or "—"
        )
        table.add_row(name, cls.paper, defaults, variants)
    for name, source in sorted(methods.COMBINATIONS.items()):
        table.add_row(
            name,
            source,
            "the first method's loss + the second's own terms",
            "(params.second: the second's)",
        )
    for name, source in sorted(
        (n, s) for n, s in methods.NOT_IMPLEMENTED.items() if not methods.is_implemented(n)
    ):
        table.add_row(name, source, "[dim]not implemented yet[/]", "")
    console.print(fit(table, console.width))


@app.command()
def show(
    recipe: RecipeArg,
    profile: ProfileOpt = "full",
    results: ResultsOpt = Path("results"),
    trials: TrialsOpt = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
    teachers: TeachersOpt = None,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the plan (pairs, runs with their status) as JSON to stdout, and nothing else.",
        ),
    ] = False,
) -> None:
    """Show a recipe's plan: its pairs and rows, every run with its status, and a cost estimate."""
    try:
        from kdbench.plan import identified
        from kdbench.plan import plan as make_plan
        from kdbench.recipe import load_recipe

        loaded = load_recipe(recipe, set_ or ()).with_teacher_source(teachers)
        if profile != "smoke":
            try:
                loaded = identified(loaded, data_dir)
            except KdbenchError as exc:  # show still lists the plan; reproduce refuses
                err.print(
                    f"warning: {exc} The run ids below do not include the data's content.",
                    highlight=False,
                )
        table_plan = make_plan(loaded, profile, trials=trials)
        if json_out:
            from kdbench.results.collect import run_status
            from kdbench.results.export import dumps, plan_document
            from kdbench.store.run_dir import RunDir

            statuses = {
                s.run_id: run_status(RunDir(results, s.run_id)) for s in table_plan.ordered()
            }
            sys.stdout.write(dumps(plan_document(table_plan, statuses)))
            return
        _print_plan(table_plan, results, data_dir)
    except KdbenchError as exc:
        _fail(exc)


def _print_plan(table_plan, results: Path, data_dir: Optional[str]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from kdbench.cost import estimate
    from kdbench.results.collect import run_status
    from kdbench.store.run_dir import RunDir
    from kdbench.train.checkpoints import describe_teachers

    r = table_plan.recipe
    console.print(
        f"[bold]{r.name}[/]: {r.paper} — {r.table}\nprotocol {r.protocol.name} (follows {r.protocol.follows}); "
        f"profile {table_plan.profile}; dataset {r.dataset.name}; metric {r.metric} epoch"
    )
    if r.protocol.notes:
        console.print(f"[dim]{escape(r.protocol.notes)}[/]")
    columns = Table(title="Pairs (columns)", title_justify="left")
    for c in ("pair id", "teacher", "student"):
        columns.add_column(c)
    for col in r.columns:
        columns.add_row(
            col.id,
            f"{r.teachers[col.teacher].label} ({r.teachers[col.teacher].model})",
            f"{col.label} ({col.student})",
        )
    console.print(fit(columns, console.width))
    console.print(f"Teachers: {r.teacher_source} (--teachers released|trained)", highlight=False)
    lines = [
        f"Precision: the authors computed in {r.protocol.precision}; --precision {r.protocol.precision} matches it "
        "(default on CUDA: bf16 autocast, recorded with every result)"
    ]
    variants = sorted({f"{row.label}: {row.variant}" for row in r.rows if row.variant})
    if variants:
        lines.append("Variants: " + "; ".join(variants))
    for line in [
        *lines,
        *describe_teachers(table_plan, data_dir),
    ]:  # wrapped at spaces; a long path stays whole
        console.print(escape(paragraph(line, console.width)), soft_wrap=True, highlight=False)
    runs = Table(title=f"Runs ({len(table_plan.specs)})", title_justify="left")
    for c in ("run id", "method", "model", "teacher run", "seed", "epochs", "status"):
        runs.add_column(c)
    statuses = {}
    for spec in table_plan.ordered():
        statuses[spec.run_id] = run_status(RunDir(results, spec.run_id))
        runs.add_row(
            spec.run_id,
            spec.method,
            spec.model,
            spec.teacher.run_id if spec.teacher else "—",
            str(spec.seed),
            str(spec.train.epochs),
            statuses[spec.run_id],
        )
    console.print(fit(runs, console.width))
    not_impl = sorted(
        {(c.row, c.method) for c in table_plan.cells if c.status == "not_implemented"}
    )
    if not_impl:
        console.print(
            "Rows planned but not implemented yet (shown as 'not implemented' in compare): "
            + ", ".join(f"{row} ({m})" for row, m in not_impl)
        )
    todo = [rid for rid, s in statuses.items() if s != "done"]
    cost = estimate(table_plan, todo, data_dir)
    done = len(statuses) - len(todo)
    console.print(
        f"{done} of {len(statuses)} runs done. Remaining work: {cost.train_flops / 1e15:,.1f} PFLOP "
        f"(train = 3 × forward, + per-epoch eval); floor {cost.h100_floor_hours:,.2f} H100-hours at 100% "
        f"of the bf16 peak — real runs take several times longer."
        + (
            f" ({cost.unknown_runs} runs on data of unknown size not counted.)"
            if cost.unknown_runs
            else ""
        )
    )
    _print_measured_cost(table_plan, todo, results, data_dir)


def _print_measured_cost(
    table_plan, todo: list[str], results: Path, data_dir: Optional[str]
) -> None:
    """GPU-hours of the remaining runs from the throughput measured on each device (runs and benches)."""
    from kdbench.cost import estimate_by_device, measured_throughputs

    measurements = measured_throughputs(results)
    if not todo:
        return
    if not measurements:
        console.print(
            f"No measured throughput under {results} yet: run `kdbench bench --results {results}` on the "
            "target GPU (or finish a run there) and `kdbench show` prices the remaining runs from it."
        )
        return
    for e in estimate_by_device(table_plan, todo, measurements, data_dir):
        console.print(
            f"Estimate on {e.device}: [bold]{e.hours:,.2f} GPU-hours[/] for the remaining runs — {e.exact_runs} "
            f"priced by measurements of the same method and pair, {e.scaled_runs} by the median achieved "
            f"{e.median_flops_per_s / 1e12:,.2f} TFLOP/s of {e.measurements} measurement(s) on this device."
        )


@app.command()
def train(
    spec: Annotated[
        str, typer.Argument(help="A run's spec.json, or a run id under RESULTS/runs/.")
    ],
    results: ResultsOpt = Path("results"),
    device: DeviceOpt = "auto",
    data_dir: DataDirOpt = None,
    workers: Annotated[
        int, typer.Option("--workers", min=0, help="DataLoader worker processes.")
    ] = 0,
    loader: LoaderOpt = "auto",
    precision: PrecisionOpt = "auto",
    channels_last: ChannelsLastOpt = None,
    compile_: CompileOpt = None,
    compile_mode: CompileModeOpt = "default",
    teacher_cache: TeacherCacheOpt = "auto",
    log_to: LogToOpt = "tensorboard",
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            min=1,
            help=(
                "Train the run as N DDP processes on this machine (one per GPU; gloo on CPU). The global batch stays the "
                "spec's batch size: each process takes 1/N of every batch."
            ),
        ),
    ] = 1,
    slot: Annotated[
        Optional[str],
        typer.Option(
            "--slot",
            hidden=True,
            help="Set by the local executor: its slot, recorded in launch.json for `kdbench status`.",
        ),
    ] = None,
) -> None:
    """Train one run (what the executors call). Resumes from its checkpoint if one exists."""
    from kdbench import train as training
    from kdbench.processes import EXIT_LOCKED, watch_parent
    from kdbench.store.run_dir import RunLocked
    from kdbench.train import curves, distributed

    watch_parent()  # started by `reproduce`: end with it
    try:
        _check_loader(loader)
        loggers = curves.parse(log_to)
        curves.require(loggers)  # before any rank starts
        run_spec = training.load_spec(spec, results)
        options = _run_options(
            device=device,
            data_dir=data_dir,
            loader=loader,
            workers=workers,
            precision=precision,
            channels_last=channels_last,
            compile_=compile_,
            compile_mode=compile_mode,
            teacher_cache=teacher_cache,
            loggers=loggers,
            slot=slot,
        )
        if nproc > 1:
            rank_argv = [
                "--results",
                str(results),
                *options.to_argv(),
            ]  # each rank: kdbench train SPEC …
            _train_processes(spec, run_spec.run_id, results, nproc, rank_argv)
            return  # rank 0 printed the run's line
        result = training.run(run_spec, results, options)
    except RunLocked as exc:
        err.print(f"[yellow]{exc}[/]")
        raise typer.Exit(EXIT_LOCKED) from None
    except KdbenchError as exc:
        _fail(exc)
    ranks = distributed.env_ranks()
    if ranks is None or ranks[0] == 0:  # one line per run, not per process
        console.print(
            f"{result.run_id}: best top-1 {result.best_top1:.2f} (epoch {result.best_epoch}), "
            f"last {result.last_top1:.2f}"
        )


def _train_processes(spec: str, run_id: str, results: Path, nproc: int, options: list[str]) -> None:
    """``kdbench train SPEC --nproc N``: the run as N DDP processes (kdbench/train/launch.py)."""
    from kdbench.processes import EXIT_LOCKED
    from kdbench.store.run_dir import RunDir, RunLocked
    from kdbench.train import launch

    run = RunDir(results, run_id)
    code, why = launch.train(
        Path(spec) if Path(spec).is_file() else run.spec_file, run_id, results, nproc, options
    )
    if code == EXIT_LOCKED:
        raise RunLocked(f"run {run_id} is being trained by another process.")
    if code:
        raise KdbenchError(
            f"run {run_id} failed: {why}. Its error is printed above; rank 0's log is {run.log_file}."
        )


data_app = typer.Typer(
    help="Prepare datasets for the faster loaders.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(data_app, name="data")


@data_app.command("prepare")
def data_prepare(
    dataset: Annotated[
        str, typer.Argument(help="cifar100, cifar10, imagenet or imagenet_synthetic.")
    ],
    data_dir: DataDirOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Output folder (default: DATA_DIR/ffcv/DATASET, where runs with --loader ffcv look).",
        ),
    ] = None,
    max_resolution: Annotated[
        int | None,
        typer.Option(
            "--max-resolution",
            min=1,
            help="imagenet: shrink longer sides to this (FFCV's ImageNet example: 500).",
        ),
    ] = None,
    compress_probability: Annotated[
        float | None,
        typer.Option(
            "--compress-probability",
            min=0.0,
            max=1.0,
            help="imagenet: share of images stored as JPEG in proportion mode (default 0.5).",
        ),
    ] = None,
    jpeg_quality: Annotated[
        int | None,
        typer.Option("--jpeg-quality", min=1, max=100, help="imagenet: JPEG quality (default 90)."),
    ] = None,
    write_mode: Annotated[
        str | None,
        typer.Option("--write-mode", help="imagenet: proportion (default), jpg, raw or smart."),
    ] = None,
) -> None:
    """Write a dataset's train.beton and test.beton for `--loader ffcv` (needs pip install 'kdbench[ffcv]')."""
    image_options = {
        "max_resolution": max_resolution,
        "compress_probability": compress_probability,
        "jpeg_quality": jpeg_quality,
        "write_mode": write_mode,
    }
    try:
        from kdbench.data.loaders.ffcv_prepare import prepare_dataset

        folder = prepare_dataset(
            dataset, data_dir, out, **{k: v for k, v in image_options.items() if v is not None}
        )
    except KdbenchError as exc:
        _fail(exc)
    console.print(f"wrote {folder}/train.beton and {folder}/test.beton")


@app.command()
def bench(
    teacher: Annotated[
        str, typer.Option("--teacher", help="Teacher model (random-init weights).")
    ] = "resnet32x4",
    student: Annotated[str, typer.Option("--student", help="Student model.")] = "resnet8x4",
    method: Annotated[
        str, typer.Option("--method", help="Distillation method (see `kdbench methods`).")
    ] = "kd",
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Training batch size of both paths.")
    ] = 64,
    steps: Annotated[
        int, typer.Option("--steps", min=1, help="Timed steps per path in each round.")
    ] = 10,
    rounds: Annotated[
        int,
        typer.Option("--rounds", min=1, help="Interleaved rounds (best and median are reported)."),
    ] = 5,
    warmup: Annotated[
        int,
        typer.Option(
            "--warmup", min=0, help="Untimed steps per path first (compilation happens here)."
        ),
    ] = 2,
    images: Annotated[
        int,
        typer.Option(
            "--images", min=1, help="Training images; the teacher cache holds 162 views of each."
        ),
    ] = 128,
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="synthetic (CIFAR-shaped), or an .npz file (absolute, or under --data-dir / $KDBENCH_DATA).",
        ),
    ] = "synthetic",
    data_dir: DataDirOpt = None,
    workers: Annotated[
        int, typer.Option("--workers", min=0, help="DataLoader worker processes of both paths.")
    ] = 0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    channels_last: ChannelsLastOpt = None,
    compile_: CompileOpt = None,
    compile_mode: CompileModeOpt = "default",
    teacher_cache: TeacherCacheOpt = "auto",
    peak: Annotated[
        float | None,
        typer.Option(
            "--peak",
            min=0.0,
            help="The device's peak in TFLOP/s, to report the fraction reached (known: H100/H200 bf16).",
        ),
    ] = None,
    results: ResultsOpt = Path("results"),
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write every measurement to this JSON file.")
    ] = None,
) -> None:
    """Images/s of kdbench's training path vs a plain PyTorch reference loop (papers' style), in one process."""
    import json

    from rich.table import Table

    from kdbench.tools.bench import BenchConfig, malloc_note, save_record, summary_rows
    from kdbench.tools.bench import bench as measure

    try:
        config = BenchConfig(
            teacher=teacher,
            student=student,
            method=method,
            batch_size=batch_size,
            steps=steps,
            rounds=rounds,
            warmup=warmup,
            images=images,
            data=data,
            data_dir=data_dir,
            num_workers=workers,
            device=device,
            compute=_run_options(
                precision=precision,
                channels_last=channels_last,
                compile_=compile_,
                compile_mode=compile_mode,
                teacher_cache=teacher_cache,
            ).compute,
            peak=peak * 1e12 if peak is not None else None,
            results=results,
        )
        report = measure(
            config,
            show_progress=err.is_terminal,
            on_round=lambda r, a, b: err.print(
                f"round {r}/{rounds}: kdbench {a:,.1f} img/s, reference {b:,.1f} img/s"
            ),
        )
    except KdbenchError as exc:
        _fail(exc)
    c = report.compute
    table = Table(
        title=f"{method}: {teacher} → {student}, batch {batch_size}, {steps} steps × {rounds} rounds on "
        f"{report.device} ({report.threads} threads)",
        title_justify="left",
    )
    for column in (
        "path",
        "img/s best",
        "img/s median",
        "GFLOP/img (train)",
        "TFLOP/s (best)",
        "of peak",
    ):
        table.add_column(column, justify="left" if column == "path" else "right")
    for row in summary_rows(report):
        table.add_row(*row)
    console.print(table)
    console.print(
        f"kdbench: precision {c.precision}, channels_last {c.channels_last}, compile {c.compile}, "
        f"teacher cache {report.teacher_cache}"
    )
    console.print(
        "reference: torch DataLoader + torchvision transforms, teacher forward every step, eager fp32"
    )
    console.print(malloc_note(report))
    console.print(
        f"ratio kdbench / reference: best {report.ratio_best:.2f}x, median {report.ratio_median:.2f}x"
    )
    record = save_record(report, results)
    err.print(f"recorded in {record} (kdbench show prices runs from it)")
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        err.print(f"wrote {json_out}")


@app.command()
def doctor(
    device: DeviceOpt = "auto",
    budget_s: Annotated[
        float,
        typer.Option(
            "--budget-s",
            min=1.0,
            help="Time budget in seconds; checks left when it is spent are reported as skipped.",
        ),
    ] = 420.0,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Small sizes (the CPU/CI check, about a minute on a CPU)."),
    ] = False,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json", help="Also write the environment and every check to this JSON file."
        ),
    ] = None,
) -> None:
    """Check this machine: the environment, then every path that differs on the device (first thing to run on a GPU)."""
    import json

    from kdbench import train as training
    from kdbench.tools import doctor as doctoring

    try:
        resolved = training.resolve_device(device)
    except KdbenchError as exc:
        _fail(exc)
    marks = {"pass": "[green]pass[/]", "fail": "[red]FAIL[/]", "skip": "[yellow]skip[/]"}

    def show(check: "doctoring.Check") -> None:
        console.print(
            f"{marks[check.status]}  {check.name}: {check.figure} ({check.seconds:.1f} s)"
            + (f"\n      {check.detail}" if check.detail else ""),
            highlight=False,
        )

    env = doctoring.environment(resolved)
    for key, value in env.items():
        console.print(f"{key}: {value}", highlight=False)
    report = doctoring.run(resolved, budget_s, quick, on_check=show)
    counts = report.counts()
    console.print(
        f"doctor: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped "
        f"(budget {budget_s:.0f} s)",
        highlight=False,
    )
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        err.print(f"wrote {json_out}")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def fidelity(
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="Real images: an .npz file, absolute or under --data-dir / $KDBENCH_DATA.",
        ),
    ] = "cifar10-jpeg-q75-20k.npz",
    data_dir: DataDirOpt = None,
    train_fraction: Annotated[
        float,
        typer.Option("--train-fraction", help="Share of the training images (class-stratified)."),
    ] = 0.05,
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help="Share of the test images (class-stratified).")
    ] = 0.1,
    teacher: Annotated[
        str,
        typer.Option(
            "--teacher", help="Teacher model (trained once with ce, shared by every mode)."
        ),
    ] = "resnet8",
    student: Annotated[str, typer.Option("--student", help="Student model.")] = "resnet8",
    method: Annotated[str, typer.Option("--method", help="Distillation method.")] = "kd",
    teacher_epochs: Annotated[int, typer.Option("--teacher-epochs", min=1)] = 15,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Student epochs.")] = 5,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Student seeds per mode.")] = 3,
    modes: Annotated[
        list[str] | None,
        typer.Option(
            "--modes",
            help="Fast modes to compare with the reference (repeat or comma-separate): tensor, ffcv, teacher-cache, bf16, channels-last, compile. Default: all but compile.",
        ),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="cpu (the gate's setting), auto, cuda or cuda:N.")
    ] = "cpu",
    results: ResultsOpt = Path("results/fidelity"),
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the report to this JSON file.")
    ] = None,
) -> None:
    """Fidelity gate: train one KD setting on real images with the reference path and each fast mode, N seeds each;
    report accuracy mean ± std per mode, a Welch verdict, and whether weights are bit-identical. Exit 1 if it fails."""
    import json

    from rich.table import Table

    from kdbench.tools.fidelity import DEFAULT_MODES, FidelityConfig, run_gate, summary_rows

    try:
        config = FidelityConfig(
            data=data,
            data_dir=data_dir,
            train_fraction=train_fraction,
            test_fraction=test_fraction,
            teacher=teacher,
            student=student,
            method=method,
            teacher_epochs=teacher_epochs,
            epochs=epochs,
            batch_size=batch_size,
            seeds=seeds,
            modes=tuple(_split(modes) or DEFAULT_MODES),
            device=device,
            results=results,
        )
        report = run_gate(
            config,
            on_run=lambda mode, seed, r: err.print(
                f"{mode} seed {seed}: top-1 {r.last_top1:.2f} ({r.wall_seconds:.0f} s)"
            ),
        )
    except KdbenchError as exc:
        _fail(exc)
    table = Table(
        title=f"{method}: {teacher} (top-1 {report.teacher_top1:.2f}) → {student} on {data}, "
        f"{report.train_images} train / {report.test_images} test images, {epochs} epochs, "
        f"{seeds} seeds, {device}",
        title_justify="left",
    )
    for column in (
        "mode",
        "changes",
        "top-1 (last)",
        "Δ",
        "Welch p",
        "verdict",
        "weights vs reference",
        "s/run",
    ):
        table.add_column(column)
    for row in summary_rows(report):
        table.add_row(*row)
    console.print(table)
    console.print(
        f"fidelity gate: {'PASS' if report.passed else 'FAIL'} (within noise: p ≥ {config.alpha}; the loader "
        "modes must also give bit-identical weights)"
    )
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        err.print(f"wrote {json_out}")
    if not report.passed:
        raise typer.Exit(1)


@app.command(hidden=True)
def worker() -> None:
    """Serve training requests from an executor on stdin (see kdbench/execute/local/worker.py)."""
    from kdbench.execute.local.worker import serve
    from kdbench.processes import watch_parent

    watch_parent()
    serve(sys.stdin, sys.stdout)
