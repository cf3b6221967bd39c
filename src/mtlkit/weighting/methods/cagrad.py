"""Conflict-averse gradient descent (Liu et al., NeurIPS 2021)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting._qp import host, simplex_min
from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.registry import register

_RESCALES = {0: lambda c: 1.0, 1: lambda c: 1.0 + c * c, 2: lambda c: 1.0 + c}


def cagrad_weights(G: Tensor, c: float = 0.5, rescale: int = 1) -> Tensor:
    """CAGrad's update Σ_t w_t g_t as weights on the task gradients.

    With g0 the mean gradient and ρ = c‖g0‖, the dual problem is
    min_{w ∈ simplex} g_wᵀg0 + ρ‖g_w‖ (g_w = Σ w_t g_t, solved exactly by
    `simplex_min`, with sqrt(‖g_w‖² + ε) smoothing as the official code, ε relative);
    the update is (g0 + ρ g_w/‖g_w‖) / r, r = 1, 1 + c² or 1 + c for rescale 0, 1, 2.
    When g_w = 0 (a Pareto-stationary point) its direction is undefined and the
    update is g0 / r; when g0 = 0 it is 0.
    """
    T = G.shape[0]
    G64 = host(G)
    mean = torch.full((T,), 1.0 / T, dtype=torch.float64)
    top = float(G64.diagonal().max())
    weights = mean.clone()
    if top > 0 and c > 0:
        Gs = G64 / top  # the problem is scale-free; this keeps tolerances relative
        a = Gs @ mean
        radius = c * max(float(mean @ a), 0.0) ** 0.5
        if radius > 0:
            w = simplex_min(Gs, a, radius, eps=1e-10)
            gw_norm = max(float(w @ Gs @ w), 0.0) ** 0.5
            if gw_norm > 1e-12:
                weights = mean + (radius / gw_norm) * w
    return (weights / _RESCALES[rescale](c)).to(dtype=G.dtype, device=G.device)


@register("cagrad")
class CAGrad(GradientBalancer):
    """CAGrad: the update that maximises the worst task improvement near the mean gradient.

    `Conflict-Averse Gradient Descent for Multi-task Learning
    <https://arxiv.org/abs/2110.14048>`_ (Liu et al., NeurIPS 2021): d maximises
    min_t g_tᵀd subject to ‖d − g0‖ ≤ c‖g0‖, through the dual problem of
    `cagrad_weights`. Defaults as the paper and official code: c = 0.5, rescale = 1
    (divide by 1 + c²; 0: no rescaling, 2: divide by 1 + c). c = 0 gives the mean
    gradient. The official code solves the dual with SLSQP; this one solves it exactly
    with an active-set method on the Gramian.
    """

    properties = frozenset({"expected_structure", "permutation_invariant"})

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        c: float = 0.5,
        rescale: int = 1,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(tasks, chunk_size=chunk_size)
        if c < 0:
            raise ValueError(f"CAGrad c must be >= 0, got {c}")
        if rescale not in _RESCALES:
            raise ValueError(f"CAGrad rescale must be 0, 1 or 2, got {rescale!r}")
        self.c = c
        self.rescale = rescale

    def weights(self, G: Tensor) -> Tensor:
        return cagrad_weights(G, self.c, self.rescale)
