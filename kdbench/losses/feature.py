"""Feature-based distillation losses (functions of feature maps or embeddings)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["simkd"]


def simkd(projected_s: torch.Tensor, feat_t: torch.Tensor) -> torch.Tensor:
    """SimKD (Chen et al., CVPR 2022, Eq. 3): feature alignment ‖P(f_s) − f_t‖².

    The released code uses ``nn.MSELoss()``: the mean over all B·C·H·W elements.
    """
    return F.mse_loss(projected_s, feat_t.detach())
