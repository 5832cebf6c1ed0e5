"""The records a run writes: :class:`EpochRecord` (a line of ``metrics.jsonl``) and :class:`RunResult`
(``result.json``), typed, with a schema version.

On disk both keep the key names kdbench has always written (docs/user-guide.md, "What a run leaves
behind"), so that scripts reading the files keep working, plus ``"schema_version": 1``. An epoch record's
structure is in its key names there: ``loss_<term>`` (a training loss term), ``test_top1``/``test_top5``
(the method's prediction), ``test_top1_<head>``/``test_top5_<head>`` (an extra evaluation head),
``test_loss_<term>`` (a test-set loss term), and ``"phase"`` only on records outside the main schedule.
:meth:`EpochRecord.from_json` decodes them into fields, :meth:`EpochRecord.to_json` encodes them back.

A file without ``schema_version`` was written before versions existed; its layout is the same (version 0),
so it is read into the same models, and never rewritten (its checksum stays valid). A version newer than
:data:`SCHEMA_VERSION` is refused with :class:`UnknownSchemaVersion`: a newer kdbench wrote it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kdbench.errors import KdbenchError

# Version 1: the layout of version 0 (files without the key) plus ``schema_version``. Bump it when a key's
# meaning changes, and teach ``from_json`` to read the older versions.
SCHEMA_VERSION = 1

Phase = Literal["main", "init", "imported"]
MAIN_HEAD = ""  # the head of the method's prediction (``test_top1``); extra heads are named


class UnknownSchemaVersion(KdbenchError):
    """A record written by a newer kdbench (or not a kdbench record)."""


def _version(data: Any, what: str) -> int:
    """The schema version of a decoded JSON record (0: written before versions existed)."""
    if not isinstance(data, dict):
        raise ValueError(f"{what} is a JSON {type(data).__name__}, not an object")
    version = data.get("schema_version", 0)
    if type(version) is not int or version < 0:
        raise ValueError(f"{what} has schema_version {version!r}, not a version number")
    if version > SCHEMA_VERSION:
        raise UnknownSchemaVersion(
            f"{what} has schema version {version}, and this kdbench reads versions up to "
            f"{SCHEMA_VERSION}: it was written by a newer kdbench. Upgrade kdbench "
            "(pip install -U kdbench) to read it."
        )
    return version


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TopK(_Record):
    """Test accuracy (%) of one head."""

    top1: float
    top5: float


class TrainStats(_Record):
    """An epoch's training statistics (train/loop.py ``_train_epoch``)."""

    loss: float  # the sum of ``losses``
    losses: dict[str, float]  # loss terms, means over the epoch's steps
    train_top1: float
    images_per_s: float


class TestStats(_Record):
    """An evaluation on the test set (train/loop.py ``evaluate``)."""

    test: dict[str, TopK]  # by head; MAIN_HEAD: the method's prediction
    test_losses: dict[str, float]  # test-set loss terms (a method's ``forward_test_terms``), means

    @property
    def top1(self) -> float:
        return self.test[MAIN_HEAD].top1

    @property
    def top5(self) -> float:
        return self.test[MAIN_HEAD].top5


class EpochRecord(_Record):
    """One finished epoch: of the main schedule, of a method's pre-training stage (``init``, its own epoch
    count), or the single evaluation of an imported checkpoint (``imported``, epoch 0)."""

    phase: Phase = "main"
    epoch: int
    lr: float | None = None  # the epoch's learning rate (not recorded for an imported checkpoint)
    loss: float | None = None  # the training loss: the sum of ``losses``
    losses: dict[str, float] = Field(default_factory=dict)  # training loss terms, epoch means
    train_top1: float | None = None  # training accuracy (%) of the batches' own predictions
    images_per_s: float | None = None  # training throughput of the epoch
    test: dict[str, TopK] = Field(
        default_factory=dict
    )  # by head; MAIN_HEAD: the method's prediction
    test_losses: dict[str, float] = Field(default_factory=dict)  # test-set loss terms, means

    @classmethod
    def of(
        cls,
        epoch: int,
        phase: Phase = "main",
        lr: float | None = None,
        train: TrainStats | None = None,
        test: TestStats | None = None,
    ) -> EpochRecord:
        """The record of an epoch with these statistics."""
        return cls(phase=phase, epoch=epoch, lr=lr, **dict(train or {}), **dict(test or {}))

    @property
    def is_main(self) -> bool:
        """An epoch of the main schedule (what ``epochs``, ``best_epoch`` and the curves count)."""
        return self.phase == "main"

    @property
    def test_top1(self) -> float:
        return self.test[MAIN_HEAD].top1

    @property
    def test_top5(self) -> float:
        return self.test[MAIN_HEAD].top5

    def to_json(self) -> dict[str, Any]:
        """The record as a metrics.jsonl line holds it (module docstring)."""
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        out.update(self.values())
        if not self.is_main:
            out["phase"] = self.phase
        out["epoch"] = self.epoch
        return out

    def values(self) -> dict[str, float]:
        """The record's numbers under their metrics.jsonl keys (all but ``epoch`` and ``phase``)."""
        out: dict[str, float] = {}
        for key in ("lr", "loss"):
            if (value := getattr(self, key)) is not None:
                out[key] = value
        out.update({f"loss_{term}": value for term, value in self.losses.items()})
        for key in ("train_top1", "images_per_s"):
            if (value := getattr(self, key)) is not None:
                out[key] = value
        for head, top in self.test.items():
            suffix = f"_{head}" if head != MAIN_HEAD else ""
            out[f"test_top1{suffix}"], out[f"test_top5{suffix}"] = top.top1, top.top5
        out.update({f"test_loss_{term}": value for term, value in self.test_losses.items()})
        return out

    @classmethod
    def from_json(cls, data: Any) -> EpochRecord:
        """Decode a metrics.jsonl line (any known version); a ValueError says what is wrong with it."""
        _version(data, "the record")
        fields: dict[str, Any] = {"losses": {}, "test_losses": {}}
        tops: dict[str, dict[str, Any]] = {}
        for key, value in data.items():
            if key == "schema_version":
                continue
            if key in ("phase", "epoch", "lr", "loss", "train_top1", "images_per_s"):
                fields[key] = value
            elif key.startswith(("test_top1", "test_top5")):
                head = key[len("test_top1") :]
                if head and not head.startswith("_"):
                    raise ValueError(f"the record has an unknown key {key!r}")
                tops.setdefault(head.removeprefix("_"), {})[key[len("test_") : 9]] = value
            elif key.startswith("test_loss_"):
                fields["test_losses"][key.removeprefix("test_loss_")] = value
            elif key.startswith("loss_"):
                fields["losses"][key.removeprefix("loss_")] = value
            else:
                raise ValueError(f"the record has an unknown key {key!r}")
        fields["test"] = tops
        return cls.model_validate(fields)


class HeadResult(_Record):
    """An extra evaluation head's test top-1 (%): the best over the main epochs, and the last."""

    best_top1: float
    last_top1: float


class TestLossResult(_Record):
    """A test-set loss term at the best epoch (by the main head's top-1) and at the last."""

    best: float
    last: float


class ImportedCheckpoint(_Record):
    """Where an imported teacher's weights came from (a run trained by kdbench has none)."""

    path: str
    sha256: str  # of the whole file
    format: str


class ComputeResult(BaseModel):
    """How the run computed (the resolved compute options, train/compute.py's ``Compute``, and what happened).
    Its keys grew over kdbench's history, so each is optional and keys added later are kept as they are."""

    model_config = ConfigDict(extra="allow", frozen=True)

    precision: str | None = None
    channels_last: bool | None = None
    compile: bool | None = None
    teacher_cache: bool | None = None  # a teacher-output cache was used
    compile_mode: str | None = None
    teacher_cache_build_seconds: float | None = None
    compiled: bool | None = None  # every network ran compiled (False after an eager fallback)
    compile_fallbacks: dict[str, str] | None = None  # network -> why it ran eagerly
    requested: dict[str, Any] | None = (
        None  # the options as asked for (train/compute.py ComputeOptions)
    )


class KeptWeights(_Record):
    """Spec ``keep: best``: the epoch whose weights ``file`` holds, and its test top-1."""

    keep: Literal["best"]
    epoch: int
    top1: float
    file: str


class PrecisionResult(_Record):
    """The precision the run computed with (train/compute.py ``PrecisionRecord``, whose fields these are)."""

    precision: str
    autocast_dtype: str | None = None
    cudnn_allow_tf32: bool | None = None
    matmul_allow_tf32: bool | None = None
    float32_matmul_precision: str | None = None
    loss_dtype: str = "float32"


class RunResult(_Record):
    """A finished run (``result.json``, written last: its presence means "done").

    The numbers are over the main epochs. What describes the run and where it ran is ``None`` where it was
    not recorded; ``imported``, ``compute``, ``kept`` and ``precision`` only for the runs they concern (an
    imported checkpoint; a trained run; spec ``keep: best``; runs trained since precisions were recorded)."""

    heads: dict[str, HeadResult] = Field(default_factory=dict)  # extra evaluation heads
    test_losses: dict[str, TestLossResult] = Field(default_factory=dict)
    run_id: str | None = None
    model: str | None = None
    method: str | None = None
    profile: str | None = None
    seed: int | None = None
    epochs: int  # main epochs
    best_top1: float
    best_top5: float
    best_epoch: int
    last_top1: float
    last_top5: float
    train_images_per_s: float | None = None  # over the epochs after the first (train/loop.py)
    wall_seconds: float | None = None  # training time of the last attempt
    device: str | None = None
    device_name: str | None = None
    world_size: int | None = (
        None  # processes (not in the spec: only per-process BatchNorm depends on it)
    )
    kdbench_version: str | None = None
    torch_version: str | None = None
    python: str | None = None
    kdbench_commit: str | None = None  # None unless kdbench ran from a git checkout
    imported: ImportedCheckpoint | None = None
    compute: ComputeResult | None = None
    kept: KeptWeights | None = None
    precision: PrecisionResult | None = None

    @property
    def trained_precision(self) -> str:
        """fp32, bf16 or faithful: the ``precision`` record, else the ``compute`` record of a result written
        before it existed; "" for an imported checkpoint (not trained)."""
        recorded = self.precision.precision if self.precision is not None else None
        return recorded or (self.compute.precision if self.compute is not None else None) or ""

    def flat(self) -> dict[str, Any]:
        """The run's numbers as :func:`kdbench.results.collect.collect` tabulates them (one row per run)."""
        return {
            "best_top1": self.best_top1,
            "best_top5": self.best_top5,
            "best_epoch": self.best_epoch,
            "last_top1": self.last_top1,
            "last_top5": self.last_top5,
            "epochs": self.epochs,
            "heads": {head: h.model_dump() for head, h in self.heads.items()},
            "test_losses": {term: t.model_dump() for term, t in self.test_losses.items()},
            "precision": self.trained_precision,
        }

    def to_json(self) -> dict[str, Any]:
        """``result.json``'s content: the fields that were given (a ``None`` one too) and the schema version."""
        return {
            **self.model_dump(mode="json", exclude_unset=True, exclude={"schema_version"}),
            "schema_version": SCHEMA_VERSION,
        }

    @classmethod
    def from_json(cls, data: Any) -> RunResult:
        """Decode ``result.json`` (any known version); a ValueError says what is wrong with it."""
        _version(data, "the result")
        return cls.model_validate({k: v for k, v in data.items() if k != "schema_version"})
