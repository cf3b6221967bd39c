"""FairGrad against a float64 scipy solve of its fixed-point equation (G w)_t = w_t^{-1/α}."""

import numpy as np
import pytest
import torch

from mtlkit.weighting import get
from mtlkit.weighting.methods.fairgrad import fairgrad_weights

scipy_optimize = pytest.importorskip("scipy.optimize")


def _gramian(T=4, P=7, seed=0):
    J = torch.randn(T, P, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return J @ J.T


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weights_solve_the_fixed_point_equation_as_scipy_does(alpha, seed):
    G = _gramian(seed=seed)
    w = fairgrad_weights(G, alpha)
    A = G.numpy()
    reference = scipy_optimize.least_squares(
        lambda x: A @ x - x ** (-1 / alpha),
        np.full(4, 0.25),
        bounds=(1e-12, np.inf),
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
    ).x
    assert np.allclose(w.numpy(), reference, rtol=1e-5)
    residual = G @ w - w ** (-1 / alpha)
    assert float(residual.abs().max()) < 1e-6 * float((w ** (-1 / alpha)).max())


def test_orthogonal_gradients_have_the_closed_form_weights():
    G = torch.diag(torch.tensor([0.5, 2.0, 9.0], dtype=torch.float64))
    for alpha in (0.5, 1.0, 3.0):
        assert torch.allclose(fairgrad_weights(G, alpha), G.diagonal() ** (-alpha / (alpha + 1)), rtol=1e-6)


def test_alpha_one_is_the_nash_bargaining_solution():
    from mtlkit.weighting.methods.nash_mtl import nash_weights  # (G w)_t = 1 / w_t as well

    G = _gramian(T=3, P=5, seed=3)
    assert torch.allclose(fairgrad_weights(G, 1.0), nash_weights(G), rtol=1e-5)


def test_scaling_the_gramian_scales_the_weights_by_c_to_the_minus_alpha_over_alpha_plus_one():
    G, alpha, c = _gramian(seed=4), 2.0, 7.0
    assert torch.allclose(
        fairgrad_weights(c * G, alpha), c ** (-alpha / (alpha + 1)) * fairgrad_weights(G, alpha), rtol=1e-6
    )


def test_a_task_with_zero_gradient_gets_zero_weight_and_the_others_solve_their_own_equation():
    J = torch.randn(3, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    J[1] = 0
    w = fairgrad_weights(J @ J.T, 1.0)
    assert w[1] == 0
    kept = [0, 2]
    assert torch.allclose(w[kept], fairgrad_weights((J @ J.T)[kept][:, kept], 1.0))


def test_balancer_applies_the_weights_and_rejects_non_positive_alpha():
    with pytest.raises(ValueError, match="alpha must be > 0"):
        get("fairgrad", tasks=2, alpha=0.0)
    J = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    g, w = get("fairgrad", tasks=2).combine(J, torch.ones(2), torch.arange(2))
    assert torch.allclose(g, w @ J) and torch.allclose(w, torch.tensor([1.0, 0.5], dtype=torch.float64))


def test_permuting_the_tasks_permutes_the_weights():
    G, perm = _gramian(seed=6), torch.tensor([2, 0, 3, 1])
    assert torch.allclose(fairgrad_weights(G[perm][:, perm], 2.0), fairgrad_weights(G, 2.0)[perm], rtol=1e-8)
