"""MetaBalance: auxiliary gradients relaxed toward the target's (moving-average) norm."""

import pytest
import torch

from mtlkit.weighting import get

J = torch.tensor([[3.0, 0.0], [0.0, 12.0], [0.5, 0.0]], dtype=torch.float64)  # norms 3, 12, 0.5


def test_full_relaxation_gives_every_auxiliary_gradient_the_targets_norm():
    g, w = get("metabalance", tasks=3, relax=1.0).combine(J, torch.ones(3), torch.arange(3))
    assert torch.allclose((w.unsqueeze(1) * J).norm(dim=1), torch.full((3,), 3.0, dtype=torch.float64))
    assert torch.allclose(g, w @ J)


def test_partial_relaxation_and_moving_averages_follow_the_closed_form():
    balancer = get("metabalance", tasks=3, relax=0.7, beta=0.9)
    balancer.combine(J, torch.ones(3), torch.arange(3))
    _, w = balancer.combine(2 * J, torch.ones(3), torch.arange(3))
    m = (0.9 * 0.1 + 0.1 * 2) * J.norm(dim=1)  # zero-initialised averages after two steps
    expected = 0.7 * m[0] / m + 0.3
    expected[0] = 1.0
    assert torch.allclose(w, expected)


@pytest.mark.parametrize(("strategy", "changed"), [("decrease", [1]), ("increase", [2]), ("both", [1, 2])])
def test_strategies_relax_only_the_larger_or_the_smaller_gradients(strategy, changed):
    _, w = get("metabalance", tasks=3, strategy=strategy).combine(J, torch.ones(3), torch.arange(3))
    assert [i for i in range(3) if not torch.isclose(w[i], torch.tensor(1.0, dtype=torch.float64))] == changed


def test_target_is_chosen_by_name_and_a_batch_without_it_is_left_alone():
    balancer = get("metabalance", tasks=["a", "b", "c"], target="b", relax=1.0)
    _, w = balancer.combine(J, torch.ones(3), torch.arange(3))
    assert torch.allclose(w * J.norm(dim=1), torch.full((3,), 12.0, dtype=torch.float64))
    _, w = balancer.combine(J[[0, 2]], torch.ones(2), torch.tensor([0, 2]))
    assert torch.equal(w, torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="target 'z'"):
        get("metabalance", tasks=["a", "b"], target="z")


def test_a_target_without_tasks_asks_for_the_tasks():
    # The target used to be looked up in the (missing) task list first: TypeError.
    with pytest.raises(ValueError, match="tasks=<number of tasks or task names>"):
        get("metabalance", target="a")
