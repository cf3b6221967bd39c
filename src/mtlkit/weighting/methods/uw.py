"""Uncertainty weighting (Kendall et al., CVPR 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlkit.weighting.base import LossBalancer
from mtlkit.weighting.registry import register


@register("uw", "uncertainty")
class UW(LossBalancer):
    """Uncertainty weighting with learnable log-variances s_t = log σ_t².

    `Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry and
    Semantics <https://arxiv.org/abs/1705.07115>`_ (Kendall, Gal, Cipolla, CVPR 2018).
    Backpropagates Σ_t ½ e^{-s_t} L_t + ½ s_t, the paper's regression form used for every
    task (as LibMTL and most re-implementations do). For fixed losses the optimum is
    σ_t² = e^{s_t} = L_t.

    `log_var` is an `nn.Parameter`: pass `balancer.parameters()` to the optimizer.
    Defaults: s_t initialised to `init` = 0 (σ² = 1, the paper reports robustness to
    it; LibMTL uses -0.5). Needs `tasks` at construction. Not registered as "auto":
    torchMTL's `loss_weight='auto'` is a graph option, which may build this balancer.
    """

    def __init__(self, tasks: int | Sequence[str] | None = None, init: float = 0.0) -> None:
        super().__init__(tasks)
        self.log_var = nn.Parameter(torch.full((self.num_tasks,), float(init)))

    def combine(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        s = self.log_var[index]
        objective = (0.5 * torch.exp(-s) * losses + 0.5 * s).sum()
        return objective, 0.5 * torch.exp(-s)
