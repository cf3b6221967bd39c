"""PCGrad against the closed form for two tasks and a vector-space reference for three."""

from __future__ import annotations

import pytest
import torch

from mtlkit.weighting import get
from mtlkit.weighting.methods.pcgrad import PCGrad, pcgrad_weights, random_orders


def _pcgrad_on_vectors(J: torch.Tensor, orders) -> torch.Tensor:
    """Algorithm 1 of the paper, written on the gradient vectors themselves."""
    total = torch.zeros_like(J[0])
    for i in range(J.shape[0]):
        g = J[i].clone()
        for j in orders[i]:
            if g @ J[j] < 0:
                g = g - (g @ J[j]) / (J[j] @ J[j]) * J[j]
        total = total + g
    return total


def test_two_conflicting_gradients_match_the_closed_form_and_conflict_no_more():
    g1 = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    g2 = torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64)
    assert g1 @ g2 < 0
    J = torch.stack([g1, g2])
    update = PCGrad().aggregate(J)
    expected = (g1 - (g1 @ g2) / (g2 @ g2) * g2) + (g2 - (g2 @ g1) / (g1 @ g1) * g1)
    assert torch.allclose(update, expected, atol=1e-12)
    assert float(update @ g1) >= 0 and float(update @ g2) >= 0


def test_gradients_without_conflict_are_summed():
    J = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
    assert torch.allclose(PCGrad().aggregate(J), J.sum(0))


@pytest.mark.parametrize("seed", range(5))
def test_gramian_weights_equal_the_algorithm_on_vectors(seed):
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(4, 6, generator=g, dtype=torch.float64)
    orders = random_orders(4, g)
    assert torch.allclose(pcgrad_weights(J @ J.T, orders) @ J, _pcgrad_on_vectors(J, orders), atol=1e-12)


def test_orders_are_permutations_of_the_other_tasks():
    orders = random_orders(5, torch.Generator().manual_seed(0))
    assert [sorted(order) for order in orders] == [[j for j in range(5) if j != i] for i in range(5)]


def test_same_seed_same_updates_and_state_dict_restores_the_order_stream():
    g = torch.Generator().manual_seed(7)
    J = torch.randn(4, 5, generator=g, dtype=torch.float64)
    a, b = PCGrad(seed=3), PCGrad(seed=3)
    assert torch.equal(a.aggregate(J), b.aggregate(J))
    state = a.state_dict()
    expected = [a.aggregate(J) for _ in range(3)]
    c = PCGrad(seed=99)
    c.load_state_dict(state)
    assert all(torch.equal(c.aggregate(J), e) for e in expected)


def test_zero_and_identical_gradients_give_finite_updates():
    J = torch.tensor([[1.0, -2.0], [1.0, -2.0], [0.0, 0.0], [-1.0, 2.0]], dtype=torch.float64)
    g, w = PCGrad().combine(J, torch.ones(4), torch.arange(4))
    assert bool(torch.isfinite(g).all()) and bool(torch.isfinite(w).all())


def test_backward_through_registry_fills_finite_gradients(small_mtl):
    model = small_mtl(num_tasks=3)
    losses, rep = model()
    get("pcgrad", seed=1).backward(losses, shared_reps=rep)
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
