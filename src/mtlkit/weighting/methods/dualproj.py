"""DualProj: the mean gradient projected onto the dual cone of the task gradients."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting._qp import dual_cone_weights, host
from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.registry import register

# Ridge on the correlation matrix, as UPGrad's (`upgrad._RIDGE`): keeps the active-set solver finite.
_RIDGE = 1e-9


def dualproj_weights(G: Tensor, preference: Tensor | None = None) -> Tensor:
    """Weights w with Σ_t w_t g_t = π(Σ_t p_t g_t), π the projection onto {x: g_t·x ≥ 0 ∀t}.

    π(Jᵀp) = Jᵀw with w the minimiser of wᵀGw over w ≥ p (`dual_cone_weights`), solved
    in the scaled variables y = n ⊙ w (n_t = ‖g_t‖) on the correlation matrix, as for
    UPGrad. `preference` p defaults to 1/T (the mean). Zero gradients keep w_t = p_t.
    """
    T = G.shape[0]
    p = torch.full((T,), 1.0 / T, dtype=torch.float64) if preference is None else host(preference)
    G64 = host(G)
    norms = G64.diagonal().clamp(min=0).sqrt()
    live = norms > 1e-12 * float(norms.max())
    weights = p.clone()
    if float(norms.max()) > 0:
        n = norms[live]
        ridge = max(_RIDGE, n.numel() * torch.finfo(G.dtype).eps)
        C = G64[live][:, live] / (n.unsqueeze(0) * n.unsqueeze(1)) + ridge * torch.eye(n.numel(), dtype=torch.float64)
        weights[live] = dual_cone_weights(C, (p[live] * n).unsqueeze(0))[0] / n
    return weights.to(dtype=G.dtype, device=G.device)


@register("dualproj")
class DualProj(GradientBalancer):
    """DualProj: project the mean task gradient onto the dual cone of all task gradients.

    The aggregator of TorchJD (Quinton & Rey, `Jacobian Descent for Multi-Objective
    Optimization <https://arxiv.org/abs/2406.16232>`_, 2024), which is the projection of
    `Gradient Episodic Memory for Continual Learning <https://arxiv.org/abs/1706.08840>`_
    (Lopez-Paz & Ranzato, NeurIPS 2017, Eq. 11) applied to the mean gradient: the closest
    vector to Σ_t p_t g_t with a non-negative inner product with every g_t. Without
    conflict it is the mean itself. `preference` p (default 1/T each) weights the rows
    before the projection. One small non-negative QP on the Gramian, solved exactly by the
    active-set solver UPGrad uses (TorchJD calls quadprog). Departure: a 1e-9 ridge on the
    correlation matrix (TorchJD: 1e-4 on the normalised Gramian). Stateless.
    """

    properties = frozenset({"expected_structure", "non_conflicting", "permutation_invariant", "strongly_stationary"})

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        preference: Sequence[float] | None = None,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(tasks, chunk_size=chunk_size)
        self.preference = None if preference is None else torch.as_tensor(preference, dtype=torch.float64)
        if self.preference is not None and bool((self.preference < 0).any()):
            raise ValueError(f"DualProj preference values must be >= 0, got {self.preference.tolist()}")

    def weights(self, G: Tensor) -> Tensor:
        if self.preference is not None and self.preference.numel() != G.shape[0]:
            raise ValueError(
                f"DualProj has {self.preference.numel()} preference values but got {G.shape[0]} task gradients"
            )
        return dualproj_weights(G, self.preference)

    def _gramian_weights(self, G: Tensor, losses: Tensor, index: Tensor) -> Tensor:
        preference = None if self.preference is None else self.preference[index.cpu()]
        return dualproj_weights(G, preference)
