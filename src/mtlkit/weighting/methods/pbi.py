"""Penalty-based boundary intersection (Zhang & Li, IEEE TEC 2007)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting.base import LossBalancer
from mtlkit.weighting.methods.cosmos import check_preference, preference_of
from mtlkit.weighting.registry import register


def pbi_loss(losses: Tensor, r: Tensor, theta: float) -> Tensor:
    """d₁ + θ·d₂ for the ray r through the ideal point 0."""
    direction = r / r.norm()
    d1 = direction @ losses
    return d1 + theta * (losses - d1 * direction).norm()


@register("pbi")
class PBI(LossBalancer):
    """PBI: distance along the preference ray plus θ times the distance from it.

    The penalty-based boundary intersection of `MOEA/D: A Multiobjective Evolutionary
    Algorithm Based on Decomposition <https://doi.org/10.1109/TEVC.2007.892759>`_ (Zhang &
    Li, IEEE TEC 2007): with r̂ = r/‖r‖, d₁ = r̂ᵀL and d₂ = ‖L − d₁r̂‖, the loss is d₁ + θ d₂,
    the ideal point being 0 (losses are ≥ 0). `preference` r defaults to 1/T for each task
    labelled in the batch; `theta` θ defaults to 5, the paper's value. Weights reported
    are ∂/∂L_t (`torch.func.grad`; on the ray, where d₂ = 0, torch's subgradient 0).
    Stateless.
    """

    def __init__(
        self, tasks: int | Sequence[str] | None = None, preference: Sequence[float] | None = None, theta: float = 5.0
    ) -> None:
        super().__init__(tasks)
        if theta < 0:
            raise ValueError(f"PBI theta must be >= 0, got {theta}")
        self.theta = float(theta)
        self.preference = check_preference("PBI", preference, None if tasks is None else self.num_tasks)

    def combine(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        r = preference_of(self.preference, index, losses)
        return pbi_loss(losses, r, self.theta), torch.func.grad(pbi_loss)(losses.detach(), r, self.theta)
