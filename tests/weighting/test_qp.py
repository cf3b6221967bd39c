"""The shared small solvers: optimality conditions and rounding-hostile inputs."""

from __future__ import annotations

import pytest
import torch

from mtlkit.weighting._qp import dual_cone_weights, simplex_min


@pytest.mark.parametrize("seed", range(5))
def test_dual_cone_weights_satisfy_the_kkt_conditions(seed):
    gen = torch.Generator().manual_seed(seed)
    T = 3 + seed
    J = torch.randn(T, 4, generator=gen, dtype=torch.float64)
    G = J @ J.T + 1e-9 * torch.eye(T, dtype=torch.float64)
    U = torch.diag(torch.rand(T, generator=gen, dtype=torch.float64))
    W = dual_cone_weights(G, U)
    grad = W @ G  # ½∇ of wᵀGw
    # min wᵀGw s.t. w ≥ u: feasible, gradient non-negative, complementary slackness.
    assert bool((W >= U - 1e-12).all())
    assert bool((grad >= -1e-9).all())
    assert float(((W - U) * grad).abs().max()) < 1e-9


@pytest.mark.parametrize(
    "rows",
    [[[1.0, 0.3], [-0.5, 1.0], [0.2, -1.0]], [[1.0, 0.3], [0.5, 1.0], [2.0, -0.2]]],  # 0 inside / outside the hull
)
def test_simplex_min_with_a_linear_term_beats_a_dense_grid(rows):
    J = torch.tensor(rows, dtype=torch.float64)
    G = J @ J.T
    a = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    c = 0.7
    w = simplex_min(G, a, c)
    steps = 300
    i, j = torch.meshgrid(torch.arange(steps + 1), torch.arange(steps + 1), indexing="ij")
    keep = i + j <= steps
    grid = torch.stack([i[keep], j[keep], steps - i[keep] - j[keep]], dim=1).to(torch.float64) / steps
    values = grid @ a + c * ((grid @ G) * grid).sum(1).clamp(min=0).sqrt()
    assert float(w @ a + c * (w @ G @ w).clamp(min=0).sqrt()) <= float(values.min()) + 1e-12


def test_nearly_identical_gradients_terminate_at_the_min_norm_point():
    gen = torch.Generator().manual_seed(0)
    J = torch.randn(12, 8, generator=gen, dtype=torch.float64) + 1.0
    J[1] = J[0]
    J[2] = (1 + 1e-7) * J[0]
    J[3] = J[4] * (1 - 1e-9)
    G = J @ J.T
    w = simplex_min(G)
    d = w @ J
    # Optimality of the min-norm point d: every gradient has g·d >= ‖d‖² (up to rounding).
    assert bool((J @ d >= d @ d - 1e-8 * float(G.diagonal().max())).all())


def test_simplex_min_needs_a_positive_c():
    with pytest.raises(ValueError, match="c > 0"):
        simplex_min(torch.eye(2, dtype=torch.float64), c=0.0)


@pytest.mark.parametrize("seed", range(3))
def test_dual_cone_weights_for_many_tasks_gather_the_passive_systems_to_the_same_solution(seed, monkeypatch):
    # T >= _COMPACT_FROM: each row's passive system is gathered to the largest passive set.
    import mtlkit.weighting._qp as qp

    gen = torch.Generator().manual_seed(seed)
    T = qp._COMPACT_FROM + 6 * seed
    J = torch.randn(T, 3 * T, generator=gen, dtype=torch.float64) - 0.1 * seed
    G = J @ J.T / (3 * T) + 1e-9 * torch.eye(T, dtype=torch.float64)
    U = torch.diag(torch.rand(T, generator=gen, dtype=torch.float64))
    W = dual_cone_weights(G, U)
    grad = W @ G
    assert bool((W >= U - 1e-12).all())
    assert bool((grad >= -1e-9).all())
    assert float(((W - U) * grad).abs().max()) < 1e-9
    monkeypatch.setattr(qp, "_COMPACT_FROM", T + 1)  # the T×T systems, padded with the identity
    assert torch.allclose(dual_cone_weights(G, U), W, rtol=1e-10, atol=1e-13)
