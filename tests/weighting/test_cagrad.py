"""CAGrad against the mean gradient (c = 0), a grid over the simplex and its primal problem."""

from __future__ import annotations

import pytest
import torch

from mtlkit.weighting import get
from mtlkit.weighting.methods.cagrad import CAGrad, cagrad_weights


def _dual_objective(G: torch.Tensor, w: torch.Tensor, c: float) -> torch.Tensor:
    """g_wᵀg0 + c‖g0‖‖g_w‖ for each row of w."""
    T = G.shape[0]
    mean = torch.full((T,), 1.0 / T, dtype=G.dtype)
    radius = c * float(mean @ G @ mean) ** 0.5
    return w @ G @ mean + radius * ((w @ G) * w).sum(-1).clamp(min=0).sqrt()


def _grid(steps: int = 300) -> torch.Tensor:
    i, j = torch.meshgrid(torch.arange(steps + 1), torch.arange(steps + 1), indexing="ij")
    keep = i + j <= steps
    return torch.stack([i[keep], j[keep], steps - i[keep] - j[keep]], dim=1).to(torch.float64) / steps


@pytest.mark.parametrize("rescale", [0, 1, 2])
def test_c_zero_gives_the_mean_gradient(rescale):
    J = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(CAGrad(c=0.0, rescale=rescale).aggregate(J), J.mean(0), atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_dual_solution_is_at_least_as_good_as_a_dense_grid(seed):
    J = torch.randn(3, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    J[2] = -0.8 * J[0] + 0.3 * J[2]
    G = J @ J.T
    c = 0.5
    mean = torch.full((3,), 1 / 3, dtype=torch.float64)
    radius = c * float(mean @ G @ mean) ** 0.5
    weights = cagrad_weights(G, c=c, rescale=0)
    # Recover the dual w from the weights 1/T + (radius / ‖g_w‖) w, with Σw = 1.
    shift = weights - mean
    w = shift / shift.sum()
    assert float(_dual_objective(G, w.unsqueeze(0), c)) <= float(_dual_objective(G, _grid(), c).min()) + 1e-9
    assert float(shift.sum()) == pytest.approx(radius / float(w @ G @ w) ** 0.5, rel=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_update_solves_the_primal_max_min_problem_on_its_ball(seed):
    gen = torch.Generator().manual_seed(seed)
    J = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    c = 0.5
    g0 = J.mean(0)
    d = CAGrad(c=c, rescale=0).aggregate(J)
    assert float((d - g0).norm()) <= c * float(g0.norm()) * (1 + 1e-9)
    # Any other point of the ball ‖d' − g0‖ ≤ c‖g0‖ has a worse worst-task improvement.
    directions = torch.randn(20000, 3, generator=gen, dtype=torch.float64)
    ball = g0 + c * float(g0.norm()) * directions / directions.norm(dim=1, keepdim=True)
    assert float((J @ d).min()) >= float((ball @ J.T).min(dim=1).values.max()) - 1e-9


@pytest.mark.parametrize(("rescale", "factor"), [(0, 1.0), (1, 1.25), (2, 1.5)])
def test_rescale_divides_by_the_official_factors(rescale, factor):
    J = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    plain = CAGrad(c=0.5, rescale=0).aggregate(J)
    assert torch.allclose(CAGrad(c=0.5, rescale=rescale).aggregate(J), plain / factor, atol=1e-12)


@pytest.mark.parametrize("c", [1.0, 2.0, 5.0])
def test_c_at_least_one_conflicts_with_no_task_on_random_jacobians(c):
    # The ball then holds 0, so the worst task improvement is >= 0 (4 tasks in 3-d: 0 is
    # often inside the hull, the degenerate case of the dual).
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        J = torch.randn(4, 3, generator=gen, dtype=torch.float64)
        d = CAGrad(c=c).aggregate(J)
        norms = J.norm(dim=1)
        assert bool((J @ d >= -1e-7 * norms * norms.max()).all())


def test_when_zero_is_in_the_hull_the_update_is_the_mean_projected_onto_the_dual_cone():
    # 0 = (g1 + g2)/2, so the dual optimum is g_w = 0. The dual cone {x: Jx >= 0} is the
    # half-line x1 = 0, x2 >= 0; the mean (-1/3, 1/3) conflicts with g1, its projection is (0, 1/3).
    J = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    d = CAGrad(c=2.0, rescale=0).aggregate(J)
    assert torch.allclose(d, torch.tensor([0.0, 1.0 / 3.0], dtype=torch.float64), atol=1e-7)
    assert float((d - J.mean(0)).norm()) <= 2.0 * float(J.mean(0).norm())  # inside the ball


def test_invalid_options_are_rejected():
    with pytest.raises(ValueError, match="rescale"):
        CAGrad(rescale=3)
    with pytest.raises(ValueError, match="c must be"):
        CAGrad(c=-0.1)


@pytest.mark.parametrize(
    "J",
    [
        [[1.0, 2.0], [1.0, 2.0]],
        [[1.0, 2.0], [0.0, 0.0]],
        [[1.0, 0.0], [-1.0, 0.0]],  # mean gradient zero
        [[2.0, 0.0], [-1.0, 0.0], [0.0, 0.0]],
        [[0.0, 0.0], [0.0, 0.0]],
    ],
)
def test_degenerate_gradients_give_finite_updates(J):
    J = torch.tensor(J, dtype=torch.float64)
    assert bool(torch.isfinite(CAGrad().aggregate(J)).all())


def test_backward_through_registry_fills_finite_gradients(small_mtl):
    model = small_mtl(num_tasks=3)
    losses, _ = model()
    get("cagrad").backward(losses, shared_params=model.trunk.parameters())
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
