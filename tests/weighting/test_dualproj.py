"""DualProj: the projection of the mean onto the dual cone, against a brute-force active-set enumeration."""

from __future__ import annotations

import itertools

import pytest
import torch

from mtlkit.weighting import get
from mtlkit.weighting.methods.dualproj import DualProj


def _project_onto_dual_cone(J: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """argmin ‖v − x‖² over Jv ≥ 0, by trying every set S of active constraints.

    KKT: v = x + J_Sᵀμ with J_S v = 0 and μ ≥ 0; the feasible candidate closest to x wins.
    """
    best, best_distance = None, float("inf")
    T = J.shape[0]
    for size in range(T + 1):
        for S in itertools.combinations(range(T), size):
            v = x.clone()
            if S:
                A = J[list(S)]
                mu = torch.linalg.lstsq(A @ A.T, -(A @ x)).solution
                if bool((mu < -1e-10).any()):
                    continue
                v = x + A.T @ mu
            if bool((J @ v >= -1e-9).all()) and float((v - x).norm()) < best_distance:
                best, best_distance = v, float((v - x).norm())
    return best


@pytest.mark.parametrize("seed", range(6))
def test_update_is_the_projection_of_the_mean_onto_the_dual_cone(seed):
    gen = torch.Generator().manual_seed(seed)
    T = 2 + seed % 3
    J = torch.randn(T, 6, generator=gen, dtype=torch.float64)
    J[1] = -0.8 * J[0] + 0.3 * J[1]  # a strong conflict, so the projection is active
    reference = _project_onto_dual_cone(J, J.mean(dim=0))
    d = DualProj().aggregate(J)
    assert torch.allclose(d, reference, atol=1e-7)
    assert bool((J @ d >= -1e-7 * J.norm(dim=1) * d.norm()).all())  # non-conflicting (to the 1e-9 ridge)


def test_without_conflict_the_update_is_the_mean():
    J = torch.tensor([[1.0, 0.0, 1.0], [0.5, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(DualProj().aggregate(J), J.mean(dim=0), atol=1e-12)


def test_preference_is_the_vector_projected_and_is_indexed_by_the_active_tasks():
    J = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # no conflict: no projection
    balancer = DualProj(tasks=3, preference=[0.2, 0.3, 0.5])
    assert torch.allclose(balancer.aggregate(J), torch.tensor([0.7, 0.8], dtype=torch.float64))
    _, w = balancer.combine(J[[0, 2]], torch.ones(2), torch.tensor([0, 2]))
    assert torch.allclose(w, torch.tensor([0.2, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="preference"):
        DualProj(preference=[-1.0, 1.0])


def test_zero_gradient_keeps_its_preference_weight_and_opposite_gradients_cancel():
    J = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(get("dualproj").weights(J @ J.T), torch.tensor([0.5, 0.5], dtype=torch.float64))
    J = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(DualProj().aggregate(J), torch.zeros(2, dtype=torch.float64), atol=1e-12)
