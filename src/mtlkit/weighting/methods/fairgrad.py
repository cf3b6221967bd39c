"""Fair resource allocation in multi-task learning (Ban & Ji, ICML 2024)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting._qp import host
from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.registry import register


def fairgrad_weights(G: Tensor, alpha: float = 1.0, ridge: float = 1e-8, tol: float = 1e-10) -> Tensor:
    """The w > 0 with (G w)_t = w_t^{-1/α}, the α-fair allocation of the update d = Σ_t w_t g_t.

    The equation is the stationarity condition of the strictly convex
    f(w) = ½ wᵀGw − Σ_t φ(w_t), φ'(w) = w^{-1/α} (φ = log for α = 1), solved by damped
    Newton steps in float64 that stay inside w > 0. Tasks with a zero gradient get
    weight 0 (their equation has no solution: w_t would grow without bound). `ridge`·max
    diag(G) is added to the diagonal: when 0 lies in the hull of the gradients (a
    Pareto-stationary point) f is unbounded below and the weights diverge; the ridge
    keeps them finite.
    """
    if alpha <= 0:
        raise ValueError(f"FairGrad alpha must be > 0, got {alpha}")
    G64 = host(G)
    T = G64.shape[0]
    w_out = torch.zeros(T, dtype=torch.float64)
    top = float(G64.diagonal().max()) if T else 0.0
    live = (G64.diagonal() > 1e-12 * top).nonzero().flatten() if top > 0 else torch.zeros(0, dtype=torch.long)
    if live.numel() == 0:
        return w_out.to(dtype=G.dtype, device=G.device)
    # Scale-free problem: with G/top the solution is w·top^{α/(α+1)} (w solves the original).
    A = G64[live][:, live] / top + ridge * torch.eye(live.numel(), dtype=torch.float64)
    p = 1.0 / alpha

    def objective(w: Tensor) -> float:
        phi = torch.log(w) if alpha == 1 else w ** (1 - p) / (1 - p)
        return float(0.5 * w @ A @ w - phi.sum())

    w = A.diagonal() ** (-alpha / (alpha + 1))  # the solution for orthogonal gradients
    for _ in range(100):
        grad = A @ w - w ** (-p)
        if float(grad.abs().max()) <= tol * float((w ** (-p)).abs().max()):
            break
        hessian = A + torch.diag(p * w ** (-p - 1))
        step = -torch.linalg.solve(hessian, grad)
        t, f0, slope = 1.0, objective(w), float(grad @ step)
        while t > 1e-12:
            trial = w + t * step
            if bool((trial > 0).all()) and objective(trial) <= f0 + 1e-4 * t * slope:
                break
            t *= 0.5
        w = w + t * step
    w_out[live] = w * top ** (-alpha / (alpha + 1))
    return w_out.to(dtype=G.dtype, device=G.device)


@register("fairgrad")
class FairGrad(GradientBalancer):
    """FairGrad: weights w with (G w)_t = w_t^{-1/α}, the α-fair share of the update among tasks.

    `Fair Resource Allocation in Multi-Task Learning <https://arxiv.org/abs/2402.15638>`_
    (Ban & Ji, ICML 2024). The update d = Σ_t w_t g_t gives task t the utility
    ⟨g_t, d⟩ = (G w)_t; FairGrad picks the d that maximises Σ_t u_α(⟨g_t, d⟩) on a
    ball, which comes down to (G w)_t = w_t^{-1/α}. α = 1 is proportional fairness
    (Nash-MTL's bargaining solution), α → ∞ max-min fairness.

    Default α = 1.0 (the paper's and LibMTL's default). Departures: the equation is
    solved by Newton's method on the convex problem it is the optimality condition of
    (`fairgrad_weights`), not by scipy's bounded least squares; a task with a zero
    gradient gets weight 0. Pure `weights(G)`: works on the shared parameters and at a
    shared representation.
    """

    properties = frozenset({"expected_structure", "permutation_invariant"})

    def __init__(
        self, tasks: int | Sequence[str] | None = None, alpha: float = 1.0, chunk_size: int | None = None
    ) -> None:
        super().__init__(tasks, chunk_size=chunk_size)
        if alpha <= 0:
            raise ValueError(f"FairGrad alpha must be > 0, got {alpha}")
        self.alpha = alpha

    def weights(self, G: Tensor) -> Tensor:
        return fairgrad_weights(G, self.alpha)
