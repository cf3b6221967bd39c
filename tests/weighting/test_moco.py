"""MoCo: its recursion replayed in numpy, and the paper's limit (MGDA's direction for exact gradients)."""

import numpy as np
import pytest
import torch

from mtlkit.weighting import get
from mtlkit.weighting.methods.mgda import mgda_weights


def test_tracking_and_weight_steps_follow_the_paper_recursion(simplex_projection):
    generator = torch.Generator().manual_seed(0)
    Js = [torch.randn(3, 4, generator=generator, dtype=torch.float64) for _ in range(4)]
    moco = get("moco", tasks=3, beta=0.5, beta_sigma=0.5, gamma=0.3, gamma_sigma=0.5, rho=0.1)
    y, lam = np.zeros((3, 4)), np.full(3, 1 / 3)
    for k, J in enumerate(Js, start=1):
        d, weights = moco.combine(J, torch.ones(3, dtype=torch.float64), torch.arange(3))
        y = y - 0.5 / k**0.5 * (y - J.numpy())
        lam = simplex_projection(lam - 0.3 / k**0.5 * (y @ y.T + 0.1 * np.eye(3)) @ lam)
        assert np.allclose(weights.numpy(), lam, atol=1e-6)
        assert np.allclose(d.numpy(), lam @ y, atol=1e-6)


def test_with_exact_gradients_the_direction_tends_to_mgdas():
    J = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    moco = get("moco", tasks=3)
    for _ in range(3000):
        d, weights = moco.combine(J, torch.ones(3, dtype=torch.float64), torch.arange(3))
    reference = mgda_weights(J @ J.T)
    assert torch.allclose(weights, reference, atol=1e-3)
    assert torch.allclose(d, reference @ J, atol=1e-3)


def test_normalize_feeds_loss_scaled_unit_gradients():
    J = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    losses = torch.tensor([2.0, 0.5], dtype=torch.float64)
    moco = get("moco", tasks=2, normalize=True, beta=1.0)  # β₁ = 1: y is the first fed gradient
    moco.combine(J, losses, torch.arange(2))
    assert torch.allclose(moco.tracked.double(), torch.tensor([[1.2, 1.6], [0.0, 0.5]], dtype=torch.float64), atol=1e-6)


def test_a_batch_with_some_tasks_moves_only_their_state():
    moco = get("moco", tasks=3)
    J = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    moco.combine(J, torch.ones(2), torch.tensor([0, 2]))
    assert torch.equal(moco.tracked[1], torch.zeros(2)) and torch.isclose(moco.lambdas[1], torch.tensor(1 / 3))
    assert torch.isclose(moco.lambdas.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("name", ["moco", "excess_mtl", "adatask"])
def test_per_coordinate_state_refuses_gradients_of_another_width(name):
    balancer = get(name, tasks=2)
    balancer.combine(torch.ones(2, 3), torch.ones(2), torch.arange(2))
    with pytest.raises(ValueError, match="reached another set of shared parameters"):
        balancer.combine(torch.ones(2, 4), torch.ones(2), torch.arange(2))
