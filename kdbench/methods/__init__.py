"""Method registry. Importing this package imports (and so registers) every method module in it.

``CATALOG`` lists every method the supported papers' tables use, with its source; a recipe row
naming a catalogued method that has no implementation yet is planned and shown as
"not implemented", never dropped and never faked.
"""

from __future__ import annotations

import importlib
import pkgutil

from kdbench.methods.base import (
    Distiller,
    InferenceSize,
    InitStage,
    MethodParams,
    Needs,
    Step,
    Variant,
    get,
    names,
    parameter_count,
    register,
    resolve_params,
)

# One file per method: importing a module runs its @register.
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "combined"):
        importlib.import_module(f"{__name__}.{_module.name}")

CATALOG: dict[str, str] = {
    "ce": "Cross-entropy training (teachers, 'Student' rows)",
    "kd": "Hinton et al., 2015",
    "fitnet": "Romero et al., FitNets, ICLR 2015",
    "at": "Zagoruyko & Komodakis, Attention Transfer, ICLR 2017",
    "sp": "Tung & Mori, Similarity-Preserving KD, ICCV 2019",
    "cc": "Peng et al., Correlation Congruence, ICCV 2019",
    "vid": "Ahn et al., Variational Information Distillation, CVPR 2019",
    "rkd": "Park et al., Relational KD, CVPR 2019",
    "pkt": "Passalis & Tefas, Probabilistic Knowledge Transfer, ECCV 2018",
    "ab": "Heo et al., Activation Boundaries, AAAI 2019",
    "ft": "Kim et al., Factor Transfer, NeurIPS 2018",
    "fsp": "Yim et al., FSP, CVPR 2017",
    "nst": "Huang & Wang, Neuron Selectivity Transfer, 2017",
    "crd": "Tian et al., Contrastive Representation Distillation, ICLR 2020",
    "ofd": "Heo et al., A Comprehensive Overhaul of Feature Distillation, ICCV 2019",
    "reviewkd": "Chen et al., Distilling Knowledge via Knowledge Review, CVPR 2021",
    "srrl": "Yang et al., Softmax Regression Representation Learning, ICLR 2021",
    "semckd": "Chen et al., Cross-Layer Distillation with Semantic Calibration, AAAI 2021",
    "dkd": "Zhao et al., Decoupled KD, CVPR 2022",
    "wsld": "Zhou et al., Weighted Soft Labels, ICLR 2021",
    "simkd": "Chen et al., SimKD, CVPR 2022",
    "simkd-sequential": "Chen et al., SimKD, CVPR 2022 (Table 4: sequential training of a new classifier)",
    "dist": "Huang et al., DIST, NeurIPS 2022",
    "dist-kl": "Huang et al., DIST, NeurIPS 2022, Table 8's 'DIST (KL div.)': relations matched with KL divergence; "
               "not in the released code, and the paper does not say how a class's column is normalised",
    "mlkd": "Jin et al., Multi-Level Logit Distillation, CVPR 2023",
    "ipwd": "Niu et al., Respecting Transfer Gap (IPWD), NeurIPS 2022 — reconstructed (weight formula not recovered)",
    "rld": "Sun et al., Refined Logit Distillation, 2024",
    "rkd+mlkd": "RKD combined with MLKD (MLKD appendix Table 2)",
    "reviewkd+mlkd": "ReviewKD combined with MLKD (MLKD appendix Table 2)",
    "reviewkd+ipwd": "ReviewKD combined with IPWD (IPWD appendix Table 2)",
}


def is_implemented(name: str) -> bool:
    """True for a registered method, and for a combination ``a+b`` of registered methods."""
    return all(part in names() for part in name.split("+"))


__all__ = [
    "CATALOG", "Distiller", "InferenceSize", "InitStage", "MethodParams", "Needs", "Step", "Variant",
    "get", "is_implemented", "names", "parameter_count", "register", "resolve_params",
]
