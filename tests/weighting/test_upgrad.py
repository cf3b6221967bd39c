"""UPGrad: no task is made worse, the mean without conflict, and a brute-force QP reference."""

from __future__ import annotations

import pytest
import torch

from mtlkit.weighting import get
from mtlkit.weighting.methods.upgrad import UPGrad, upgrad_weights


@pytest.mark.parametrize("seed", range(6))
def test_update_has_non_negative_inner_product_with_every_task_gradient(seed):
    gen = torch.Generator().manual_seed(seed)
    T = 2 + seed
    J = torch.randn(T, 4, generator=gen, dtype=torch.float64)
    d = UPGrad().aggregate(J)
    assert bool((J @ d >= -1e-7 * J.norm(dim=1) * d.norm()).all())


def test_without_conflict_the_update_is_the_mean_gradient():
    J = torch.tensor([[1.0, 0.0, 1.0], [0.5, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    assert bool(((J @ J.T) >= 0).all())
    assert torch.allclose(UPGrad().aggregate(J), J.mean(0), atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_projections_match_a_brute_force_quadratic_program(seed):
    optimize = pytest.importorskip("scipy.optimize")
    gen = torch.Generator().manual_seed(seed)
    T = 3 + seed % 2
    J = torch.randn(T, 5, generator=gen, dtype=torch.float64)
    J[1] = -0.7 * J[0] + 0.2 * J[1]
    G = (J @ J.T).numpy()
    reference = torch.zeros(5, dtype=torch.float64)
    for i in range(T):
        # π(g_i / T) = Jᵀw with w = argmin wᵀGw over w_i ≥ 1/T, w_j ≥ 0.
        bounds = [(1.0 / T if j == i else 0.0, None) for j in range(T)]
        result = optimize.minimize(
            lambda w: w @ G @ w, x0=[b[0] + 0.1 for b in bounds], jac=lambda w: 2 * G @ w,
            bounds=bounds, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10000},
        )
        reference += torch.as_tensor(result.x) @ J
    assert torch.allclose(UPGrad().aggregate(J), reference, atol=1e-6)


def test_preference_weights_the_projected_gradients_and_is_indexed_by_active_task():
    J = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # no conflict
    balancer = UPGrad(tasks=3, preference=[0.2, 0.3, 0.5])
    assert torch.allclose(balancer.aggregate(J), torch.tensor([0.7, 0.8], dtype=torch.float64))
    g, w = balancer.combine(J[[0, 2]], torch.ones(2), torch.tensor([0, 2]))
    assert torch.allclose(w, torch.tensor([0.2, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="preference"):
        UPGrad(preference=[-1.0, 1.0])


@pytest.mark.parametrize(
    "J",
    [[[1.0, 2.0], [1.0, 2.0]], [[1.0, 2.0], [0.0, 0.0]], [[1.0, 0.0], [-1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]],
)
def test_zero_identical_and_opposite_gradients_give_finite_updates(J):
    J = torch.tensor(J, dtype=torch.float64)
    w = upgrad_weights(J @ J.T)
    assert bool(torch.isfinite(w).all())
    assert bool((J @ (w @ J) >= -1e-7).all())


def test_backward_through_registry_fills_finite_gradients(small_mtl):
    model = small_mtl(num_tasks=3)
    losses, rep = model()
    get("upgrad").backward(losses, shared_reps=rep)
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
