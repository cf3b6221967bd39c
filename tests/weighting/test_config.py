"""ConFIG: equal cosine with every task gradient, and the paper's pseudo-inverse formula computed on J."""

from __future__ import annotations

import pytest
import torch

from mtlkit.weighting.methods.config import ConFIG


def _config_on_J(J: torch.Tensor) -> torch.Tensor:
    """Eq. 2 of the paper, computed directly from the rows (float64): (Σ g_i·ĝ) ĝ, ĝ ∝ U⁺1."""
    U = J / J.norm(dim=1, keepdim=True)
    direction = torch.linalg.pinv(U) @ torch.ones(J.shape[0], dtype=J.dtype)
    unit = direction / direction.norm()
    return (J @ unit).sum() * unit


@pytest.mark.parametrize("seed", range(6))
def test_update_has_equal_positive_cosine_with_every_task_gradient(seed):
    gen = torch.Generator().manual_seed(seed)
    T = 2 + seed
    J = torch.randn(T, T + 3, generator=gen, dtype=torch.float64)  # linearly independent rows
    J[1] = -0.9 * J[0] + 0.2 * J[1]  # a strong conflict
    d = ConFIG().aggregate(J)
    cosines = (J @ d) / (J.norm(dim=1) * d.norm())
    assert bool((cosines > 0).all())
    assert torch.allclose(cosines, cosines.mean().expand(T), atol=1e-10)
    assert torch.allclose(d, _config_on_J(J), atol=1e-9)


def test_length_is_the_sum_of_the_projections_and_scaling_a_row_only_changes_the_length():
    J = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    d = ConFIG().aggregate(J)  # ĝ = (1, 1, 0)/√2, length 1/√2 + 2/√2
    assert torch.allclose(d, torch.tensor([1.5, 1.5, 0.0], dtype=torch.float64))
    d5 = ConFIG().aggregate(torch.diag(torch.tensor([5.0, 1.0], dtype=torch.float64)) @ J)
    assert torch.allclose(d5, torch.tensor([3.5, 3.5, 0.0], dtype=torch.float64))


def test_zero_gradient_gets_weight_zero_and_an_all_zero_jacobian_gives_zero():
    J = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    w = ConFIG().weights(J @ J.T)
    assert float(w[1]) == 0.0 and torch.allclose(w @ J, J[0])
    assert torch.equal(ConFIG().aggregate(torch.zeros(3, 4)), torch.zeros(4))


def test_rank_deficient_rows_match_the_pseudo_inverse_formula():
    gen = torch.Generator().manual_seed(3)
    J = torch.randn(4, 3, generator=gen, dtype=torch.float64)  # 4 rows in 3 dimensions
    assert torch.allclose(ConFIG().aggregate(J), _config_on_J(J), atol=1e-9)
