"""IGBv1: log losses with weight 1 during the base epoch, then T·softmax(L / base)."""

import pytest
import torch

from mtlkit.weighting import get


def _backward(balancer, values):
    losses = [torch.tensor(v, requires_grad=True) for v in values]
    result = balancer.backward(losses)
    return torch.stack([loss.grad for loss in losses]), result


def test_base_epoch_balances_log_losses_then_weights_by_the_improvable_gap():
    igb = get("igbv1", tasks=2)
    grads, _ = _backward(igb, [2.0, 0.5])
    assert torch.allclose(grads, torch.tensor([1 / 2.0, 1 / 0.5]))  # d log L / dL
    _backward(igb, [1.0, 1.5])
    igb.epoch_end()
    base = torch.tensor([1.5, 1.0])  # the epoch's mean losses
    assert torch.allclose(igb.base_losses.float(), base)
    L = torch.tensor([0.9, 0.8])
    grads, result = _backward(igb, L.tolist())
    w = 2 * torch.softmax(L / base, dim=0)
    assert torch.allclose(grads, w / L)
    assert torch.allclose(torch.stack(list(result.weights.values())), w / L)


def test_a_task_first_seen_later_gets_its_base_then_and_losses_must_be_non_negative():
    igb = get("igbv1", tasks=2)
    igb.backward({"0": torch.tensor(1.0, requires_grad=True)})
    igb.epoch_end()
    assert torch.isnan(igb.base_losses[1]) and igb.base_losses[0] == 1.0
    grads, _ = _backward(igb, [1.0, 4.0])  # task 1 has no base yet: weights 1
    assert torch.allclose(grads, torch.tensor([1.0, 0.25]))
    igb.epoch_end()
    assert igb.base_losses[1] == 4.0
    with pytest.raises(ValueError, match=r"non-negative losses; task\(s\) \['1'\] are negative"):
        _backward(igb, [1.0, -0.5])
    # A loss of exactly 0 (a perfectly fit task; its cross entropy underflows) leaves the objective.
    grads, result = _backward(igb, [1.0, 0.0])
    assert bool(torch.isfinite(grads).all()) and grads[1] == 0 and float(result.weights["1"]) == 0
