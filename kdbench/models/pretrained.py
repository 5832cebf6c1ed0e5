"""torchvision's IMAGENET1K_V1 weights: the teachers of the KD papers' ImageNet tables
(``specs/architectures.md`` §5).

A recipe imports one as a teacher checkpoint (``format: torchvision``). torch.hub names each file
``<name>-<first 8 hex digits of its sha256>.pth``, so a recipe may give that 8-digit prefix as the file's
``sha256`` when the full digest is not known offline; the import records the full digest. The published
top-1 is what the import's one evaluation should reproduce on the ILSVRC-2012 validation set.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        legacy = f" (mdistiller downloads the pre-0.13 file {DOWNLOAD_ROOT}{self.legacy_file})" if self.legacy_file else ""
        return (f"torchvision IMAGENET1K_V1 weights of {self.model}: {self.url}, sha256 prefix {self.sha256_prefix}, "
                f"published top-1 {self.top1:.3f}{legacy}")


# torchvision 0.28 weight metadata (``ResNet*_Weights.IMAGENET1K_V1``, ``MobileNet_V2_Weights.IMAGENET1K_V1``).
TORCHVISION_IMAGENET1K_V1: dict[str, PretrainedWeights] = {
    w.model: w
    for w in (
        PretrainedWeights("imagenet/resnet18", "resnet18-f37072fd.pth", 69.758, "resnet18-5c106cde.pth"),
        PretrainedWeights("imagenet/resnet34", "resnet34-b627a593.pth", 73.314, "resnet34-333f7ec4.pth"),
        PretrainedWeights("imagenet/resnet50", "resnet50-0676ba61.pth", 76.130, "resnet50-19c8e357.pth"),
        PretrainedWeights("imagenet/resnet101", "resnet101-63fe2227.pth", 77.374, "resnet101-5d3b4d8f.pth"),
        PretrainedWeights("imagenet/resnet152", "resnet152-394f9c45.pth", 78.312, "resnet152-b121ed2d.pth"),
        PretrainedWeights("imagenet/mobilenet_v2", "mobilenet_v2-b0353104.pth", 71.878),
    )
}


def for_model(model: str) -> PretrainedWeights | None:
    """The torchvision weights of a (canonical) model name, if torchvision publishes any."""
    return TORCHVISION_IMAGENET1K_V1.get(model)


def for_file(file_name: str) -> PretrainedWeights | None:
    """The entry whose current or legacy torch.hub file name is ``file_name``."""
    return next((w for w in TORCHVISION_IMAGENET1K_V1.values() if file_name in (w.file, w.legacy_file)), None)
