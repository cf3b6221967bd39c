"""Mean, Sum, Constant and Random: fixed or random loss weights, and the COSMOS and PBI scalarizations."""

from __future__ import annotations

import math

import pytest
import torch

from mtlkit.weighting import get


def _losses(values):
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def test_mean_and_sum_weight_every_active_task_alike():
    L = _losses([1.0, 2.0, 6.0])
    objective, w = get("mean", tasks=3).combine(L, torch.arange(3))
    assert float(objective.detach()) == 3.0 and torch.allclose(w, torch.full((3,), 1 / 3, dtype=torch.float64))
    objective, w = get("mean", tasks=3).combine(L[[0, 2]], torch.tensor([0, 2]))
    assert float(objective.detach()) == 3.5 and torch.allclose(w, torch.full((2,), 0.5, dtype=torch.float64))
    assert type(get("sum")) is type(get("ew"))


def test_constant_weights_by_position_or_by_name_and_checks_them():
    L = _losses([1.0, 2.0, 3.0])
    objective, w = get("constant", tasks=["a", "b", "c"], weights=[0.5, 0.0, 2.0]).combine(L, torch.arange(3))
    assert float(objective.detach()) == 6.5 and w.tolist() == [0.5, 0.0, 2.0]
    by_name = get("constant", tasks=["a", "b", "c"], weights={"c": 3.0})
    assert by_name.combine(L[[1, 2]], torch.tensor([1, 2]))[1].tolist() == [1.0, 3.0]
    assert get("constant", tasks=3).combine(L, torch.arange(3))[1].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="unknown task"):
        get("constant", tasks=["a", "b"], weights={"z": 1.0})
    with pytest.raises(ValueError, match="2 weights for the 3 tasks"):
        get("constant", tasks=3, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match=">= 0"):
        get("constant", tasks=2, weights=[1.0, -2.0])


def test_random_with_a_seed_draws_softmax_normal_weights_reproducibly_and_resumes():
    L = _losses([1.0, 2.0, 3.0])
    a, b = get("random", tasks=3, seed=7), get("random", tasks=3, seed=7)
    expected = torch.softmax(torch.randn(3, generator=torch.Generator().manual_seed(7), dtype=torch.float64), dim=0)
    assert torch.allclose(a.combine(L, torch.arange(3))[1], expected)
    b.load_state_dict(a.state_dict())  # resumes after one draw
    assert torch.equal(a.combine(L, torch.arange(3))[1], b.combine(L, torch.arange(3))[1])
    with pytest.raises(ValueError, match="seed"):
        get("random", tasks=3).load_state_dict(a.state_dict())


def test_cosmos_is_the_weighted_sum_minus_mu_times_the_cosine_with_the_preference():
    L = _losses([3.0, 4.0])
    objective, w = get("cosmos", tasks=2, mu=2.0).combine(L, torch.arange(2))
    # r = (1/2, 1/2): rᵀL = 3.5, cos = 3.5 / (‖r‖ · 5) = 7/(5√2)
    assert math.isclose(float(objective.detach()), 3.5 - 2.0 * 7 / (5 * math.sqrt(2)), rel_tol=1e-12)
    assert torch.allclose(w, torch.autograd.grad(objective, L)[0])
    # On the preference ray the cosine is 1 and stationary: the weights are r.
    on_ray = get("cosmos", tasks=2, preference=[1.0, 3.0], mu=5.0).combine(_losses([2.0, 6.0]), torch.arange(2))
    assert torch.allclose(on_ray[1], torch.tensor([1.0, 3.0], dtype=torch.float64))


def test_pbi_is_the_distance_along_the_ray_plus_theta_times_the_distance_from_it():
    L = _losses([3.0, 4.0])
    objective, w = get("pbi", tasks=2).combine(L, torch.arange(2))
    # r̂ = (1, 1)/√2: d₁ = 7/√2, residual (−0.5, 0.5), d₂ = 1/√2; θ = 5.
    assert math.isclose(float(objective.detach()), 7 / math.sqrt(2) + 5 / math.sqrt(2), rel_tol=1e-12)
    assert torch.allclose(w, torch.tensor([1 - 5.0, 1 + 5.0], dtype=torch.float64) / math.sqrt(2))
    assert torch.allclose(w, torch.autograd.grad(objective, L)[0])
    on_ray = get("pbi", tasks=2).combine(_losses([2.0, 2.0]), torch.arange(2))[1]
    assert torch.all(torch.isfinite(on_ray))


def test_scalarizations_check_their_options():
    with pytest.raises(ValueError, match="preference"):
        get("cosmos", tasks=2, preference=[0.0, 0.0])
    with pytest.raises(ValueError, match="3 preference values for 2 tasks"):
        get("pbi", tasks=2, preference=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="theta"):
        get("pbi", tasks=2, theta=-1.0)
