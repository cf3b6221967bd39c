"""GO4Align: exact 1-D k-means against brute force, and the indicator recursion."""

import itertools

import numpy as np
import pytest
import torch

from mtlkit.weighting import get
from mtlkit.weighting.methods.go4align import kmeans_1d


def _brute_force_kmeans(x, k):
    """The least-squares cost of the best assignment of x to at most k clusters, over all labelings."""
    best = np.inf
    for labels in itertools.product(range(k), repeat=len(x)):
        labels = np.array(labels)
        cost = sum(((x[labels == c] - x[labels == c].mean()) ** 2).sum() for c in set(labels.tolist()))
        best = min(best, cost)
    return best


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_kmeans_1d_reaches_the_brute_force_optimum(k, seed):
    x = torch.rand(6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    means = kmeans_1d(x, k)
    cost = float(((x - means) ** 2).sum())
    assert len(set(means.tolist())) <= k
    assert cost == pytest.approx(_brute_force_kmeans(x.numpy(), k), abs=1e-12)
    for value in set(means.tolist()):  # every value is its own cluster's mean
        members = x[means == value]
        assert members.mean().item() == pytest.approx(value)


def test_weights_follow_the_risk_guided_indicators_and_their_groups():
    balancer = get("go4align", tasks=3, num_groups=2, step_size=0.5)
    p = np.full(3, 1 / 3)
    for values in ([1.0, 2.0, 4.0], [0.5, 1.5, 3.0]):
        L = torch.tensor(values, dtype=torch.float64, requires_grad=True)
        objective, w = balancer.combine(L, torch.arange(3))
        p = p * np.exp(-0.5 * np.array(values))
        p = p / p.sum()
        gamma = np.sum(values) / np.array(values) * p
        assert len(set(np.round(w.numpy(), 12).tolist())) == 2
        assert np.isclose(float(((gamma - w.numpy()) ** 2).sum()), _brute_force_kmeans(gamma, 2))
        assert torch.isclose(objective, (w * L).sum())


def test_one_group_gives_every_task_the_mean_indicator_and_losses_must_be_non_negative():
    balancer = get("go4align", tasks=2, num_groups=1)
    _, w = balancer.combine(torch.tensor([1.0, 3.0]), torch.arange(2))
    assert torch.allclose(w, torch.full((2,), float(w.mean())))
    with pytest.raises(ValueError, match=r"non-negative losses; task\(s\) \['1'\] are negative"):
        balancer.combine(torch.tensor([1.0, -0.5]), torch.arange(2))


def test_a_loss_of_exactly_zero_gets_weight_zero_and_the_others_stay_finite():
    # A perfectly fit task's cross entropy underflows to 0 in training (seen on penguins).
    balancer = get("go4align", tasks=3, num_groups=2)
    _, w = balancer.combine(torch.tensor([1.0, 0.0, 3.0]), torch.arange(3))
    assert w[1] == 0 and bool(torch.isfinite(w).all()) and bool((w[[0, 2]] > 0).all())
    _, w = balancer.combine(torch.zeros(3), torch.arange(3))
    assert torch.equal(w, torch.zeros(3))
