"""Random loss weighting (Lin et al., TMLR 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtlkit.weighting.base import LossBalancer
from mtlkit.weighting.registry import register


@register("rlw", "random")
class RLW(LossBalancer):
    """Random loss weighting: w = softmax(z), z ~ N(0, I), drawn anew every step.

    `Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task
    Learning <https://arxiv.org/abs/2111.10603>`_ (Lin et al., TMLR 2022), with the
    normal distribution + softmax that the paper and LibMTL use by default. The softmax
    runs over the tasks present in the batch, so their weights sum to 1. Draws from
    torch's global generator on the losses' device (seed it for reproducible runs).
    Stateless; `tasks` is optional.
    """

    def combine(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        w = torch.softmax(torch.randn(losses.shape, dtype=losses.dtype, device=losses.device), dim=0)
        return (w * losses).sum(), w
