"""The recipe schema: typed, frozen models of one paper table.

A recipe is plain YAML describing one paper table: the teachers, the teacher→student columns,
the method rows, the training protocol and the published numbers. It is read with
``yaml.safe_load`` (no code, no object construction; ``loading.py``) and validated into these models.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal, TypeGuard, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from kdbench.errors import KdbenchError, did_you_mean

Profile = Literal["full", "ci", "smoke"]
PROFILES: tuple[Profile, ...] = get_args(Profile)


def is_profile(name: str) -> TypeGuard[Profile]:
    """Whether ``name`` is one of :data:`PROFILES` (narrows it for the type checker)."""
    return name in PROFILES


# Bounds that no real table comes near (the seed papers: ≤ 5 trials, ≤ 240 epochs) but that stop a typo such as
# ``trials: 1000000`` from planning for minutes or queueing a million runs (README: "What survives what").
MAX_TRIALS = 100
MAX_EPOCHS = 10_000


class _Strict(BaseModel):
    # allow_inf_nan=False: YAML's .inf / .nan are never a valid recipe number (an infinite LR, a NaN weight decay).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic takes ``true`` as 1 for an int or float field (``epochs: true`` would train one epoch): refused,
        also inside a list or mapping of numbers (``milestones: [true]``)."""
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _is_number_type(field.annotation):
            items = (
                value.values()
                if isinstance(value, dict)
                else value
                if isinstance(value, (list, tuple))
                else [value]
            )
            if any(isinstance(v, bool) for v in items):
                raise ValueError("expected a number, got true/false")
        return value


def _is_number_type(annotation: Any) -> bool:
    """``int``, ``float``, optionally ``| None``, or a tuple/list/dict of them."""
    annotation = strip_optional(annotation)
    origin = get_origin(annotation)
    if origin in (tuple, list):
        annotation = get_args(annotation)[0]
    elif origin is dict:
        annotation = get_args(annotation)[1]
    return annotation in (int, float)


_VALUE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(?:(?:±|\+-|\+/-)\s*(\d+(?:\.\d+)?))?\s*$")


class PaperValue(_Strict):
    """A published number: mean, and the ± std where the paper prints one.

    ``decimals``: how many digits the paper prints after the point (from a quoted value; else None).
    """

    mean: float
    std: float | None = None
    decimals: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return {"mean": value}
        if isinstance(value, str):
            match = _VALUE.match(value)
            if not match:
                raise ValueError(f"expected a number or 'mean ± std', got {value!r}")
            mean, std = match.groups()
            decimals = len(mean.partition(".")[2])
            return {"mean": float(mean), "std": float(std) if std else None, "decimals": decimals}
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return {"mean": value[0], "std": value[1]}
        return value

    def __str__(self) -> str:
        return f"{self.mean:.2f}" if self.std is None else f"{self.mean:.2f} ± {self.std:.2f}"


class Protocol(_Strict):
    """Which training protocol the recipe follows, recorded with every result.

    ``preset`` names the method variant every row uses unless it names its own: e.g. ``simkd``
    (SimKD's code: 1·CE + 1·KD + β·method) or ``crd`` (RepDistiller: 1·CE + β·method, KD row
    0.1·CE + 0.9·KD). Methods without a variant of that name use their defaults.
    """

    name: str
    follows: str
    preset: str | None = None
    # The arithmetic the authors' runs of this table used: `faithful` (IEEE fp32: every table whose authors trained
    # on pre-Ampere GPUs or without TF32) or `fp32` (TF32 convolutions: SimKD's ImageNet runs on A40s).
    # `--precision` chooses what a run computes with (default bf16 on CUDA); docs/protocol-choices.md, "Precision".
    precision: Literal["faithful", "fp32"] = "faithful"
    notes: str = ""


class DatasetRef(_Strict):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    # The data's content digest (kdbench.data.identity). `reproduce` fills it in before planning, so a
    # rebuilt file gets new run ids; a recipe that sets it pins the data and is refused on other data.
    content: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class TrainingFields(BaseModel):
    """The training fields, written once. LR for 1-indexed epoch e = lr · lr_decay^#{m ∈ milestones : e > m}.

    A recipe's :class:`Training` adds ``lr_by_model`` and the recipe's checks, a row's
    :class:`TrainingOverride` is each of them optional, and a run's ``plan.TrainSpec`` holds them
    resolved for that run (the profile's epochs and milestones, the model's LR, the run's chunks). A new
    training knob is one field here (and, to keep finished runs' ids, one entry of
    ``plan.ADDED_TRAIN_DEFAULTS``).
    """

    epochs: int = Field(gt=0, le=MAX_EPOCHS)
    batch_size: int = Field(gt=0)
    lr: float = Field(gt=0)
    milestones: tuple[int, ...] = ()
    lr_decay: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0)
    nesterov: bool = False
    weight_decay: float = Field(default=5e-4, ge=0)
    # False: no weight decay on 1-D parameters (BN γ/β and biases), as timm-style code bases filter
    # them (DIST's ImageNet B1); True: decay everything, as RepDistiller/SimKD do.
    decay_norm_and_bias: bool = True
    # Label smoothing ε of every cross-entropy term against the labels (DIST Table 10's "w/ LS").
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    # The original run's per-GPU batch, for methods whose losses depend on the batch (DIST, MLKD): they
    # compute those losses per chunk of this many samples, as the original GPUs did (methods.base.per_chunk).
    loss_chunk: int | None = Field(default=None, gt=0)
    # The original run's per-GPU batch for BatchNorm (every method): each chunk is normalised on its own
    # and the first keeps the running statistics, as on the original GPUs without SyncBN
    # (models.per_gpu_batchnorm). None: per process, as DDP does.
    bn_chunk: int | None = Field(default=None, gt=0)
    # Skip each epoch's last, smaller batch, as loaders built with drop_last=True do (DIST's code:
    # hunto/image_classification_sota lib/dataset/builder.py:78-81). Methods with modules sized by the
    # batch (SemCKD) always skip it.
    drop_last: bool = False

    @model_validator(mode="after")
    def _chunks_divide_batch(self) -> TrainingFields:
        """``loss_chunk`` and ``bn_chunk`` (when set) divide ``batch_size``."""
        for name in ("loss_chunk", "bn_chunk"):
            chunk = getattr(self, name)
            if chunk is not None and self.batch_size % chunk:
                raise ValueError(
                    f"{name} {chunk} must divide batch_size {self.batch_size} "
                    f"(it is the original per-GPU batch: batch_size / number of GPUs)"
                )
        return self


class Training(_Strict, TrainingFields):
    """A recipe's optimisation schedule: :class:`TrainingFields`, and an LR per student model."""

    lr_by_model: dict[str, float] = Field(default_factory=dict)

    @field_validator("milestones")
    @classmethod
    def _milestones_in_schedule(
        cls, value: tuple[int, ...], info: ValidationInfo
    ) -> tuple[int, ...]:
        check_milestones(value, info.data.get("epochs"))
        return value

    @field_validator("lr_by_model")
    @classmethod
    def _positive_lrs(cls, value: dict[str, float]) -> dict[str, float]:
        if any(lr <= 0 for lr in value.values()):
            raise ValueError(f"every LR must be > 0, got {value}")
        return value


def check_milestones(milestones: tuple[int, ...] | None, epochs: int | None) -> None:
    """Raise ValueError unless ``milestones`` increase strictly and lie in 1..``epochs`` (when known): an LR decay
    after an epoch that is never trained, or listed out of order, is a typo, not a schedule."""
    if not milestones:
        return
    if list(milestones) != sorted(set(milestones)):
        raise ValueError("milestones must increase strictly (each epoch once)")
    if milestones[0] < 1 or (epochs is not None and milestones[-1] > epochs):
        raise ValueError(
            f"milestones must lie in 1..{epochs if epochs is not None else 'epochs'} (the LR decays after "
            "these epochs)"
        )


class _OverrideChecks(_Strict):
    """The checks of :class:`TrainingOverride` beyond its fields' own constraints."""

    @field_validator("milestones", check_fields=False)
    @classmethod
    def _milestones_in_schedule(
        cls, value: tuple[int, ...] | None, info: ValidationInfo
    ) -> tuple[int, ...] | None:
        # without epochs: the recipe's, in Recipe._cross_references
        check_milestones(value, info.data.get("epochs"))
        return value


# Training fields a row cannot set: the chunks are the original run's per-GPU batch (its GPU count), which
# the plan keeps for every run's batch size; ``lr_by_model`` is not a TrainingFields field (a row's ``lr``
# beats it).
NOT_OVERRIDABLE = frozenset({"loss_chunk", "bn_chunk"})


def _optional(field: FieldInfo) -> tuple[Any, FieldInfo]:
    """``field`` as an optional field: its type ``| None``, default None, its constraints kept."""
    assert field.annotation is not None  # every TrainingFields field is annotated
    return field.annotation | None, FieldInfo.merge_field_infos(field, default=None)


if TYPE_CHECKING:  # the type checker cannot follow create_model: it sees the base class

    class TrainingOverride(_OverrideChecks):
        """A row's own values for some training fields (generated below from :class:`TrainingFields`)."""

        def __getattr__(self, name: str) -> Any: ...  # the generated fields, each optional

else:
    TrainingOverride = create_model(
        "TrainingOverride",
        __base__=_OverrideChecks,
        __module__=__name__,
        __doc__="A row's own values for some training fields (e.g. Table S.6's LR sweep); an ``lr`` here beats "
        "``lr_by_model``. Generated from :class:`TrainingFields`: every field but :data:`NOT_OVERRIDABLE`, optional.",
        **{
            name: _optional(field)
            for name, field in TrainingFields.model_fields.items()
            if name not in NOT_OVERRIDABLE
        },
    )


class Checkpoint(_Strict):
    """A teacher imported from a file instead of trained: verified by sha256 before use."""

    path: str  # absolute, or relative to the data directory (--data-dir / $KDBENCH_DATA)
    # The file's sha256, or a prefix of at least 8 hex digits (torch.hub names files <name>-<8 digits>.pth).
    # None: no digest is published; the first file seen is recorded and later ones must match it
    # (trust on first use, DATA_DIR/teachers/sha256-first-use.json; kdbench/train/checkpoints.py).
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{8,64}$")
    # How parameter names are matched (the file's layout is detected whatever the format: a bare state dict,
    # {"model": …} / {"state_dict": …}, DataParallel "module." prefixes, a distiller's "student." part):
    # kdbench: kdbench's names (e.g. a model.pt of another results dir); repdistiller: the RepDistiller zoo's
    # names (RepDistiller, mdistiller, SimKD and DIST files), mapped to ours in registration order with every
    # shape checked; torchvision: a torch.hub state dict (e.g. resnet34-b627a593.pth,
    # kdbench/models/pretrained.py), loaded by name.
    format: Literal["kdbench", "repdistiller", "torchvision"] = "kdbench"
    source: str = ""  # where the file comes from, e.g. "CRD cifar_teachers.tar"


TeacherSource = Literal["released", "trained"]


class Teacher(_Strict):
    model: str
    label: str
    paper: PaperValue | None = None
    checkpoint: Checkpoint | None = None
    # The authors' released file of this teacher: a key of kdbench/models/pretrained.py's RELEASED
    # (e.g. crd/resnet32x4), imported when the recipe's teacher_source is 'released'.
    released: str | None = None
    # Which epoch's weights a trained teacher hands to its students: the last (kdbench's default) or the best
    # test epoch (SimKD's train_teacher.py:224-242 saves only {model}_best.pth).
    keep: Literal["best", "last"] = "last"
    # Training fields this teacher's run sets differently (e.g. DIST Table 10's label-smoothed teacher).
    training: TrainingOverride = TrainingOverride()

    @model_validator(mode="after")
    def _one_file(self) -> "Teacher":
        if self.checkpoint is not None and self.released is not None:
            raise ValueError(
                "a teacher names either a 'checkpoint' file or a 'released' one, not both"
            )
        return self


class Column(_Strict):
    """One teacher→student pair of the table (optionally one of the run's evaluation heads)."""

    id: str
    teacher: str
    student: str
    label: str
    # Read this evaluation head's accuracy instead of the method's prediction, e.g. SimKD's
    # "student_classifier" in joint training (Tables S.4/S.5); columns of one pair share their runs.
    head: str | None = None
    # Which accuracy the column prints: top-1 (default) or top-5 (DIST Table 2 prints both).
    measure: Literal["top1", "top5"] = "top1"
    # Read the runs at this epoch of the full protocol instead of at their end (SimKD Table 3: 1/4, 1/2
    # and all of 120 epochs); shorter profiles scale it like the milestones.
    at_epoch: int | None = Field(default=None, gt=0)
    # Which epoch this column reads, over the recipe's `metric` (a row's own `metric` must agree): best or last.
    # With `at_epoch`, 'last' is the accuracy at that epoch itself, 'best' the best epoch up to it.
    metric: Literal["best", "last"] | None = None
    # Training fields every student run of this column sets differently (a row's own values win).
    training: TrainingOverride = TrainingOverride()

    @model_validator(mode="after")
    def _head_is_top1(self) -> "Column":
        if self.head is not None and (self.measure != "top1" or self.at_epoch is not None):
            raise ValueError(
                "an evaluation-head column reads the head's top-1 at the run's end: 'measure' and 'at_epoch' "
                "cannot be combined with 'head'"
            )
        return self


QuantitySource = Literal["test_loss", "pruning_cost", "added_params_ratio"]


class Quantity(_Strict):
    """A number the table prints per cell besides accuracy.

    ``test_loss``: a loss term measured on the test set during evaluation (``term`` names it, e.g.
    ``simkd``), mean ± std over trials. ``pruning_cost``: SimKD Eq. 6's loss of pruning ratio against
    the plain student, (#inference params − #student params)/#teacher params, in %.
    ``added_params_ratio``: the method's own inference modules (SimKD's projector) / #student params, in %.
    The last two are computed from the networks, not trained.
    """

    id: str
    label: str
    source: QuantitySource
    term: str | None = None
    unit: str = ""
    # A measured quantity's equivalence margin, in its own unit (the verdict's δ; kdbench/results/verdict.py).
    margin: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _term_for_losses(self) -> "Quantity":
        if (self.source == "test_loss") != (self.term is not None):
            raise ValueError(
                "'term' names the measured loss term of a test_loss quantity (and only of one)"
            )
        if (self.source == "test_loss") != (self.margin is not None):
            raise ValueError(
                "'margin' (the equivalence margin, in the quantity's own unit) is required for a test_loss "
                "quantity and only for one: computed quantities match at the printed precision"
            )
        return self


class Row(_Strict):
    """One row of the table: a method (with its parameters) or the teachers' own accuracy."""

    label: str
    method: str
    variant: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    # Parameters that differ by pair (e.g. DKD's β, ReviewKD's weight): column id → overrides.
    params_by_column: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Start each run from the final weights of this earlier row's run (same pair, same trial).
    after: str | None = None
    # Training fields this row sets differently from the recipe's (e.g. its own LR).
    training: TrainingOverride = TrainingOverride()
    # The columns this row has (default: all); the others print "–", as in the paper.
    columns: list[str] | None = None
    paper: dict[str, PaperValue] = Field(default_factory=dict)
    # Published values of the recipe's quantities: column id → quantity id → value.
    paper_quantities: dict[str, dict[str, PaperValue]] = Field(default_factory=dict)
    # The paper copied this row's numbers from another paper (name it): shown as "literature".
    literature: str | None = None
    # Which epoch this row's published numbers are from, over the recipe's `metric` (e.g. CRD's last-epoch numbers
    # copied into a best-epoch table).
    metric: Literal["best", "last"] | None = None
    note: str = ""

    @property
    def is_teacher_row(self) -> bool:
        return self.method == "teacher"

    def has_column(self, column_id: str) -> bool:
        return self.columns is None or column_id in self.columns


class CIProfile(_Strict):
    """The `ci` profile: a small real-data subset, so CI runs the real pipeline in minutes."""

    train_fraction: float = Field(default=0.02, gt=0, le=1)
    test_fraction: float = Field(default=0.1, gt=0, le=1)
    epochs: int = Field(default=2, gt=0, le=MAX_EPOCHS)


class Profiles(_Strict):
    ci: CIProfile = CIProfile()


class Recipe(_Strict):
    name: str
    paper: str
    table: str
    title: str
    source: str
    protocol: Protocol
    dataset: DatasetRef
    training: Training
    trials: int = Field(gt=0, le=MAX_TRIALS)
    # Trials behind each published mean, when the paper states it (None: not stated).
    paper_trials: int | None = Field(default=None, gt=0)
    metric: Literal["best", "last"] = "best"
    # The verdicts' equivalence margin δ in accuracy points (None: kdbench/results/verdict.py's DEFAULT_MARGIN).
    margin: float | None = Field(default=None, gt=0)
    # released: teachers that name a checkpoint or an authors' release are imported from it (what the papers
    # did: most tables distil from released teachers); trained: kdbench trains every teacher (--teachers).
    teacher_source: TeacherSource = "released"
    teachers: dict[str, Teacher]
    columns: list[Column]
    rows: list[Row]
    quantities: list[Quantity] = Field(default_factory=list)
    profiles: Profiles = Profiles()

    @field_validator("name")
    @classmethod
    def _name_is_slug(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", v):
            raise ValueError(
                "recipe names are lower-case letters, digits and '-', e.g. 'simkd-table1'"
            )
        return v

    @model_validator(mode="after")
    def _cross_references(self) -> "Recipe":
        column_ids = [c.id for c in self.columns]
        if len(set(column_ids)) != len(column_ids):
            raise ValueError(f"column ids must be unique: {column_ids}")
        labels = [r.label for r in self.rows]
        for i, label in enumerate(labels):
            if label in labels[:i]:  # cells, --methods and 'after' find a row by its label
                raise ValueError(
                    f"rows[{i}].label {label!r} is already the label of rows[{labels.index(label)}]: "
                    "row labels must be unique"
                )
        for where, override in [
            *((f"teachers.{k}", t.training) for k, t in self.teachers.items()),
            *((f"columns[{i}]", c.training) for i, c in enumerate(self.columns)),
            *((f"rows[{i}]", r.training) for i, r in enumerate(self.rows)),
        ]:
            if override.epochs is None and override.milestones is not None:
                try:
                    check_milestones(override.milestones, self.training.epochs)
                except ValueError as exc:
                    raise ValueError(
                        f"{where}.training.milestones {list(override.milestones)}: {exc}; it trains the "
                        f"recipe's training.epochs ({self.training.epochs})"
                    ) from None
        for i, col in enumerate(self.columns):
            if col.at_epoch is not None and col.at_epoch > self.training.epochs:
                raise ValueError(
                    f"columns[{i}].at_epoch {col.at_epoch} is after the last epoch ({self.training.epochs})"
                )
            if col.teacher not in self.teachers:
                raise ValueError(
                    f"columns[{i}].teacher {col.teacher!r} is not a key of 'teachers'."
                    f"{did_you_mean(col.teacher, self.teachers)} Teachers: {', '.join(self.teachers)}"
                )
        quantity_ids = [q.id for q in self.quantities]
        for i, row in enumerate(self.rows):
            own = row.columns if row.columns is not None else column_ids
            for key in [
                *row.paper,
                *row.params_by_column,
                *row.paper_quantities,
                *(row.columns or []),
            ]:
                if key not in column_ids:
                    raise ValueError(
                        f"rows[{i}] ({row.label}) names column {key!r}, which is not a column id."
                        f"{did_you_mean(key, column_ids)}"
                    )
                if key not in own:
                    raise ValueError(
                        f"rows[{i}] ({row.label}) gives a value for column {key!r}, which is not in its 'columns'."
                    )
            for col in self.columns:
                if row.metric and col.metric and row.metric != col.metric and col.id in own:
                    raise ValueError(
                        f"rows[{i}] ({row.label}) has metric {row.metric!r} but column {col.id!r} has "
                        f"{col.metric!r}: a cell reads one epoch; make them agree or drop one."
                    )
            for column_id, values in row.paper_quantities.items():
                for key in values:
                    if key not in quantity_ids:
                        raise ValueError(
                            f"rows[{i}] ({row.label}) names quantity {key!r} (column {column_id}), which is not a "
                            f"quantity id.{did_you_mean(key, quantity_ids)} Quantities: {', '.join(quantity_ids) or 'none'}"
                        )
        return self

    def column(self, column_id: str) -> Column:
        return next(c for c in self.columns if c.id == column_id)

    def cell_metric(self, row: Row, column: Column) -> Literal["best", "last"]:
        """The epoch a cell reads: the row's, else the column's, else the recipe's ``metric``."""
        return row.metric or column.metric or self.metric

    def with_teacher_source(self, source: str | None) -> "Recipe":
        """This recipe with its teachers taken from ``source`` (``released`` or ``trained``; None: unchanged)."""
        if source is None:
            return self
        if source not in get_args(TeacherSource):
            raise KdbenchError(
                f"unknown teacher source {source!r}.{did_you_mean(source, get_args(TeacherSource))} "
                "Use released (the authors' files, where the recipe names them) or trained."
            )
        return self.model_copy(update={"teacher_source": source})


class CatalogEntry(_Strict):
    """A seed-paper table without a recipe file, and why (``kdbench/recipes/catalog.yaml``)."""

    name: str
    paper: str
    table: str
    status: Literal["planned", "not supported"]
    reason: str


def strip_optional(annotation: Any) -> Any:
    """``X | None`` → ``X`` (the first non-None member of a union)."""
    if (
        get_origin(annotation) is Union
        or str(get_origin(annotation)) == "<class 'types.UnionType'>"
    ):
        return next(a for a in get_args(annotation) if a is not type(None))
    return annotation
