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


# --- per shared parameter tensor (Algorithm 1): the averages and the relaxation are per block ---


def _per_block_reference(grads, relax=0.7, beta=0.9, target=0):
    """Algorithm 1 by hand in float64: grads[step][task][block] are gradient tensors; the updates per block."""
    T, K = len(grads[0]), len(grads[0][0])
    m = [[0.0] * K for _ in range(T)]
    updates = []
    for step in grads:
        update = []
        for k in range(K):
            for t in range(T):
                m[t][k] = beta * m[t][k] + (1 - beta) * float(step[t][k].norm())
            total = step[target][k].clone()
            for t in range(T):
                if t != target:
                    total += step[t][k] * (relax * m[target][k] / m[t][k] + 1 - relax)
            update.append(total)
        updates.append(update)
    return updates


def _two_layer_model():
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    heads = [torch.nn.Linear(3, 1).double() for _ in range(3)]
    return trunk, heads


def _task_losses(trunk, heads, x, y):
    z = trunk(x)
    return [((head(z) - target) ** 2).mean() for head, target in zip(heads, y)]


def _batches(n=3):
    generator = torch.Generator().manual_seed(2)
    return [
        (torch.randn(8, 4, generator=generator, dtype=torch.float64), 3 * torch.randn(3, 8, 1, generator=generator))
        for _ in range(n)
    ]


def test_each_shared_parameter_tensor_gets_its_own_norm_averages_and_relaxation():
    trunk, heads = _two_layer_model()
    params = list(trunk.parameters())  # four tensors: two weights, two biases
    balancer = get("metabalance", tasks=3, relax=0.7, beta=0.9)
    grads, updates = [], []
    for x, y in _batches():
        losses = _task_losses(trunk, heads, x, y)
        grads.append([torch.autograd.grad(loss, params, retain_graph=True) for loss in losses])
        for p in params:
            p.grad = None
        result = balancer.backward(losses, shared_params=params)
        updates.append([p.grad.clone() for p in params])
    assert result.weights == {}  # one weight per task and tensor: no task weights to report
    assert balancer.norm_averages.shape == (3, 4)
    for got, expected in zip(updates, _per_block_reference(grads)):
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    # One norm over the whole shared gradient (the former rule) gives another update: the test has teeth.
    whole = get("metabalance", tasks=3).combine(
        torch.cat([torch.cat([g.reshape(-1) for g in t]) for t in grads[0]]).view(3, -1), torch.ones(3), torch.arange(3)
    )[0]
    first = torch.cat([g.reshape(-1) for g in _per_block_reference(grads[:1])[0]])
    assert not torch.allclose(whole, first, rtol=1e-3)


def test_combine_with_column_blocks_relaxes_each_block_on_its_own():
    balancer = get("metabalance", tasks=2, relax=1.0, beta=0.0)  # β = 0: the averages are this step's norms
    balancer.column_blocks = [(0, 2), (1, 1)]  # (position among the shared tensors, entries)
    J = torch.tensor([[3.0, 4.0, 1.0], [0.6, 0.8, 10.0]], dtype=torch.float64)  # block norms (5, 1) and (1, 10)
    g, w = balancer.combine(J, torch.ones(2), torch.arange(2))
    expected = torch.tensor([3.0 + 3.0, 4.0 + 4.0, 1.0 + 1.0], dtype=torch.float64)  # aux scaled ×5, then ×0.1
    assert w is None and torch.allclose(g, expected)


def test_per_block_state_round_trips_through_the_state_dict():
    trunk, heads = _two_layer_model()
    params = list(trunk.parameters())
    balancer = get("metabalance", tasks=3)
    batches = _batches(3)
    for x, y in batches[:2]:
        balancer.backward(_task_losses(trunk, heads, x, y), shared_params=params)
    restored = get("metabalance", tasks=3)
    restored.load_state_dict(balancer.state_dict())
    steps = []
    for b in (balancer, restored):
        for p in params:
            p.grad = None
        b.backward(_task_losses(trunk, heads, *batches[2]), shared_params=params)
        steps.append(torch.cat([p.grad.reshape(-1) for p in params]))
    assert torch.equal(steps[0], steps[1])


def test_a_step_reaching_some_shared_tensors_moves_only_their_averages():
    balancer = get("metabalance", tasks=2, relax=1.0, beta=0.5)
    balancer.column_blocks = [(0, 1), (1, 1), (2, 1)]
    balancer.combine(
        torch.tensor([[1.0, 2.0, 4.0], [1.0, 1.0, 1.0]], dtype=torch.float64), torch.ones(2), torch.arange(2)
    )
    balancer.column_blocks = [(2, 1), (3, 2)]  # tensor 2 again, a new tensor 3; 0 and 1 not reached
    J = torch.tensor([[8.0, 3.0, 4.0], [2.0, 0.0, 1.0]], dtype=torch.float64)
    g, _ = balancer.combine(J, torch.ones(2), torch.arange(2))
    expected = torch.tensor([[0.5, 1.0, 0.5 * 2 + 0.5 * 8, 0.5 * 5], [0.5, 0.5, 0.5 * 0.5 + 0.5 * 2, 0.5 * 1]])
    assert torch.allclose(balancer.norm_averages.double(), expected.double())
    # relax = 1: the auxiliary block scaled to the target's average norm, m_target / m_aux
    m = expected[:, 2:]
    assert torch.allclose(
        g, torch.tensor([8.0 + 2.0 * m[0, 0] / m[1, 0], 3.0, 4.0 + 1.0 * m[0, 1] / m[1, 1]], dtype=torch.float64)
    )
