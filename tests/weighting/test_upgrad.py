"""UPGrad: no task is made worse, the mean without conflict, and a brute-force QP reference."""

from __future__ import annotations

import itertools

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


def _nonnegative_qp_by_enumeration(G: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """argmin wᵀGw over w ≥ lower, exactly: try every set F of coordinates above their bound.

    On F the minimiser solves G[F,F] w_F = −G[F,¬F] lower_¬F; it is the answer when it stays
    above the bounds and the gradient is non-negative off F (KKT). Convexity makes any KKT
    point optimal; the smallest objective among them is returned.
    """
    T = G.shape[0]
    best, best_value = None, float("inf")
    for r in range(T + 1):
        for F in itertools.combinations(range(T), r):
            w = lower.clone()
            if F:
                f = list(F)
                rest = [j for j in range(T) if j not in F]
                w[f] = torch.linalg.solve(G[f][:, f], -G[f][:, rest] @ lower[rest])
            if bool((w < lower - 1e-12).any()):
                continue
            grad = G @ w
            if any(float(grad[j]) < -1e-10 for j in range(T) if j not in F):
                continue
            value = float(w @ G @ w)
            if value < best_value:
                best, best_value = w, value
    assert best is not None
    return best


@pytest.mark.parametrize("seed", range(4))
def test_projections_match_an_exact_quadratic_program_by_active_set_enumeration(seed):
    # An iterative reference (scipy's L-BFGS-B) stopped early on seed 0 with scipy 1.17.1,
    # 0.324 instead of the optimum 0.314 for task 2's projection; enumeration is exact.
    gen = torch.Generator().manual_seed(seed)
    T = 3 + seed % 2
    J = torch.randn(T, 5, generator=gen, dtype=torch.float64)
    J[1] = -0.7 * J[0] + 0.2 * J[1]
    G = J @ J.T
    reference = torch.zeros(5, dtype=torch.float64)
    for i in range(T):
        # π(g_i / T) = Jᵀw with w = argmin wᵀGw over w_i ≥ 1/T, w_j ≥ 0.
        lower = torch.zeros(T, dtype=torch.float64)
        lower[i] = 1.0 / T
        reference += _nonnegative_qp_by_enumeration(G, lower) @ J
    assert torch.allclose(UPGrad().aggregate(J), reference, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_torchjd_regularisation_solves_the_trace_normalised_ridged_problem(seed):
    gen = torch.Generator().manual_seed(seed)
    J = torch.randn(4, 3, generator=gen, dtype=torch.float64)  # 4 tasks in 3-d: singular G
    G = J @ J.T
    R = G / G.trace() + 1e-3 * torch.eye(4, dtype=torch.float64)
    expected = sum(_nonnegative_qp_by_enumeration(R, torch.eye(4, dtype=torch.float64)[i] / 4) for i in range(4))
    assert torch.allclose(upgrad_weights(G, norm_eps=1e-4, reg_eps=1e-3), expected, atol=1e-9)


def test_norm_eps_and_reg_eps_reproduce_torchjd_values_and_keep_permutation_invariance():
    # TorchJD's published values for UPGrad() (norm_eps = reg_eps = 1e-4) on this Jacobian.
    J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    balancer = UPGrad(norm_eps=1e-4, reg_eps=1e-4)
    assert torch.allclose(balancer.aggregate(J), torch.tensor([0.2929, 1.9004, 1.9004]), atol=1e-4)
    assert torch.allclose(balancer.weights(J @ J.T), torch.tensor([1.1109, 0.7894]), atol=1e-4)
    J = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = balancer.aggregate(J)
    for perm in ([5, 4, 3, 2, 1, 0], [1, 3, 5, 0, 2, 4]):
        assert torch.allclose(balancer.aggregate(J[perm]), d, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="reg_eps"):
        UPGrad(reg_eps=-1.0)


def test_preference_weights_the_projected_gradients_and_is_indexed_by_active_task():
    J = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # no conflict
    balancer = UPGrad(tasks=3, preference=[0.2, 0.3, 0.5])
    assert torch.allclose(balancer.aggregate(J), torch.tensor([0.7, 0.8], dtype=torch.float64))
    _, w = balancer.combine(J[[0, 2]], torch.ones(2), torch.tensor([0, 2]))
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
