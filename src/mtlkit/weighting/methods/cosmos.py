"""COSMOS scalarization (Ruchte & Grabocka, ICDM 2021)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting.base import LossBalancer
from mtlkit.weighting.registry import register


def preference_of(preference: Tensor | None, index: Tensor, like: Tensor) -> Tensor:
    """The preference of the active tasks (`index`), or 1/T each for T active tasks."""
    if preference is None:
        return like.new_full(like.shape, 1.0 / like.numel())
    return preference[index.cpu()].to(like.device, like.dtype)


def check_preference(name: str, preference: Sequence[float] | None, num_tasks: int | None) -> Tensor | None:
    """The preference as a float64 tensor, checked: ≥ 0, not all zero, one value per task."""
    if preference is None:
        return None
    p = torch.as_tensor([float(x) for x in preference], dtype=torch.float64)
    if bool((p < 0).any()) or not bool((p > 0).any()) or not bool(torch.isfinite(p).all()):
        raise ValueError(f"{name} preference must be finite, >= 0 and not all zero, got {list(preference)}")
    if num_tasks is not None and p.numel() != num_tasks:
        raise ValueError(f"{name} got {p.numel()} preference values for {num_tasks} tasks")
    return p


def cosmos_loss(losses: Tensor, r: Tensor, mu: float) -> Tensor:
    """rᵀL − μ·cos(r, L) (the cosine is 0 while every loss is 0)."""
    linear = r @ losses
    norm = losses.norm()
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))  # no 0/0 in the branch torch.where drops
    return linear - mu * torch.where(norm > 0, linear / (r.norm() * safe), torch.zeros_like(norm))


@register("cosmos")
class COSMOS(LossBalancer):
    """COSMOS: the preference-weighted sum of the losses minus μ times their cosine with the preference.

    `Scalable Pareto Front Approximation for Deep Multi-Objective Learning
    <https://arxiv.org/abs/2103.13392>`_ (Ruchte & Grabocka, ICDM 2021), the loss
    Σ_t r_t L_t − μ·cos(r, L): the cosine term pulls the loss vector onto the preference
    ray r. The paper samples r from a Dirichlet per batch and feeds it to the network to
    learn the whole front; as a balancer mtlkit uses one fixed `preference` r (default:
    1/T for each task labelled in the batch). `mu` μ (the paper's λ, tuned per dataset
    there) defaults to 1. Weights reported are ∂/∂L_t of the loss (`torch.func.grad`). Stateless.
    """

    def __init__(
        self, tasks: int | Sequence[str] | None = None, preference: Sequence[float] | None = None, mu: float = 1.0
    ) -> None:
        super().__init__(tasks)
        if mu < 0:
            raise ValueError(f"COSMOS mu must be >= 0, got {mu}")
        self.mu = float(mu)
        self.preference = check_preference("COSMOS", preference, None if tasks is None else self.num_tasks)

    def combine(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        r = preference_of(self.preference, index, losses)
        return cosmos_loss(losses, r, self.mu), torch.func.grad(cosmos_loss)(losses.detach(), r, self.mu)
