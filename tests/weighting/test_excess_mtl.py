"""ExcessMTL: AdaGrad-scaled excess-risk estimates and exponentiated weights, replayed in numpy."""

import numpy as np
import torch

from mtlkit.weighting import get


def test_weights_follow_the_excess_risk_recursion():
    generator = torch.Generator().manual_seed(0)
    Js = [torch.randn(3, 4, generator=generator, dtype=torch.float64) for _ in range(4)]
    balancer = get("excess_mtl", tasks=3, step_size=0.5)
    squares, weights, initial = np.zeros((3, 4)), np.ones(3), None
    for J in Js:
        g, w = balancer.combine(J, torch.ones(3, dtype=torch.float64), torch.arange(3))
        Jn = J.numpy()
        squares += Jn**2
        excess = (Jn**2 / np.sqrt(squares + 1e-7)).sum(axis=1)
        if initial is None:
            initial = excess  # the first step only records e(0)
        else:
            weights = weights * np.exp(0.5 * excess / initial)
            weights = weights / weights.sum() * 3
        assert np.allclose(w.numpy(), weights) and np.allclose(g.numpy(), weights @ Jn)


def test_the_task_whose_excess_risk_stays_high_gains_weight():
    balancer = get("excess_mtl", tasks=2, step_size=0.1)
    balancer.combine(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.ones(2), torch.arange(2))
    _, w = balancer.combine(torch.tensor([[1.0, 0.0], [0.0, 0.1]]), torch.ones(2), torch.arange(2))
    assert w[0] > 1 > w[1] and torch.isclose(w.sum(), torch.tensor(2.0))
