"""MGDA against exact enumeration of the min-norm problem, its options and MGDA-UB."""

from __future__ import annotations

import itertools

import pytest
import torch

from mtlkit.weighting import get
from mtlkit.weighting.methods.mgda import MGDA, mgda_weights


def _min_norm_by_enumeration(G: torch.Tensor) -> float:
    """min ‖Σ w_t g_t‖² over the simplex: the best affine min-norm point over all supports."""
    T = G.shape[0]
    best = float("inf")
    for size in range(1, T + 1):
        for support in itertools.combinations(range(T), size):
            idx = list(support)
            K = torch.ones(size + 1, size + 1, dtype=torch.float64)
            K[:size, :size] = G[idx][:, idx]
            K[size, size] = 0
            rhs = torch.zeros(size + 1, dtype=torch.float64)
            rhs[size] = 1
            w = torch.linalg.lstsq(K, rhs.unsqueeze(1), driver="gelsd").solution[:size, 0]
            if bool((w >= -1e-12).all()) and abs(float(w.sum()) - 1) < 1e-9:
                best = min(best, float(w @ G[idx][:, idx] @ w))
    return best


def _min_norm_on_grid(G: torch.Tensor, steps: int = 300) -> float:
    i, j = torch.meshgrid(torch.arange(steps + 1), torch.arange(steps + 1), indexing="ij")
    keep = i + j <= steps
    W = torch.stack([i[keep], j[keep], steps - i[keep] - j[keep]], dim=1).to(torch.float64) / steps
    return float(((W @ G) * W).sum(dim=1).min())


@pytest.mark.parametrize("seed", range(6))
def test_weights_reach_the_exact_min_norm_over_the_simplex(seed):
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(4, 3, generator=g, dtype=torch.float64)
    if seed % 2:
        J[2] = -J[0] + 0.1 * J[1]  # strong conflict: the optimum is inside an edge or face
    G = J @ J.T
    w = mgda_weights(G)
    assert bool((w >= 0).all()) and float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(w @ G @ w) == pytest.approx(_min_norm_by_enumeration(G), rel=1e-9, abs=1e-12)


def test_three_task_weights_beat_a_dense_grid():
    J = torch.tensor([[1.0, 0.2, 0.0], [-0.6, 1.0, 0.3], [0.1, -0.8, 1.0]], dtype=torch.float64)
    G = J @ J.T
    w = mgda_weights(G)
    assert float(w @ G @ w) <= _min_norm_on_grid(G) + 1e-12


def test_min_norm_point_has_equal_inner_products_on_its_support():
    J = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 3.0]], dtype=torch.float64)
    w = MGDA().weights(J @ J.T)
    d = w @ J
    inner = J @ d
    support = w > 1e-9
    assert torch.allclose(inner[support], (d @ d).expand(int(support.sum())), atol=1e-12)
    assert bool((inner[~support] >= d @ d - 1e-12).all())


def test_l2_normalisation_solves_on_unit_gradients_and_applies_weights_to_raw_ones():
    J = torch.tensor([[10.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    balancer = MGDA(normalization="l2")
    g, w = balancer.combine(J, torch.ones(2, dtype=torch.float64), torch.arange(2))
    assert torch.allclose(w, torch.tensor([0.5, 0.5], dtype=torch.float64))  # unit vectors e1, e2
    assert torch.allclose(g, torch.tensor([5.0, 0.5], dtype=torch.float64))


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
def test_apply_to_normalized_gives_the_min_norm_point_of_the_normalised_gradients(normalization):
    # LibMTL's behaviour: the update is Σ w_t g_t / n_t, the min-norm point itself, so it
    # conflicts with no task; the reported weights are w_t / n_t on the raw gradients.
    g = torch.Generator().manual_seed(4)
    J = torch.randn(3, 5, generator=g, dtype=torch.float64)
    J[1] = -0.6 * J[0] + 0.3 * J[1]
    losses = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    norms = J.norm(dim=1)
    scales = {"l2": norms, "loss": losses, "loss+": losses * norms}[normalization]
    N = J / scales.unsqueeze(1)
    balancer = MGDA(normalization=normalization, apply_to="normalized")
    d, w = balancer.combine(J, losses, torch.arange(3))
    assert float(d.norm() ** 2) == pytest.approx(_min_norm_by_enumeration(N @ N.T), rel=1e-9)
    assert torch.allclose(w @ J, d) and bool((J @ d >= -1e-12).all())
    assert "non_conflicting" in balancer.properties
    assert "non_conflicting" not in MGDA(normalization=normalization).properties
    raw, _ = MGDA(normalization=normalization).combine(J, losses, torch.arange(3))
    assert not torch.allclose(raw, d)
    with pytest.raises(ValueError, match="apply_to"):
        MGDA(apply_to="scaled")


@pytest.mark.parametrize("normalization", ["loss", "loss+"])
def test_loss_normalisations_solve_on_the_scaled_gradients(normalization):
    g = torch.Generator().manual_seed(3)
    J = torch.randn(3, 5, generator=g, dtype=torch.float64)
    losses = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    scales = losses * J.norm(dim=1) if normalization == "loss+" else losses
    expected = mgda_weights((J / scales.unsqueeze(1)) @ (J / scales.unsqueeze(1)).T)
    _, w = MGDA(normalization=normalization).combine(J, losses, torch.arange(3))
    assert torch.allclose(w, expected, atol=1e-12)


def test_loss_normalisation_needs_the_losses_and_rejects_negative_ones():
    J = torch.eye(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="needs the losses"):
        MGDA(normalization="loss").weights(J @ J.T)
    with pytest.raises(ValueError, match="negative loss"):
        MGDA(tasks=["a", "b"], normalization="loss").combine(J, torch.tensor([1.0, -1.0]), torch.arange(2))
    with pytest.raises(ValueError, match="normalization"):
        MGDA(normalization="L2")


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
def test_zero_and_identical_gradients_give_finite_weights(normalization):
    J = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    losses = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    g, w = MGDA(normalization=normalization).combine(J, losses, torch.arange(3))
    assert bool(torch.isfinite(w).all()) and bool(torch.isfinite(g).all())
    zero = torch.zeros(2, 3, dtype=torch.float64)
    assert bool(torch.isfinite(MGDA().aggregate(zero)).all())


def test_mgda_ub_gives_the_trunk_the_weighted_sum_of_task_gradients(small_mtl):
    model = small_mtl(num_tasks=3, dtype=torch.float64)
    losses, rep = model()
    rep_grads = torch.stack([torch.autograd.grad(loss, rep, retain_graph=True)[0].flatten() for loss in losses])
    w = mgda_weights(rep_grads @ rep_grads.T)
    trunk = list(model.trunk.parameters())
    expected = torch.autograd.grad(sum(wt * loss for wt, loss in zip(w, losses)), trunk, retain_graph=True)
    head_expected = [
        torch.autograd.grad(loss, list(head.parameters()), retain_graph=True) for loss, head in zip(losses, model.heads)
    ]

    result = get("mgda_ub").backward(losses, shared_reps=rep)

    for p, e in zip(trunk, expected):
        assert torch.allclose(p.grad, e, atol=1e-12)
    for head, grads in zip(model.heads, head_expected):  # heads get their own, unweighted gradient
        for p, e in zip(head.parameters(), grads):
            assert torch.allclose(p.grad, e, atol=1e-12)
    assert torch.allclose(torch.stack(list(result.weights.values())), w, atol=1e-12)


def test_backward_on_shared_parameters_fills_finite_gradients(small_mtl):
    model = small_mtl(num_tasks=3)
    losses, _ = model()
    MGDA(tasks=3, normalization="loss+").backward(losses, shared_params=model.trunk.parameters())
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
