"""Nash-MTL's weights solve (G α) = 1/α; clipping, update frequency and degenerate cases."""

from __future__ import annotations

import pytest
import torch

from mtlkit.weighting import get
from mtlkit.weighting.methods.nash_mtl import NashMTL, nash_weights


@pytest.mark.parametrize("seed", range(6))
def test_weights_satisfy_the_bargaining_condition(seed):
    gen = torch.Generator().manual_seed(seed)
    T = 2 + seed % 4
    scales = torch.logspace(-2, 2, T, dtype=torch.float64).unsqueeze(1)  # gradient norms over 4 decades
    J = torch.randn(T, T + 3, generator=gen, dtype=torch.float64) * scales
    G = J @ J.T
    alpha = nash_weights(G)
    assert bool((alpha > 0).all())
    assert torch.allclose(G @ alpha, 1 / alpha, rtol=1e-6)


def test_orthogonal_gradients_get_the_inverse_of_their_norms():
    J = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.5, 0.0]], dtype=torch.float64)
    assert torch.allclose(nash_weights(J @ J.T), torch.tensor([0.5, 2.0], dtype=torch.float64), rtol=1e-7)


def test_identical_gradients_share_the_closed_form_weight():
    g = torch.tensor([3.0, 4.0], dtype=torch.float64)  # ‖g‖² = 25: α = 1/√(2·25)
    alpha = nash_weights(torch.stack([g, g]) @ torch.stack([g, g]).T)
    assert torch.allclose(alpha, torch.full((2,), 50.0**-0.5, dtype=torch.float64), rtol=1e-7)


def test_zero_gradient_gets_zero_weight_and_the_others_still_bargain():
    J = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    alpha = nash_weights(J @ J.T)
    assert float(alpha[1]) == 0.0
    assert torch.allclose(alpha[[0, 2]], torch.tensor([1.0, 0.5], dtype=torch.float64), rtol=1e-7)
    assert torch.equal(nash_weights(torch.zeros(2, 2)), torch.zeros(2))


def test_opposite_gradients_stay_finite_and_cancel():
    J = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    balancer = NashMTL(tasks=2, max_norm=0.0)
    g, w = balancer.combine(J, torch.ones(2), torch.arange(2))
    assert bool(torch.isfinite(w).all()) and float(g.norm()) < 1e-6


def test_max_norm_clips_the_update_without_turning_it():
    J = torch.tensor([[0.1, 0.0], [0.0, 0.01]], dtype=torch.float64)  # small gradients: large α
    unclipped = NashMTL(tasks=2, max_norm=0.0).aggregate(J)
    clipped = NashMTL(tasks=2, max_norm=1.0).aggregate(J)
    assert float(unclipped.norm()) > 1.0
    assert float(clipped.norm()) == pytest.approx(1.0)
    assert torch.allclose(clipped, unclipped / unclipped.norm())


def test_weights_are_reused_between_updates():
    gen = torch.Generator().manual_seed(0)
    balancer = NashMTL(tasks=2, update_weights_every=3, max_norm=0.0)
    first = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    _, w0 = balancer.combine(first, torch.ones(2), torch.arange(2))
    for _ in range(2):
        _, w = balancer.combine(torch.randn(2, 4, generator=gen, dtype=torch.float64), torch.ones(2), torch.arange(2))
        assert torch.allclose(w, w0)
    J = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    _, w3 = balancer.combine(J, torch.ones(2), torch.arange(2))
    assert torch.allclose(w3, nash_weights(J @ J.T))
    assert int(balancer.step) == 4


def test_invalid_options_are_rejected():
    with pytest.raises(ValueError, match="update_weights_every"):
        NashMTL(tasks=2, update_weights_every=0)
    with pytest.raises(ValueError, match="max_norm"):
        NashMTL(tasks=2, max_norm=-1.0)


def test_backward_fills_finite_gradients_within_max_norm(small_mtl):
    model = small_mtl(num_tasks=3)
    losses, _ = model()
    result = get("nash_mtl", tasks=3, max_norm=0.5).backward(losses, shared_params=model.trunk.parameters())
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    assert float(result.stats["grad_norm"]) <= 0.5 + 1e-6


@pytest.mark.parametrize("T", [2, 3, 5])
def test_unclipped_update_has_norm_sqrt_T_so_the_default_clip_scales_it_by_one_over_sqrt_T(T):
    # αᵀGα = Σ_t α_t (Gα)_t = Σ_t 1 = T: the paper's update has norm √T whatever the
    # gradients; max_norm = 1 (the official code's, LibMTL's and TorchJD's default, and
    # this one's) divides it by √T — the factor √2 between the two scales for two tasks.
    J = torch.randn(T, 8, generator=torch.Generator().manual_seed(T), dtype=torch.float64)
    paper = NashMTL(tasks=T, max_norm=0.0).aggregate(J)
    assert float(paper.norm()) == pytest.approx(T**0.5, rel=1e-7)  # up to the 1e-8 ridge
    assert torch.allclose(NashMTL(tasks=T).aggregate(J), paper / T**0.5, atol=1e-7)
