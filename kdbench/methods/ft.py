"""Factor transfer (Kim et al., "Paraphrasing Complex Network: Network Compression via Factor
Transfer", NeurIPS 2018), two-stage, as benchmarked by RepDistiller/CRD
(RepDistiller ``distiller_zoo/FT.py`` and ``train_student.py``'s init stage; docs/references.md §Training protocols).

Taps: the last spatial map fk of both networks (``stages[-1]``, RepDistiller ``feat[-2]``,
post-ReLU). Paraphraser (teacher side, k = 0.5, no BN, all 3×3 stride 1 pad 1 with bias,
LeakyReLU(0.1) after every conv): encoder C_t→C_t→C_t/2→C_t/2, decoder (transposed convs)
C_t/2→C_t/2→C_t→C_t. Translator (student side, with BN): C_s→C_s→C_t/2→C_t/2, each conv + BN +
LeakyReLU(0.1).

Init stage (``init_epochs`` = 30): only the paraphraser is trained, to reconstruct the teacher's
map (element-mean MSE of decoder(encoder(f_t)) against f_t); the student does not take part.
RepDistiller hard-codes LR 0.01 for this stage when the student is a CIFAR ResNet or WRN, else
the base LR (constant): the stage object carries it as ``lr``.

Main stage: 1·CE + β·``losses.ft``(translator(student fk), paraphraser.encoder(teacher fk)),
β = 200, p₁ = 2, p₂ = 1: factors are RepDistiller's L2-normalised channel-means of x² (the paper
normalises the whole C×H×W factor — RepDistiller's form reproduces the tables). The paraphraser is
frozen: its encoder runs without gradient (``torch.no_grad``), so SGD never changes it
(RepDistiller keeps it out of the main optimizer). The translator is trained.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from kdbench import losses
from kdbench.methods.base import Step
from kdbench.methods.registry import register
from kdbench.methods.two_stage import TwoStageDistiller, TwoStageParams, crd_variant
from kdbench.models.base import Features, KDModel
from kdbench.models.cifar_resnet import CifarResNet
from kdbench.models.wrn import WideResNet

# RepDistiller's helper/pretrain.py: the paraphraser's LR for CIFAR ResNet / WRN students.
PARAPHRASER_LR_CIFAR_RESNET = 0.01


class FTParams(TwoStageParams):
    weight: float = 200.0
    rate: float = Field(0.5, gt=0.0)  # k: factor channels = int(C_t · k)
    p1: float = 2.0
    p2: float = 1.0


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.1)


class Paraphraser(nn.Module):
    """Teacher-side auto-encoder of the teacher map (no BN, all convs with bias)."""

    def __init__(self, c_t: int, rate: float):
        super().__init__()
        mid = int(c_t * rate)
        self.encoder = nn.Sequential(
            nn.Conv2d(c_t, c_t, 3, 1, 1),
            _lrelu(),
            nn.Conv2d(c_t, mid, 3, 1, 1),
            _lrelu(),
            nn.Conv2d(mid, mid, 3, 1, 1),
            _lrelu(),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(mid, mid, 3, 1, 1),
            _lrelu(),
            nn.ConvTranspose2d(mid, c_t, 3, 1, 1),
            _lrelu(),
            nn.ConvTranspose2d(c_t, c_t, 3, 1, 1),
            _lrelu(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction decoder(encoder(x)); the factor is ``self.encoder(x)``."""
        return self.decoder(self.encoder(x))


class Translator(nn.Sequential):
    """Student-side encoder to the teacher's factor width (conv + BN + LeakyReLU, three times)."""

    def __init__(self, c_s: int, c_t: int, rate: float):
        mid = int(c_t * rate)
        super().__init__(
            nn.Conv2d(c_s, c_s, 3, 1, 1),
            nn.BatchNorm2d(c_s),
            _lrelu(),
            nn.Conv2d(c_s, mid, 3, 1, 1),
            nn.BatchNorm2d(mid),
            _lrelu(),
            nn.Conv2d(mid, mid, 3, 1, 1),
            nn.BatchNorm2d(mid),
            _lrelu(),
        )


@register
class FT(TwoStageDistiller):
    name = "ft"
    title = "FT"
    paper = "Kim et al., Paraphrasing Complex Network: Network Compression via Factor Transfer, NeurIPS 2018"
    Params = FTParams
    params: FTParams
    variants = crd_variant(
        "30 init epochs of paraphraser reconstruction, then 1·CE + 200·FT", weight=200.0
    )

    def __init__(
        self,
        student: KDModel,
        teacher: KDModel | None,
        params: FTParams,
        example: torch.Tensor,
        **context,
    ):
        super().__init__(student, teacher, params, example, **context)
        s, t = self.probe(example)
        assert t is not None
        c_s, c_t = s.stages[-1].shape[1], t.stages[-1].shape[1]
        self.paraphraser = Paraphraser(c_t, params.rate)
        self.translator = Translator(c_s, c_t, params.rate)
        # RepDistiller's list of CIFAR ResNet / WRN students gets the hard-coded LR.
        self.init_lr = (
            PARAPHRASER_LR_CIFAR_RESNET if isinstance(student, (CifarResNet, WideResNet)) else None
        )

    def init_parameters(self) -> list[nn.Parameter]:
        return list(self.paraphraser.parameters())  # the student takes no part

    def forward_init(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        assert self.teacher is not None
        with torch.no_grad():
            f_t = self.teacher.forward_features(images).stages[-1]
        return {"ft_paraphraser": losses.mse(self.paraphraser(f_t), f_t)}

    def distill(
        self, student: Features, teacher: Features | None, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert teacher is not None
        with torch.no_grad():  # the paraphraser is frozen after its init stage
            factor_t = self.paraphraser.encoder(teacher.stages[-1])
        factor_s = self.translator(student.stages[-1])
        p = self.params
        return student.logits, {"ft": p.weight * losses.ft(factor_s, factor_t, p.p1, p.p2)}
