"""GradVac: target attainment, its EMA, and PCGrad as its beta = 0 case."""

from __future__ import annotations

import pytest
import torch

from mtlkit.weighting import get
from mtlkit.weighting.methods.gradvac import GradVac, gradvac_weights
from mtlkit.weighting.methods.pcgrad import PCGrad


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def test_correction_lifts_the_pair_similarity_exactly_to_the_target():
    g1 = torch.tensor([1.0, 0.2, -0.5], dtype=torch.float64)
    g2 = torch.tensor([-0.4, 1.0, 0.3], dtype=torch.float64)
    J = torch.stack([g1, g2])
    targets = torch.tensor([[0.0, 0.3], [0.3, 0.0]], dtype=torch.float64)
    assert _cos(g1, g2) < 0.3
    w, _ = gradvac_weights(J @ J.T, targets, [[1], []], beta=0.0)  # only g1 is corrected
    g1_corrected = (w - torch.tensor([0.0, 1.0], dtype=torch.float64)) @ J
    assert _cos(g1_corrected, g2) == pytest.approx(0.3, abs=1e-12)


def test_targets_follow_the_ema_of_the_observed_similarities():
    J = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)  # cos = 0.6, above the 0 target
    beta = 0.25
    balancer = GradVac(tasks=2, beta=beta)
    for step in range(1, 4):
        g, _ = balancer.combine(J, torch.ones(2), torch.arange(2))
        expected = 0.6 * (1 - (1 - beta) ** step)  # EMA from 0 of a constant 0.6
        assert float(balancer.targets[0, 1]) == pytest.approx(expected, abs=1e-6)
        assert torch.allclose(g, J.sum(0))  # similarity above target: no correction


def test_beta_zero_is_pcgrad_with_the_same_task_orders():
    gen = torch.Generator().manual_seed(4)
    vac, pc = GradVac(tasks=4, beta=0.0, seed=5), PCGrad(seed=5)
    for _ in range(3):
        J = torch.randn(4, 6, generator=gen, dtype=torch.float64)
        g_vac, _ = vac.combine(J, torch.ones(4), torch.arange(4))
        assert torch.allclose(g_vac, pc.aggregate(J), atol=1e-12)


def test_only_the_active_tasks_targets_move():
    balancer = GradVac(tasks=3, beta=0.5)
    J = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64) + 0.5
    balancer.combine(J, torch.ones(2), torch.tensor([0, 2]))
    moved = balancer.targets != 0
    assert bool(moved[0, 2]) and bool(moved[2, 0])
    assert not bool(moved[1].any()) and not bool(moved[:, 1].any())


def test_state_dict_carries_targets_and_order_stream():
    gen = torch.Generator().manual_seed(0)
    J = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    a = GradVac(tasks=3, beta=0.3, seed=2)
    a.combine(J, torch.ones(3), torch.arange(3))
    b = GradVac(tasks=3, beta=0.3, seed=11)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.combine(J, torch.ones(3), torch.arange(3))[0], b.combine(J, torch.ones(3), torch.arange(3))[0])


def test_zero_identical_and_opposite_gradients_give_finite_updates():
    J = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0], [-1.0, -2.0]], dtype=torch.float64)
    balancer = GradVac(tasks=4, beta=0.5)
    for _ in range(3):
        g, _w = balancer.combine(J, torch.ones(4), torch.arange(4))
        assert bool(torch.isfinite(g).all()) and bool(torch.isfinite(balancer.targets).all())


def test_backward_through_registry_fills_finite_gradients(small_mtl):
    model = small_mtl(num_tasks=3)
    losses, _ = model()
    get("gradvac", tasks=3).backward(losses, shared_params=model.trunk.parameters())
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
