"""DB-MTL: log-loss gradients, their EMA and magnitude balancing."""

from __future__ import annotations

import pytest
import torch

from mtlkit.weighting import get
from mtlkit.weighting.methods.db_mtl import DBMTL, magnitude_balance


def test_magnitude_balance_scales_every_gradient_to_the_largest_norm():
    grads = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(magnitude_balance(grads), torch.tensor([3.0, 4.0 + 5.0], dtype=torch.float64))


def test_log_gradient_from_the_jacobian_matches_autograd_of_the_log_loss(small_mtl):
    model = small_mtl(num_tasks=2, dtype=torch.float64)
    losses, _ = model()
    trunk = list(model.trunk.parameters())

    def flat_grad(value):
        return torch.cat([g.flatten() for g in torch.autograd.grad(value, trunk, retain_graph=True)])

    log_grads = torch.stack([flat_grad(torch.log(loss + 1e-8)) for loss in losses])
    J = torch.stack([flat_grad(loss) for loss in losses])
    balancer = DBMTL(tasks=2, beta=0.0)  # no averaging: the update is built from this step alone
    g, _ = balancer.combine(J, torch.stack(losses).detach(), torch.arange(2))
    assert torch.allclose(g, magnitude_balance(log_grads), atol=1e-12)


def test_ema_uses_the_decayed_rate_per_task_step():
    beta, sigma = 0.9, 0.5
    balancer = DBMTL(tasks=2, beta=beta, beta_sigma=sigma)
    J1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    J2 = torch.tensor([[0.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    losses = torch.tensor([1.0, 2.0], dtype=torch.float64)
    balancer.combine(J1, losses, torch.arange(2))
    g, _ = balancer.combine(J2, losses, torch.arange(2))
    logs1, logs2 = J1 / (losses + 1e-8).unsqueeze(1), J2 / (losses + 1e-8).unsqueeze(1)
    ema1 = (1 - beta) * logs1  # k = 1: β_1 = β, starting from 0
    beta2 = beta / 2**sigma
    ema2 = beta2 * ema1 + (1 - beta2) * logs2
    assert torch.allclose(balancer.grad_ema.double(), ema2, atol=1e-6)
    assert torch.allclose(g, magnitude_balance(ema2), atol=1e-6)
    assert balancer.steps.tolist() == [2, 2]


def test_state_dict_restores_the_gradient_average_into_a_fresh_balancer():
    balancer = DBMTL(tasks=2)
    J = torch.tensor([[1.0, 0.0, 2.0], [0.0, 2.0, 1.0]])
    balancer.combine(J, torch.tensor([1.0, 2.0]), torch.arange(2))
    fresh = DBMTL(tasks=2)
    fresh.load_state_dict(balancer.state_dict())
    assert torch.equal(fresh.grad_ema, balancer.grad_ema) and torch.equal(fresh.steps, balancer.steps)
    assert torch.equal(
        fresh.combine(J, torch.ones(2), torch.arange(2))[0], balancer.combine(J, torch.ones(2), torch.arange(2))[0]
    )


def test_size_change_and_negative_losses_are_rejected():
    balancer = DBMTL(tasks=["a", "b"])
    balancer.combine(torch.ones(2, 3), torch.ones(2), torch.arange(2))
    with pytest.raises(ValueError, match="changed size"):
        balancer.combine(torch.ones(2, 4), torch.ones(2), torch.arange(2))
    with pytest.raises(ValueError, match="'b'"):
        balancer.combine(torch.ones(2, 3), torch.tensor([1.0, -0.5]), torch.arange(2))


def test_zero_loss_zero_and_identical_gradients_give_finite_updates():
    J = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    g, _ = DBMTL(tasks=3).combine(J, torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), torch.arange(3))
    assert bool(torch.isfinite(g).all())


def test_backward_through_registry_fills_finite_gradients(small_mtl):
    model = small_mtl(num_tasks=3)
    losses, _ = model()
    get("db_mtl", tasks=3).backward(losses, shared_params=model.trunk.parameters())
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
