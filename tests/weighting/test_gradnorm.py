"""GradNorm's weight update follows the paper's rule on fixed toys."""

from __future__ import annotations

import pytest
import torch

from mtlkit.weighting import get
from mtlkit.weighting.methods.gradnorm import GradNorm


def test_equal_training_rates_move_weight_towards_the_task_with_the_smaller_gradient():
    J = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)  # norms 1 and 3
    balancer = GradNorm(tasks=2, lr=0.01)
    losses = torch.tensor([2.0, 2.0])
    g, w = balancer.combine(J, losses, torch.arange(2))
    assert torch.allclose(w, torch.ones(2, dtype=torch.float64))  # this step used the old weights
    assert torch.allclose(g, J.sum(0))
    new = balancer.task_weights
    # target = mean(w n) = 2: task 0 (w n = 1) is below it and gains, task 1 loses.
    assert float(new[0]) > 1.0 > float(new[1])
    assert float(new.sum()) == pytest.approx(2.0)
    # One step of size lr·n_t in the direction of the target, then renormalised to sum T.
    raw = torch.tensor([1.0 + 0.01 * 1.0, 1.0 - 0.01 * 3.0])
    assert torch.allclose(new, raw * 2 / raw.sum())


def test_a_task_that_trains_slower_gets_a_larger_weight():
    J = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # equal norms
    balancer = GradNorm(tasks=2, alpha=1.5, lr=0.01)
    balancer.combine(J, torch.tensor([1.0, 1.0]), torch.arange(2))  # records L(0)
    balancer.task_weights.fill_(1.0)
    balancer.combine(J, torch.tensor([0.9, 0.3]), torch.arange(2))  # task 0 decreased less: r_0 > 1
    assert float(balancer.task_weights[0]) > 1.0 > float(balancer.task_weights[1])


def test_alpha_zero_drives_weighted_gradient_norms_together():
    J = torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    balancer = GradNorm(tasks=2, alpha=0.0, lr=0.005)
    losses = torch.tensor([1.0, 1.0])
    for _ in range(400):
        balancer.combine(J, losses, torch.arange(2))
    w = balancer.task_weights.double()
    weighted = w * J.norm(dim=1)
    assert float(weighted[0]) == pytest.approx(float(weighted[1]), rel=0.05)  # w ∝ 1/n: (0.4, 1.6)


def test_initial_losses_are_recorded_per_task_and_partial_steps_keep_the_sum():
    balancer = GradNorm(tasks=3, lr=0.05)
    J = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    balancer.combine(J, torch.tensor([2.0, 5.0]), torch.tensor([0, 2]))
    assert torch.isnan(balancer.initial_losses[1])
    assert balancer.initial_losses[[0, 2]].tolist() == [2.0, 5.0]
    assert float(balancer.task_weights[1]) == 1.0
    assert float(balancer.task_weights.sum()) == pytest.approx(3.0)
    balancer.combine(J, torch.tensor([7.0, 1.0]), torch.tensor([1, 2]))
    assert float(balancer.initial_losses[1]) == 7.0 and float(balancer.initial_losses[2]) == 5.0


def test_non_positive_first_loss_is_rejected_with_the_task_name():
    balancer = GradNorm(tasks=["depth", "seg"])
    with pytest.raises(ValueError, match="seg"):
        balancer.combine(torch.eye(2), torch.tensor([1.0, 0.0]), torch.arange(2))


def test_zero_and_identical_gradients_give_finite_weights():
    J = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    balancer = GradNorm(tasks=3)
    for _ in range(3):
        g, _w = balancer.combine(J, torch.ones(3), torch.arange(3))
        assert bool(torch.isfinite(g).all()) and bool(torch.isfinite(balancer.task_weights).all())


def test_backward_through_reps_fills_gradients_and_state_dict_carries_weights(small_mtl):
    model = small_mtl(num_tasks=3)
    balancer = get("gradnorm", tasks=3)
    for _ in range(2):
        losses, rep = model()
        balancer.backward(losses, shared_reps=rep)
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    fresh = GradNorm(tasks=3)
    fresh.load_state_dict(balancer.state_dict())
    assert torch.equal(fresh.task_weights, balancer.task_weights)
    assert torch.equal(fresh.initial_losses, balancer.initial_losses)


def test_a_step_that_would_zero_every_weight_raises_instead_of_keeping_stale_weights():
    # α = 0.5 and training rates (0.5, 1.5): Σ r^α < T, so both weighted norms can exceed their
    # targets (w n ∝ (0.38, 0.62)); with a huge lr both weights are pushed to zero.
    balancer = GradNorm(tasks=["depth", "seg"], alpha=0.5, lr=100.0)
    balancer.initial_losses.copy_(torch.ones(2))
    J = torch.tensor([[0.38, 0.0], [0.0, 0.62]])
    with pytest.raises(FloatingPointError, match=r"GradNorm.*lr=100.0.*\['depth', 'seg'\].*lower lr"):
        balancer.combine(J, torch.tensor([0.5, 1.5]), torch.arange(2))
    assert torch.equal(balancer.task_weights, torch.ones(2))  # nothing half-updated
