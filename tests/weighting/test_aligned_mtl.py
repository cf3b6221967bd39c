"""Aligned-MTL: the aligned gradients are orthogonal with equal norms (condition number 1)."""

from __future__ import annotations

import pytest
import torch

from mtlkit.weighting import get
from mtlkit.weighting.methods.aligned_mtl import AlignedMTL, alignment_matrix


@pytest.mark.parametrize("seed", range(4))
def test_aligned_gramian_is_the_smallest_eigenvalue_times_identity(seed):
    J = torch.randn(4, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    G = J @ J.T
    aligned = alignment_matrix(G) @ J
    expected = torch.linalg.eigvalsh(G).min() * torch.eye(4, dtype=torch.float64)
    assert torch.allclose(aligned @ aligned.T, expected, atol=1e-10)
    assert float(torch.linalg.cond(aligned)) == pytest.approx(1.0, abs=1e-8)


def test_update_is_the_sum_of_the_svd_aligned_gradients():
    J = torch.randn(3, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(J, full_matrices=False)
    reference = (S.min() * U @ Vh).sum(0)  # J = U S Vᵀ ↦ σ_min U Vᵀ
    assert torch.allclose(AlignedMTL().aggregate(J), reference, atol=1e-10)


@pytest.mark.parametrize(("mode", "pick"), [("median", lambda s: s.median()), ("rmse", lambda s: s.mean())])
def test_scale_modes_set_the_common_singular_value(mode, pick):
    J = torch.randn(3, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    eig = torch.linalg.eigvalsh(J @ J.T)
    aligned = alignment_matrix(J @ J.T, mode) @ J
    assert torch.allclose(aligned @ aligned.T, pick(eig) * torch.eye(3, dtype=torch.float64), atol=1e-10)


def test_rank_deficient_gradients_align_on_their_span_without_nan():
    g1, g2 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 0.0])
    J = torch.stack([g1, g1, g2, torch.zeros(3)]).double()
    B = alignment_matrix(J @ J.T)
    assert bool(torch.isfinite(B).all())
    aligned = B @ J
    eig = torch.linalg.eigvalsh(aligned @ aligned.T)
    nonzero = eig[eig > 1e-9]
    assert nonzero.numel() == 2 and torch.allclose(nonzero, nonzero[0].expand(2))
    assert torch.equal(AlignedMTL().aggregate(torch.zeros(2, 3)), torch.zeros(3))


def test_unknown_scale_mode_is_rejected():
    with pytest.raises(ValueError, match="scale_mode"):
        AlignedMTL(scale_mode="max")


def test_backward_through_registry_fills_finite_gradients(small_mtl):
    model = small_mtl(num_tasks=3)
    losses, rep = model()
    get("aligned_mtl").backward(losses, shared_reps=rep)
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def test_mean_reduction_is_the_sum_divided_by_the_number_of_tasks():
    J = torch.randn(4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.allclose(AlignedMTL(reduction="mean").aggregate(J), AlignedMTL().aggregate(J) / 4, atol=1e-12)
    # TorchJD's published value for AlignedMTL() on this Jacobian is (0.2133, 0.9673, 0.9673).
    J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    expected = torch.tensor([0.2133, 0.9673, 0.9673])
    assert torch.allclose(AlignedMTL(reduction="mean").aggregate(J), expected, atol=1e-4)
    with pytest.raises(ValueError, match="reduction"):
        AlignedMTL(reduction="max")
