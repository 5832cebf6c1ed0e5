"""Recipe → RunSpecs: one run per teacher, and per table cell one run per trial seed.

A :class:`RunSpec` holds everything that can change a run's result and nothing that cannot
(device, workers, output root). Its run id is a hash of its canonical JSON, so the same spec
always maps to the same directory: finished runs are never repeated, and a teacher trained for
one table serves every table that asks for the same teacher. Profiles (``ci``, ``smoke``) are
applied here, before hashing, so their runs never mix with full-protocol runs.
"""

from __future__ import annotations

import graphlib
import hashlib
import heapq
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kdbench import methods, models
from kdbench.data.identity import content_digest
from kdbench.data.registry import dataset_info, resolve_data_dir
from kdbench.errors import KdbenchError, UnknownNameError, did_you_mean
from kdbench.models import pretrained
from kdbench.recipe import (
    MAX_TRIALS,
    PROFILES,
    Checkpoint,
    CIProfile,
    Profile,
    Recipe,
    Row,
    Training,
    TrainingFields,
    TrainingOverride,
    is_profile,
)

SPEC_VERSION = 1
TEACHER_SEED = 0
SMOKE_EPOCHS, SMOKE_BATCH, SMOKE_TRIALS = 2, 32, 1
# So that every method trains stably on it, the smoke profile caps the LR and trains teachers longer than students.
# The LR: the recipes' 0.05-0.1 is meant for 240 epochs; a few dozen steps from scratch at 0.05 are chaotic (a
# ResNet-32x4 teacher's logits reached rms ~400) and SemCKD's 400x MSE sends deep students (ResNet-110/116) to NaN.
# The teachers: every distiller reads the teacher in eval mode, through BatchNorm running statistics (momentum 0.1)
# that keep 0.9^steps of their initial (0, 1): after 8 steps that is 43%, and in a 110-layer ResNet the mismatch
# compounds block by block (teacher features of rms ~1e4, ~4 in train mode), so VID and SemCKD diverged.
# 12 epochs (48 steps) leave 0.6%.
SMOKE_MAX_LR, SMOKE_TEACHER_EPOCHS = 0.01, 12
NO_OVERRIDE = TrainingOverride()  # a row that keeps the recipe's training
# The most runs one plan may hold: the largest seed table has a few hundred; more is a typo (rows × columns × trials).
MAX_PLAN_RUNS = 5_000


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Spec):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    train_fraction: float = 1.0
    test_fraction: float = 1.0
    # The content digest of a file or folder dataset (kdbench.data.identity); None, left out of the run id,
    # for datasets whose name is their content (CIFAR, md5-checked) or that their options generate.
    content: str | None = None


class TrainSpec(_Spec, TrainingFields):
    """One run's training: the recipe's training fields (recipe.TrainingFields) resolved for the run, i.e. the
    profile's epochs and milestones, the model's LR, the row's overrides and the run's chunks (``_train_spec``).
    ``loss_chunk``: batch-dependent losses are computed per chunk of this many samples (methods.base.per_chunk);
    set only for methods with such losses."""

    def lr_at(self, epoch: int) -> float:
        """Multi-step LR for 1-indexed ``epoch``: decayed once per milestone strictly below it."""
        return self.lr * self.lr_decay ** sum(epoch > m for m in self.milestones)


# Fields added to TrainSpec after SPEC_VERSION 1, with the value every earlier run had (their default): left out of
# the canonical form at that value, so adding a field never renames (and retrains) finished runs.
ADDED_TRAIN_DEFAULTS: dict[str, Any] = {
    "decay_norm_and_bias": True,
    "label_smoothing": 0.0,
    "loss_chunk": None,
    "bn_chunk": None,
    "drop_last": False,
}


class TeacherRef(_Spec):
    model: str
    run_id: str


class CheckpointRef(_Spec):
    """Import weights instead of training: the file's digest is part of the run's identity (its path too when
    no digest is published: the file is then checked against the digest recorded on first use)."""

    path: str
    sha256: str | None
    format: str
    # The authors' release this file is (a key of kdbench/models/pretrained.py's RELEASED): where to download it.
    released: str | None = None


class RunRef(_Spec):
    """A finished run whose final weights this run starts from (e.g. SimKD's sequential training)."""

    method: str
    run_id: str


class RunSpec(_Spec):
    """One fully resolved training run."""

    version: int = SPEC_VERSION
    profile: Profile
    model: str
    method: str
    method_params: dict[str, Any]
    teacher: TeacherRef | None
    init_from: RunRef | None = None
    checkpoint: CheckpointRef | None = None
    data: DataSpec
    train: TrainSpec
    seed: int
    # Which epoch's weights the run hands on (a teacher's students read them): "best" also writes model_best.pt.
    # The default "last" is left out of the canonical JSON: run ids stay as they were.
    keep: Literal["best", "last"] = "last"

    @property
    def dependencies(self) -> list[str]:
        """Runs that must finish before this one: its teacher, and the run it starts from."""
        return [ref.run_id for ref in (self.teacher, self.init_from) if ref is not None]

    def canonical_json(self) -> str:
        """The run's identity: every field but a checkpoint's location when its sha256 names the content, and fields
        added later while they hold the value every earlier run had (``keep`` "last", a dataset without a content
        digest, ``ADDED_TRAIN_DEFAULTS``)."""
        exclude: dict[str, Any] = {}
        if self.checkpoint is not None:
            # The digest names the content (its location is left out); fields added later are left out at None.
            left_out = {"path"} if self.checkpoint.sha256 is not None else set()
            left_out |= {"released"} if self.checkpoint.released is None else set()
            if left_out:
                exclude["checkpoint"] = left_out
        if self.keep == "last":
            exclude["keep"] = True
        if self.data.content is None:
            exclude["data"] = {"content"}
        unchanged = {k for k, v in ADDED_TRAIN_DEFAULTS.items() if getattr(self.train, k) == v}
        if unchanged:
            exclude["train"] = unchanged
        added = methods.get(self.method).added_params if methods.is_implemented(self.method) else {}
        unchanged_params = {k for k, v in added.items() if self.method_params.get(k) == v}
        if unchanged_params:
            exclude["method_params"] = unchanged_params
        return json.dumps(
            self.model_dump(mode="json", exclude=exclude or None),
            sort_keys=True,
            separators=(",", ":"),
        )

    @property
    def run_id(self) -> str:
        digest = hashlib.sha256(self.canonical_json().encode()).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9_.]+", "-", f"{self.method}-{self.model}-s{self.seed}")
        return f"{slug}-{digest}"


@dataclass(frozen=True)
class Cell:
    """One cell of the table: a row (method) × column (pair), backed by zero or more runs.

    ``absent``: the row has no such column (the paper prints "–")."""

    row: str
    column: str
    method: str
    status: Literal["planned", "not_implemented", "absent"]
    run_ids: tuple[str, ...] = ()


@dataclass
class Plan:
    recipe: Recipe
    profile: str
    trials: int
    specs: dict[str, RunSpec] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)

    def ordered(self) -> list[RunSpec]:
        """Runs with every dependency before its dependents (teachers, then students, then their followers)."""
        return dependency_order(self.specs.values())


def identified(recipe: Recipe, data_dir: str | Path | None) -> Recipe:
    """``recipe`` with its dataset's content digest filled in (checked against the recipe's pin, if it has one)."""
    root = resolve_data_dir(data_dir)
    digest = content_digest(recipe.dataset.name, recipe.dataset.options, root)
    pinned = recipe.dataset.content
    if pinned is not None and digest is not None and pinned != digest:
        raise KdbenchError(
            f"recipe {recipe.name}: dataset.content pins {pinned[:12]}…, but the {recipe.dataset.name} data "
            f"under {root} has content {digest[:12]}…: point --data-dir at the pinned data, or remove "
            "dataset.content from the recipe to train on this data (new run ids)."
        )
    if digest is None or digest == pinned:
        return recipe
    return recipe.model_copy(
        update={"dataset": recipe.dataset.model_copy(update={"content": digest})}
    )


def dependency_order(specs: Iterable[RunSpec]) -> list[RunSpec]:
    """``specs`` in a topological order: every run after the runs it depends on (dependencies outside ``specs``
    are ignored). Among the runs that are ready, runs with fewer dependencies (teacher, init_from) come first,
    then the given order: teachers, then students, then their followers, each in plan order."""
    specs = list(specs)
    by_id = {s.run_id: s for s in specs}
    rank = {s.run_id: (len(s.dependencies), k) for k, s in enumerate(specs)}
    graph = graphlib.TopologicalSorter(
        {s.run_id: [d for d in s.dependencies if d in by_id] for s in specs}
    )
    graph.prepare()  # run ids are digests of the specs, so they cannot form a cycle
    ready: list[tuple[tuple[int, int], str]] = []
    order = []
    while graph.is_active():
        for run_id in graph.get_ready():
            heapq.heappush(ready, (rank[run_id], run_id))
        _, run_id = heapq.heappop(ready)
        order.append(by_id[run_id])
        graph.done(run_id)
    return order


def plan(
    recipe: Recipe,
    profile: str = "full",
    *,
    trials: int | None = None,
    columns: list[str] | None = None,
    rows: list[str] | None = None,
    ci_overrides: dict[str, Any] | None = None,
    cell_trials: Mapping[tuple[str, str], int] | None = None,
) -> Plan:
    """Expand ``recipe`` under ``profile`` into runs and cells (optionally a subset of them).

    ``cell_trials``: (row label, column id) → that cell's own trial count, beating ``trials`` (a table record's
    cells reproduced with another ``--trials``: results/tables.py)."""
    if not is_profile(profile):
        raise KdbenchError(
            f"unknown profile {profile!r}.{did_you_mean(profile, PROFILES)} Profiles: {', '.join(PROFILES)}"
        )
    selected_columns = _select(recipe, "column", [c.id for c in recipe.columns], columns)
    selected_rows = _select(
        recipe,
        "row",
        [r.label for r in recipe.rows],
        rows,
        aliases={r.method: r.label for r in recipe.rows},
    )
    n_trials = trials or default_trials(recipe, profile)
    cell_trials = cell_trials or {}
    for n in (n_trials, *cell_trials.values()):
        if not 1 <= n <= MAX_TRIALS:
            raise KdbenchError(
                f"{n} trials per cell: choose 1 to {MAX_TRIALS} (papers report 1 to 5)."
            )
    n_student_runs = (
        len(selected_rows) * len(selected_columns) * max([n_trials, *cell_trials.values()])
    )
    if n_student_runs > MAX_PLAN_RUNS:
        raise KdbenchError(
            f"recipe {recipe.name}: {len(selected_rows)} rows × {len(selected_columns)} columns × {n_trials} "
            f"trials would plan up to {n_student_runs:,} runs, more than the {MAX_PLAN_RUNS:,} one table may "
            "hold; fewer trials, or a subset with --pairs / --methods."
        )
    ci = recipe.profiles.ci.model_copy(
        update={k: v for k, v in (ci_overrides or {}).items() if v is not None}
    )
    data, train_base = _profile_data(recipe, profile, ci), recipe.training

    result = Plan(recipe=recipe, profile=profile, trials=n_trials)
    teacher_ids: dict[str, str] = {}
    same_training: dict[str, RunSpec] = {}
    for key, teacher in recipe.teachers.items():
        spec = _spec(
            profile,
            teacher.model,
            "ce",
            _params(recipe, f"teacher {key}", "ce", None, {}),
            None,
            data,
            train_base,
            ci,
            TEACHER_SEED,
            teacher.training,
            is_teacher=True,
        )
        ckpt = teacher_file(recipe, key, recipe.teacher_source)
        if ckpt is not None and profile != "smoke":  # smoke data has other classes: train instead
            spec = spec.model_copy(
                update={
                    "checkpoint": CheckpointRef(
                        path=ckpt.path,
                        sha256=ckpt.sha256,
                        format=ckpt.format,
                        released=teacher.released,
                    )
                }
            )
        elif teacher.keep != "last":
            spec = spec.model_copy(update={"keep": teacher.keep})
        teacher_ids[key] = spec.run_id
        if (
            spec.keep != "last"
        ):  # the same training keeping only its last epoch is this run (a student row's baseline)
            same_training[spec.model_copy(update={"keep": "last"}).run_id] = spec
        if any(recipe.column(c).teacher == key for c in selected_columns):
            result.specs[spec.run_id] = spec

    for row in (r for r in recipe.rows if r.label in selected_rows):
        for column_id in selected_columns:
            column = recipe.column(column_id)
            if not row.has_column(column_id):
                result.cells.append(Cell(row.label, column_id, row.method, "absent"))
                continue
            if row.is_teacher_row:
                result.cells.append(
                    Cell(
                        row.label, column_id, row.method, "planned", (teacher_ids[column.teacher],)
                    )
                )
                continue
            if not methods.is_implemented(row.method):
                _check_known_method(recipe, row.method)
                result.cells.append(Cell(row.label, column_id, row.method, "not_implemented"))
                continue
            overrides = {**row.params, **row.params_by_column.get(column_id, {})}
            # Quick profiles shorten a method's epoch-valued parameters (e.g. its pre-training stage) like the
            # main schedule.
            schedule = (_profile_epochs(profile, ci, train_base), train_base.epochs)
            params = _params(
                recipe,
                row.label,
                row.method,
                _variant(recipe, row.method, row.variant),
                overrides,
                schedule if profile != "full" else None,
            )
            needs_teacher = methods.get(row.method).needs.teacher
            teacher_model = recipe.teachers[column.teacher].model
            teacher_ref = (
                TeacherRef(
                    model=models.canonical_name(teacher_model), run_id=teacher_ids[column.teacher]
                )
                if needs_teacher
                else None
            )
            run_ids = []
            for seed in range(cell_trials.get((row.label, column_id), n_trials)):
                spec = _spec(
                    profile,
                    column.student,
                    row.method,
                    params,
                    teacher_ref,
                    data,
                    train_base,
                    ci,
                    seed,
                    _merged(column.training, row.training),
                )
                if row.after is not None:
                    spec = spec.model_copy(
                        update={"init_from": _preceding_run(result, recipe, row, column_id, seed)}
                    )
                spec = same_training.get(spec.run_id, spec)
                result.specs.setdefault(spec.run_id, spec)
                run_ids.append(spec.run_id)
            result.cells.append(Cell(row.label, column_id, row.method, "planned", tuple(run_ids)))
    return result


def default_trials(recipe: Recipe, profile: str) -> int:
    """Trials per cell without ``--trials``: the recipe's (the smoke profile: at most :data:`SMOKE_TRIALS`)."""
    return min(recipe.trials, SMOKE_TRIALS) if profile == "smoke" else recipe.trials


def _spec(
    profile: Profile,
    model: str,
    method: str,
    params: dict[str, Any],
    teacher: TeacherRef | None,
    data: DataSpec,
    base: Training,
    ci: CIProfile,
    seed: int,
    override: TrainingOverride = NO_OVERRIDE,
    is_teacher: bool = False,
) -> RunSpec:
    model = models.canonical_name(model)
    batch_dependent = methods.get(method).needs.batch_dependent_loss
    train = _train_spec(base, model, profile, ci, override, is_teacher, batch_dependent)
    return RunSpec(
        profile=profile,
        model=model,
        method=method,
        method_params=params,
        teacher=teacher,
        data=data,
        train=train,
        seed=seed,
    )


def teacher_file(recipe: Recipe, key: str, source: str) -> Checkpoint | None:
    """The file teacher ``key`` is imported from when its teachers come from ``source`` (None: it is trained):
    its ``checkpoint``, or the authors' release it names (kdbench/models/pretrained.py), which must be of the
    teacher's own network."""
    teacher = recipe.teachers[key]
    if source == "trained" or teacher.released is None:
        return None if source == "trained" else teacher.checkpoint
    entry = pretrained.RELEASED.get(teacher.released)
    if entry is None:
        raise UnknownNameError("released teacher", teacher.released, pretrained.RELEASED)
    if models.canonical_name(entry.model) != models.canonical_name(teacher.model):
        raise KdbenchError(
            f"recipe {recipe.name}, teacher {key!r} ({teacher.model}) names the released file "
            f"{teacher.released!r}, which is a {entry.model}: name the release of this network."
        )
    return Checkpoint(
        path=entry.path, sha256=entry.sha256, format=entry.format, source=entry.source
    )


def _merged(column: TrainingOverride, row: TrainingOverride) -> TrainingOverride:
    """A column's training overrides with the row's own values on top."""
    return column.model_copy(update=row.model_dump(exclude_none=True))


def _chunk(recipe_chunk: int, recipe_batch: int, batch_size: int) -> int:
    """A recipe's per-GPU chunk (loss_chunk, bn_chunk) for a run of ``batch_size``. Another batch size (the smoke
    profile's, a row's override) keeps the number of chunks per batch, i.e. the original GPU count, as far as it divides."""
    if batch_size == recipe_batch:
        return recipe_chunk
    chunk = max(1, batch_size // (recipe_batch // recipe_chunk))
    while batch_size % chunk:
        chunk -= 1
    return chunk


def _preceding_run(result: Plan, recipe: Recipe, row: Row, column_id: str, seed: int) -> RunRef:
    """The run of row ``row.after`` in the same column and trial that ``row`` continues from."""
    assert row.after is not None  # called only for a row that continues another
    labels = [r.label for r in recipe.rows]
    if row.after not in labels or labels.index(row.after) >= labels.index(row.label):
        raise KdbenchError(
            f"recipe {recipe.name}, row {row.label!r}: 'after: {row.after}' must name an earlier row "
            f"of the recipe.{did_you_mean(row.after, labels)}"
        )
    cell = next((c for c in result.cells if c.row == row.after and c.column == column_id), None)
    if cell is None or cell.status != "planned" or seed >= len(cell.run_ids):
        raise KdbenchError(
            f"recipe {recipe.name}, row {row.label!r} continues row {row.after!r}, "
            f"which has no run for column {column_id} trial {seed} (not implemented or not selected)."
        )
    return RunRef(method=result.specs[cell.run_ids[seed]].method, run_id=cell.run_ids[seed])


def _variant(recipe: Recipe, method: str, row_variant: str | None) -> str | None:
    """The row's own variant, else the protocol preset's variant of this method if it has one."""
    preset = recipe.protocol.preset
    if row_variant is None and preset is not None and preset in methods.get(method).variants:
        return preset
    return row_variant


def _params(
    recipe: Recipe,
    label: str,
    method: str,
    variant: str | None,
    overrides: dict[str, Any],
    schedule: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The row's method parameters; ``schedule`` (the run's epochs, the recipe's): scale the epoch-valued ones."""
    where = f"recipe {recipe.name}, row {label!r} (method {method})"
    try:
        params = methods.resolve_params(method, variant, overrides)
        if schedule is not None:
            params = params.scale_epochs(*schedule)
        return params.model_dump(mode="json")
    except UnknownNameError as exc:
        raise KdbenchError(f"{where}: {exc}") from None
    except ValidationError as exc:
        valid = list(methods.get(method).Params.model_fields)
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown parameter {key!r}.{did_you_mean(key, valid)}")
            else:
                problems.append(f"parameter {key!r}: {err['msg']} (got {err.get('input')!r})")
        raise KdbenchError(
            f"{where}: invalid parameters: {'; '.join(problems)}. Parameters of {method}: {', '.join(valid)}"
        ) from None


def _check_known_method(recipe: Recipe, method: str) -> None:
    if not methods.is_known(method):
        known = methods.known_names()
        raise KdbenchError(
            f"recipe {recipe.name}: unknown method {method!r}.{did_you_mean(method, known)} "
            f"Known methods: {', '.join(known)}"
        )


def _select(
    recipe: Recipe,
    kind: str,
    available: list[str],
    wanted: list[str] | None,
    aliases: dict[str, str] | None = None,
) -> list[str]:
    if not wanted:
        return available
    aliases = aliases or {}
    chosen = []
    for name in wanted:
        resolved = name if name in available else aliases.get(name)
        if resolved is None:
            raise KdbenchError(
                f"recipe {recipe.name} has no {kind} {name!r}.{did_you_mean(name, available)} "
                f"{kind.capitalize()}s: {', '.join(available)}"
            )
        chosen.append(resolved)
    return [a for a in available if a in chosen]


def _profile_data(recipe: Recipe, profile: str, ci: CIProfile) -> DataSpec:
    if profile == "smoke":  # the dataset's stand-in (DatasetInfo.smoke): small synthetic data
        name, options = dataset_info(recipe.dataset.name).smoke.for_options(recipe.dataset.options)
        return DataSpec(name=name, options=options)
    content = recipe.dataset.content
    if profile == "ci":
        return DataSpec(
            name=recipe.dataset.name,
            options=recipe.dataset.options,
            train_fraction=ci.train_fraction,
            test_fraction=ci.test_fraction,
            content=content,
        )
    return DataSpec(name=recipe.dataset.name, options=recipe.dataset.options, content=content)


def _profile_epochs(profile: str, ci: CIProfile, base: Training, is_teacher: bool = False) -> int:
    smoke = SMOKE_TEACHER_EPOCHS if is_teacher else SMOKE_EPOCHS
    return {"smoke": smoke, "ci": ci.epochs}.get(profile, base.epochs)


def _train_spec(
    base: Training,
    model: str,
    profile: str,
    ci: CIProfile,
    override: TrainingOverride = NO_OVERRIDE,
    is_teacher: bool = False,
    batch_dependent_loss: bool = False,
) -> TrainSpec:
    """The run's schedule: the recipe's training with the row's ``override``, shaped by the profile
    (smoke: LR at most SMOKE_MAX_LR, a teacher trained SMOKE_TEACHER_EPOCHS). ``loss_chunk`` only for a method
    with ``batch_dependent_loss``."""
    row_values = override.model_dump(exclude_none=True)
    # the original GPU count is recipe_batch / chunk, whatever a row's batch
    recipe_batch = base.batch_size
    base = base.model_copy(
        update={**row_values, "lr_by_model": {} if "lr" in row_values else base.lr_by_model}
    )
    lr_by_model = {models.canonical_name(k): v for k, v in base.lr_by_model.items()}
    epochs = _profile_epochs(profile, ci, base, is_teacher)
    lr = lr_by_model.get(model, base.lr)
    if profile == "smoke":
        lr = min(lr, SMOKE_MAX_LR)
    batch = SMOKE_BATCH if profile == "smoke" else base.batch_size
    # Shorter profiles keep the schedule's shape: milestones scale with the epoch count.
    milestones = (
        tuple(max(1, round(m * epochs / base.epochs)) for m in base.milestones)
        if epochs != base.epochs
        else base.milestones
    )
    chunks = {
        name: None if chunk is None else _chunk(chunk, recipe_batch, batch)
        for name, chunk in (
            ("loss_chunk", base.loss_chunk if batch_dependent_loss else None),
            ("bn_chunk", base.bn_chunk),
        )
    }
    resolved = {"epochs": epochs, "batch_size": batch, "lr": lr, "milestones": milestones, **chunks}
    return TrainSpec.model_validate(
        {**base.model_dump(include=set(TrainSpec.model_fields)), **resolved}
    )
