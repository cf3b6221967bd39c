"""Multi-objective gradient correction (Fernando et al., ICLR 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting._simplex import project_to_simplex, restrict
from mtlkit.weighting._state import resize_buffers, sized_like
from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.registry import register


@register("moco")
class MoCo(GradientBalancer):
    """MoCo: MGDA on tracked (momentum) task gradients, which removes the stochastic bias of MGDA.

    `Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent Approach
    <https://openreview.net/forum?id=dLAYGdKTi2>`_ (Fernando, Shen, Liu, Chaudhury,
    Murugesan, Chen, ICLR 2023). Step k (counted from 1), on the tasks in the batch:

    - tracking: y_t ← y_t − β_k (y_t − g_t), β_k = β / k^{σ_β};
    - weights: λ ← Π_Δ(λ − γ_k (Y Yᵀ + ρ I) λ), γ_k = γ / k^{σ_γ} (Π_Δ: projection onto the simplex);
    - update: d = Σ_t λ_t y_t.

    Defaults (LibMTL's, from the authors' code): β = 0.5, σ_β = 0.5, γ = 0.1, σ_γ = 0.5,
    ρ = 0. `normalize=True` feeds L_t g_t / ‖g_t‖ instead of g_t, as the authors' code
    does; the default follows the paper's algorithm (raw gradients, and the projection
    Π_Δ where that code takes a softmax). The tracked gradients y (T × P) and λ are
    buffers (`state_dict()` carries them). When only some tasks are in the batch, only
    their y and λ move (their λ share is kept). Every step must reach the same shared
    parameters (else a ValueError).

    At a shared representation (`shared_reps`; LibMTL refuses MoCo there) the gradient
    coordinates that y tracks are the batch rows: g_t is task t's gradient with respect to
    the representation summed over the batch (`rep_reduce="batch"`, the only mode: per-sample
    rows change meaning with every batch), so y is T × D. λ follows the same recursion, and
    the trunk receives Σ_t λ_t ∂L_t/∂z of this batch's per-sample rows. Departure: the
    paper's update Σ_t λ_t y_t cannot be pushed through the trunk sample by sample, so there
    the tracked gradients shape λ only and the step uses the current task gradients.
    """

    tracked: Tensor
    lambdas: Tensor
    steps: Tensor

    properties: frozenset[str] = frozenset()  # see tests/weighting/test_properties.py

    rep_reduce = "batch"  # at a representation, y tracks the batch rows (fixed coordinates)
    batch_rows_only = True

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
        normalize: bool = False,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(tasks, chunk_size=chunk_size)
        self.beta, self.beta_sigma, self.gamma, self.gamma_sigma, self.rho = beta, beta_sigma, gamma, gamma_sigma, rho
        self.normalize = normalize
        T = self.num_tasks
        self.register_buffer("tracked", torch.zeros(T, 0))  # sized at the first step
        self.register_buffer("lambdas", torch.full((T,), 1.0 / T))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def combine(self, J: Tensor, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        sized_like(self, "tracked", J)
        self.steps += 1
        k = float(self.steps)
        g = J
        if self.normalize:
            g = J * (losses.to(J) / (J.norm(dim=1) + 1e-8)).unsqueeze(1)
        y = self.tracked[index].to(J)
        y = y - self.beta / k**self.beta_sigma * (y - g)
        self.tracked[index] = y.to(self.tracked)
        lam, share = restrict(self.lambdas, index)
        lam = lam.to(J)
        step = (y @ y.T + self.rho * torch.eye(len(index), dtype=J.dtype, device=J.device)) @ lam
        lam = project_to_simplex(lam - self.gamma / k**self.gamma_sigma * step)
        self.lambdas[index] = (lam * share).to(self.lambdas)  # the other tasks keep their share
        return lam @ y, lam

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        resize_buffers(self, state_dict, prefix, ["tracked"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
