"""ConFIG: conflict-free updates with equal cosine to every task gradient (Liu et al., ICLR 2025)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtlkit.weighting._qp import host
from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.registry import register


def config_weights(G: Tensor) -> Tensor:
    """Weights w with Σ_t w_t g_t = (Σ_t g_t·ĝ) ĝ, ĝ the unit vector along U⁺1 (U: the unit rows g_t/‖g_t‖).

    From the Gramian alone: U⁺1 = Uᵀa with a = C⁺1, C = UUᵀ the correlation matrix, so
    ĝ = Uᵀa / sqrt(aᵀCa) and Σ_t g_t·ĝ = Σ_t n_t (Ca)_t / sqrt(aᵀCa). C's eigenvalues
    below T·eps of the Gramian's dtype (its rounding level) count as zero in the
    pseudo-inverse. Zero gradients get weight 0 (TorchJD: their unit row is 0).
    """
    T = G.shape[0]
    G64 = host(G)
    norms = G64.diagonal().clamp(min=0).sqrt()
    live = norms > 1e-12 * float(norms.max()) if float(norms.max()) > 0 else norms > 0
    weights = torch.zeros(T, dtype=torch.float64)
    if bool(live.any()):
        n = norms[live]
        C = G64[live][:, live] / (n.unsqueeze(0) * n.unsqueeze(1))
        a = torch.linalg.pinv(C, rtol=n.numel() * torch.finfo(G.dtype).eps, hermitian=True) @ torch.ones_like(n)
        Ca = C @ a
        q = float(a @ Ca)
        if q > 0:
            weights[live] = a / n * float(n @ Ca) / q
    return weights.to(dtype=G.dtype, device=G.device)


@register("config")
class ConFIG(GradientBalancer):
    """ConFIG: the update along the direction with equal cosine to every task gradient.

    `ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks
    <https://arxiv.org/abs/2408.11104>`_ (Liu, Chu, Thuerey, ICLR 2025), Eq. 2: with U the
    matrix of unit task gradients, the direction is ĝ = U⁺1/‖U⁺1‖ (equal cosine with
    every g_t, so no conflict when the gradients are linearly independent) and its
    length the sum of the gradients' projections on it, Σ_t g_t·ĝ. Computed from the
    Gramian (`config_weights`). The paper's equal weighting (TorchJD's default
    preference); no options. Stateless.
    """

    properties = frozenset({"expected_structure", "permutation_invariant", "linear_under_scaling"})

    def weights(self, G: Tensor) -> Tensor:
        return config_weights(G)
