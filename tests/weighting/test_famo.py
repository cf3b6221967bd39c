import pytest
import torch

from mtlkit.weighting import get


def _losses(values):
    return [torch.tensor(v, requires_grad=True) for v in values]


def test_effective_weights_are_c_z_over_d_and_sum_to_one():
    famo = get("famo", tasks=3)
    famo.logits.copy_(torch.tensor([0.3, -0.1, 0.5]))
    losses = _losses([0.5, 2.0, 4.0])
    result = famo.backward(losses)
    z = torch.softmax(torch.tensor([0.3, -0.1, 0.5]), 0)
    D = torch.tensor([0.5, 2.0, 4.0]) + 1e-8
    expected = (z / D) / (z / D).sum()
    weights = torch.stack(list(result.weights.values()))
    assert torch.allclose(weights, expected) and torch.allclose(weights.sum(), torch.tensor(1.0))
    assert torch.allclose(torch.stack([l.grad for l in losses]), expected)


def _reference_logits(before_after_pairs, lr=0.025, weight_decay=1e-3):
    """FAMO's logit updates with torch.optim.Adam and autograd's softmax Jacobian."""
    xi = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.Adam([xi], lr=lr, weight_decay=weight_decay)
    for before, after in before_after_pairs:
        delta = torch.log(torch.tensor(before) + 1e-8) - torch.log(torch.tensor(after) + 1e-8)
        (grad,) = torch.autograd.grad(torch.softmax(xi, 0), xi, grad_outputs=delta)
        optimizer.zero_grad()
        xi.grad = grad
        optimizer.step()
    return xi.detach()


def test_update_learns_the_logits_as_adam_on_the_log_loss_decrease():
    famo = get("famo", tasks=2)
    pairs = [([1.0, 1.0], [0.5, 0.9]), ([0.8, 0.9], [0.7, 0.5]), ([1.2, 0.6], [0.6, 0.59])]
    for before, after in pairs:
        famo.backward(_losses(before))
        famo.update(torch.tensor(after))
    assert torch.allclose(famo.logits, _reference_logits(pairs), atol=1e-6)


def test_without_update_the_next_steps_losses_are_the_after_values():
    explicit, implicit = get("famo", tasks=2), get("famo", tasks=2)
    explicit.backward(_losses([1.0, 1.0]))
    explicit.update(torch.tensor([0.5, 0.9]))
    implicit.backward(_losses([1.0, 1.0]))
    implicit.backward(_losses([0.5, 0.9]))
    assert torch.allclose(explicit.logits, implicit.logits)
    assert int(implicit.adam_step) == 1


def test_update_consumes_the_pending_losses_so_the_next_step_does_not_learn_twice():
    famo = get("famo", tasks=2)
    famo.backward(_losses([1.0, 1.0]))
    famo.update(torch.tensor([0.5, 0.9]))
    famo.backward(_losses([0.4, 0.8]))
    assert int(famo.adam_step) == 1


def test_state_dict_round_trip_reproduces_the_next_weights():
    famo = get("famo", tasks=2)
    for values in ([1.0, 1.0], [0.5, 0.9], [0.4, 0.8]):
        famo.backward(_losses(values))
    restored = get("famo", tasks=2)
    restored.load_state_dict(famo.state_dict())
    a, b = famo.backward(_losses([0.3, 0.7])), restored.backward(_losses([0.3, 0.7]))
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)


def test_loss_at_or_below_its_bound_is_rejected_naming_the_task():
    with pytest.raises(ValueError, match=r"\['1'\]"):
        get("famo", tasks=2, min_losses=[0.0, 1.0]).backward(_losses([0.5, 0.9]))
