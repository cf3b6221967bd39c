"""MoDo and SDMGrad: the weight updates from two extra batches, against closed forms and scipy."""

import numpy as np
import pytest
import torch

from mtlkit.weighting import get
from mtlkit.weighting.context import StepContext
from mtlkit.weighting.methods.sdmgrad import sdmgrad_inner

scipy_optimize = pytest.importorskip("scipy.optimize")


class _LinearTasks:
    """Task t's loss on batch b is ⟨a_{b,t}, θ⟩: its gradient is a_{b,t}, known in closed form."""

    def __init__(self, rows_per_batch):
        self.theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        self.rows = [torch.tensor(rows, dtype=torch.float64) for rows in rows_per_batch]
        self.drawn = 0

    def losses(self, batch):
        return {name: self.rows[batch][t] @ self.theta for t, name in enumerate(["a", "b"])}

    def context(self):
        def draw():
            self.drawn += 1
            return self.drawn  # batches 1, 2, ... are the extra ones; 0 is the step's own

        return StepContext(0, self.losses, draw, draw, [self.theta], [self.theta], lr=0.1)


def test_modo_steps_lambda_with_the_cross_batch_product_and_applies_it_to_this_batch(simplex_projection):
    rows = [[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], [[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]], [[2.0, 0.0, 1.0], [1.0, 0.0, 0.0]]]
    tasks = _LinearTasks(rows)
    modo = get("modo", tasks=["a", "b"], gamma=0.05, rho=0.1)
    modo.context = tasks.context()
    result = modo.backward(tasks.losses(0), shared_params=[tasks.theta])
    J0, J1, J2 = (torch.tensor(r, dtype=torch.float64) for r in rows)
    lam0 = np.full(2, 0.5)
    step = lam0 - 0.05 * ((J1 @ J2.T).numpy() @ lam0 + 0.1 * lam0)
    expected = simplex_projection(step)
    assert tasks.drawn == 2
    assert np.allclose(modo.lambdas.numpy(), expected)
    assert torch.allclose(tasks.theta.grad, torch.tensor(expected) @ J0)
    assert np.allclose([float(result.weights[n]) for n in "ab"], expected)


def test_modo_without_a_context_says_how_to_provide_one():
    tasks = _LinearTasks([[[1.0, 0, 0], [0, 1.0, 0]]])
    with pytest.raises(ValueError, match="extra_train_batch.*Trainer.*StepContext"):
        get("modo", tasks=["a", "b"]).backward(tasks.losses(0), shared_params=[tasks.theta])


@pytest.mark.parametrize("lamda", [0.0, 0.3, 1.0])
def test_sdmgrad_inner_loop_converges_to_the_regularised_min_norm_weights(lamda):
    J = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    GG = J @ J.T / float(J.norm(dim=1).mean() ** 2)
    w = sdmgrad_inner(GG, torch.full((3,), 1 / 3, dtype=torch.float64), lamda, steps=2000, lr=0.05, momentum=0.5)
    g0 = J.mean(dim=0)
    scale = float(J.norm(dim=1).mean() ** 2)

    def objective(x):  # ½‖Jᵀx + λ g₀‖², in the normalised scale
        d = J.T.numpy() @ x + lamda * g0.numpy()
        return 0.5 * d @ d / scale

    reference = scipy_optimize.minimize(
        objective,
        np.full(3, 1 / 3),
        bounds=[(0, None)] * 3,
        constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    ).x
    assert np.allclose(w.numpy(), reference, atol=1e-5)


def test_sdmgrad_applies_w_plus_lambda_over_t_to_this_batch():
    rows = [[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], [[1.0, 0.5, 0.0], [0.2, 1.0, 0.0]], [[1.0, 0.4, 0.0], [0.1, 1.2, 0.0]]]
    tasks = _LinearTasks(rows)
    sdm = get("sdmgrad", tasks=["a", "b"], lamda=0.3)
    sdm.context = tasks.context()
    result = sdm.backward(tasks.losses(0), shared_params=[tasks.theta])
    J0, J1, J2 = (torch.tensor(r, dtype=torch.float64) for r in rows)
    GG = J1 @ J2.T
    GG = GG / GG.diagonal().sqrt().mean() ** 2
    w = sdmgrad_inner(GG, torch.full((2,), 0.5, dtype=torch.float64), 0.3, 20, 5.0, 0.5)
    weights = (w + 0.15) / 1.3
    assert tasks.drawn == 2 and torch.allclose(sdm.simplex_weights.double(), w, atol=1e-6)
    assert torch.allclose(tasks.theta.grad, weights @ J0, atol=1e-6)
    assert torch.isclose(sum(result.weights.values()), torch.tensor(1.0, dtype=torch.float64))
