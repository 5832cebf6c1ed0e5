"""Teacher weights other people trained: torchvision's IMAGENET1K_V1 files (the teachers of the KD papers'
ImageNet tables) and the CIFAR/ImageNet teachers the papers' authors released (:data:`RELEASED`).

A recipe imports a torchvision file as a teacher checkpoint (``format: torchvision``). torch.hub names each file
``<name>-<first 8 hex digits of its sha256>.pth``, so a recipe may give that 8-digit prefix as the file's
``sha256`` when the full digest is not known offline; the import records the full digest. The published
top-1 is what the import's one evaluation should reproduce on the ILSVRC-2012 validation set.

A recipe names an authors' release by its key here (``teachers.<key>.released: crd/resnet32x4``); the
recipe's ``teacher_source`` (or ``--teachers``) says whether it is imported or the teacher is retrained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DOWNLOAD_ROOT = "https://download.pytorch.org/models/"


@dataclass(frozen=True)
class PretrainedWeights:
    """One torchvision weight file for a registered model."""

    model: str  # kdbench model name
    file: str  # torch.hub's file name: <name>-<sha256 prefix>.pth
    top1: float  # torchvision's published ImageNet-1K top-1 (%) for these weights
    # The pre-0.13 torchvision file of the same V1 weights, which mdistiller's ImageNet ResNet downloads.
    legacy_file: str | None = None

    @property
    def url(self) -> str:
        return DOWNLOAD_ROOT + self.file

    @property
    def sha256_prefix(self) -> str:
        """The hash prefix in the file name (torch.hub's ``check_hash`` compares against it)."""
        return self.file.removesuffix(".pth").rsplit("-", 1)[1]

    def describe(self) -> str:
        legacy = (
            f" (mdistiller downloads the pre-0.13 file {DOWNLOAD_ROOT}{self.legacy_file})"
            if self.legacy_file
            else ""
        )
        return (
            f"torchvision IMAGENET1K_V1 weights of {self.model}: {self.url}, sha256 prefix {self.sha256_prefix}, "
            f"published top-1 {self.top1:.3f}{legacy}"
        )


# torchvision 0.28 weight metadata (``ResNet*_Weights.IMAGENET1K_V1``, ``MobileNet_V2_Weights.IMAGENET1K_V1``).
TORCHVISION_IMAGENET1K_V1: dict[str, PretrainedWeights] = {
    w.model: w
    for w in (
        PretrainedWeights(
            "imagenet/resnet18", "resnet18-f37072fd.pth", 69.758, "resnet18-5c106cde.pth"
        ),
        PretrainedWeights(
            "imagenet/resnet34", "resnet34-b627a593.pth", 73.314, "resnet34-333f7ec4.pth"
        ),
        PretrainedWeights(
            "imagenet/resnet50", "resnet50-0676ba61.pth", 76.130, "resnet50-19c8e357.pth"
        ),
        PretrainedWeights(
            "imagenet/resnet101", "resnet101-63fe2227.pth", 77.374, "resnet101-5d3b4d8f.pth"
        ),
        PretrainedWeights(
            "imagenet/resnet152", "resnet152-394f9c45.pth", 78.312, "resnet152-b121ed2d.pth"
        ),
        PretrainedWeights("imagenet/mobilenet_v2", "mobilenet_v2-b0353104.pth", 71.878),
    )
}


def for_model(model: str) -> PretrainedWeights | None:
    """The torchvision weights of a (canonical) model name, if torchvision publishes any."""
    return TORCHVISION_IMAGENET1K_V1.get(model)


def for_file(file_name: str) -> PretrainedWeights | None:
    """The entry whose current or legacy torch.hub file name is ``file_name``."""
    return next(
        (w for w in TORCHVISION_IMAGENET1K_V1.values() if file_name in (w.file, w.legacy_file)),
        None,
    )


# --------------------------------------------------------------------------- the authors' released teachers

CRD_ROOT = (
    "http://shape2prog.csail.mit.edu/repo/"  # RepDistiller scripts/fetch_pretrained_teachers.sh
)
# mdistiller's copy of the same six files (README: "Download the cifar_teachers.tar at .../releases/tag/checkpoints";
# mdistiller/models/cifar/__init__.py reads cifar_teachers/<model>_vanilla/ckpt_epoch_240.pth from it).
MDISTILLER_TAR = (
    "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"
)
SIMKD_DRIVE = "https://drive.google.com/drive/folders/1j7b8TmftKIRC7ChUwAqVWPIocSiacvP4?usp=sharing"  # SimKD README


@dataclass(frozen=True)
class Download:
    """One place a released file can be fetched from: the file itself, or a member of the tar archive at ``url``."""

    url: str
    member: str | None = None

    def describe(self) -> str:
        return f"{self.url} (member {self.member})" if self.member else self.url


@dataclass(frozen=True)
class ReleasedTeacher:
    """A teacher checkpoint a paper's authors released, as a recipe names it (``teachers.<key>.released``).

    ``path`` is where kdbench keeps the file, under the data directory, in the authors' own layout.
    ``sha256`` is None where no digest is published: the first download's digest is recorded and every
    later use is checked against it (``kdbench/train/checkpoints.py``, trust on first use).
    ``by_hand``: the page to download the file from when there is no direct link (a shared folder)."""

    name: str
    model: str  # kdbench canonical model name
    path: str
    format: Literal["kdbench", "repdistiller", "torchvision"]  # a recipe Checkpoint format
    source: str  # who released it and where that is documented
    downloads: tuple[Download, ...] = ()
    by_hand: str | None = None
    sha256: str | None = None
    top1: float | None = None  # the accuracy the authors publish for this file

    def where(self) -> str:
        """Where the file comes from, in words: its download links, or the page to fetch it by hand."""
        ways = (
            [f"download it from {' or from '.join(d.describe() for d in self.downloads)}"]
            if self.downloads
            else []
        )
        if self.by_hand:
            ways.append(
                f"download it by hand from {self.by_hand} (file {self.path.rsplit('/', 1)[-1]})"
            )
        return "; or ".join(ways)


def _crd(model: str, top1: float) -> ReleasedTeacher:
    """One of the six teachers RepDistiller released (``ckpt_epoch_240.pth``: the last of 240 epochs)."""
    file = f"{model}_vanilla/ckpt_epoch_240.pth"
    return ReleasedTeacher(
        f"crd/{model}",
        model,
        f"teachers/crd/{file}",
        "repdistiller",
        "CRD's released teachers (RepDistiller scripts/fetch_pretrained_teachers.sh; mdistiller cifar_teachers.tar)",
        (Download(CRD_ROOT + file), Download(MDISTILLER_TAR, f"cifar_teachers/{file}")),
        top1=top1,
    )


def _simkd(zoo_name: str, model: str, top1: float, dataset: str = "cifar100") -> ReleasedTeacher:
    """A teacher SimKD trained and shared: ``<model>_best.pth`` (train_teacher.py:224-242 saves only the best
    epoch), in the ``<model>_vanilla/`` folder its README's commands read (README.md, 'Train the student models')."""
    file = f"{zoo_name}_vanilla/{zoo_name}_best.pth"
    return ReleasedTeacher(
        f"simkd/{zoo_name}" + ("" if dataset == "cifar100" else f"-{dataset}"),
        model,
        f"teachers/simkd/{dataset}/{file}",
        "repdistiller",
        "SimKD's released teachers (DefangChen/SimKD README.md, 'Get the pretrained teacher models')",
        by_hand=SIMKD_DRIVE,
        top1=top1,
    )


RELEASED: dict[str, ReleasedTeacher] = {
    t.name: t
    for t in (
        _crd("wrn_40_2", 75.61),
        _crd("resnet56", 72.34),
        _crd("resnet110", 74.31),
        _crd("resnet32x4", 79.42),
        _crd("vgg13", 74.64),
        _crd("ResNet50", 79.34),
        _simkd("resnet38x2", "simkd/resnet38x2", 76.31),
        _simkd("resnet38x4", "simkd/resnet38x4", 79.51),
        _simkd("resnet110x2", "simkd/resnet110x2", 78.18),
        _simkd("resnet110x4", "simkd/resnet110x4", 80.20),
        _simkd("resnet32x4", "resnet32x4", 79.42),
        _simkd("vgg13", "vgg13", 74.64),
        _simkd("ResNet50", "imagenet/resnet50", 76.26, "imagenet"),
    )
}


def released(name: str) -> ReleasedTeacher:
    """The released teacher ``name`` (a key of :data:`RELEASED`); KeyError if there is none."""
    return RELEASED[name]
