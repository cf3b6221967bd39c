"""Conflict-averse gradient descent (Liu et al., NeurIPS 2021)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting._qp import dual_cone_weights, host, simplex_min
from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.registry import register

_RESCALES = {0: lambda c: 1.0, 1: lambda c: 1.0 + c * c, 2: lambda c: 1.0 + c}
# ‖g_w‖ (relative to the largest gradient norm) below which the dual optimum counts as
# g_w = 0: the solver's rounding floor is ~1e-8, and there the direction g_w/‖g_w‖ is noise.
_ZERO_GW = 1e-6
# Ridge for the dual-cone projection of the degenerate case (as UPGrad's, see `_qp.dual_cone_weights`).
_RIDGE = 1e-9


def cagrad_weights(G: Tensor, c: float = 0.5, rescale: int = 1) -> Tensor:
    """CAGrad's update Σ_t w_t g_t as weights on the task gradients.

    With g0 the mean gradient and ρ = c‖g0‖, the dual problem is
    min_{w ∈ simplex} g_wᵀg0 + ρ‖g_w‖ (g_w = Σ w_t g_t), solved exactly by `simplex_min`;
    the update is d = g0 + ρ g_w/‖g_w‖, divided by r = 1, 1 + c² or 1 + c for rescale
    0, 1, 2. By the KKT conditions g_tᵀd ≥ (the optimal value) for every t, so for
    c ≥ 1 (where the value is ≥ 0) no task gradient conflicts with d.

    When the optimal g_w is 0 (0 lies in the convex hull of the gradients and the value
    is 0), the formula's direction is undefined and every d of the ball with Jd ≥ 0 is
    optimal: the update is the one nearest g0, g0's projection onto the dual cone
    {x: Jx ≥ 0} (inside the ball). The official code instead smooths ‖g_w‖ with
    sqrt(‖g_w‖² + 1e-8), whose direction there is rounding noise and may conflict; TorchJD
    returns 0. When g0 = 0 the update is 0.
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
            w = simplex_min(Gs, a, radius)
            gw_norm = max(float(w @ Gs @ w), 0.0) ** 0.5
            if gw_norm > _ZERO_GW:
                weights = mean + (radius / gw_norm) * w
            else:
                ridged = Gs + _RIDGE * torch.eye(T, dtype=torch.float64)
                weights = dual_cone_weights(ridged, mean.unsqueeze(0))[0]
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
    with an active-set method on the Gramian. With c ≥ 1 the update conflicts with no
    task gradient (`properties` then includes "non_conflicting").
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
        if c >= 1:  # the ball then holds 0, so the worst task improvement is >= 0
            self.properties = CAGrad.properties | {"non_conflicting"}

    def weights(self, G: Tensor) -> Tensor:
        return cagrad_weights(G, self.c, self.rescale)
