"""The loss balancers' fast path: EW's backward of Σ L_t and results built on first read."""

import pytest
import torch
from torch import nn

from mtlkit.weighting import LossBalancer, get
from mtlkit.weighting.methods.ew import EW


class _EWThroughCombine(EW):
    """EW through the general `LossBalancer` path (`combine`), the reference for the fast one."""

    unit_weights = False


class _Doubled(EW):
    """A subclass with weights of its own: `combine` is used, without a word about `unit_weights`."""

    def combine(self, losses, index):
        return 2.0 * losses.sum(), 2.0 * torch.ones_like(losses)


def _losses(seed: int, active: list[bool]) -> tuple[list[torch.Tensor], list[nn.Parameter]]:
    torch.manual_seed(seed)
    trunk, heads = nn.Linear(3, 4), [nn.Linear(4, 1) for _ in active]
    h = torch.tanh(trunk(torch.randn(8, 3)))
    losses = [head(h).pow(2).mean() for head in heads]
    losses = [loss if on else loss.detach() for loss, on in zip(losses, active)]
    return losses, [*trunk.parameters(), *(p for head in heads for p in head.parameters())]


@pytest.mark.parametrize("active", [[True, True, True], [True, False, False], [False, True, True]])
@pytest.mark.parametrize("as_dict", [False, True])
def test_ew_fast_path_matches_the_general_path_bit_for_bit(active, as_dict):
    results, grads = [], []
    for balancer in (get("ew"), _EWThroughCombine()):
        losses, params = _losses(0, active)
        arg = dict(zip("abc", losses)) if as_dict else losses
        balancer.task_names = list("abc")
        result = balancer.backward(arg)
        results.append(result)
        grads.append([p.grad for p in params])
    fast, general = results
    assert torch.equal(fast.loss, general.loss)
    assert fast.scaled_losses.keys() == general.scaled_losses.keys()
    assert all(torch.equal(fast.scaled_losses[k], general.scaled_losses[k]) for k in fast.scaled_losses)
    assert all(torch.equal(fast.weights[k], general.weights[k]) for k in fast.weights)
    assert fast.weights.keys() == general.weights.keys() and len(fast.weights) == sum(active)
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(*grads))
    if not as_dict:  # the unpacked pair (IMTL's return) lists every loss, a left-out one unscaled
        assert all(torch.equal(a, b) for a, b in zip(fast.positional, general.positional))


def test_ew_gradient_is_that_of_the_summed_losses():
    losses, params = _losses(1, [True, True, True])
    reference = torch.autograd.grad(losses[0] + losses[1] + losses[2], params, retain_graph=True)
    result = get("ew").backward(losses)
    assert all(torch.allclose(p.grad, g, rtol=0, atol=1e-7) for p, g in zip(params, reference))
    assert result.loss.item() == pytest.approx(sum(loss.item() for loss in losses), rel=1e-6)
    assert all(w.item() == 1.0 for w in result.weights.values())


class _InPlaceWeights(LossBalancer):
    """Returns its weight buffer, which it changes in place after the step (as a method's state may)."""

    def __init__(self) -> None:
        super().__init__(2)
        self.register_buffer("w", torch.tensor([2.0, 3.0]))

    def combine(self, losses, index):
        w = self.w[index]
        return (w * losses).sum(), self.w if len(index) == 2 else w


def test_a_result_keeps_the_weights_of_its_step():
    balancer = _InPlaceWeights()
    losses, _ = _losses(2, [True, True])
    result = balancer.backward(losses)
    balancer.w.mul_(10.0)  # the next step's update, before anyone reads the result
    assert [w.item() for w in result.weights.values()] == [2.0, 3.0]
    expected = [2.0 * losses[0].item(), 3.0 * losses[1].item()]
    assert [s.item() for s in result.scaled_losses.values()] == pytest.approx(expected, rel=1e-6)


def test_task_index_follows_the_active_tasks_step_by_step():
    balancer = get("uw", tasks=["a", "b", "c"])
    for active in (["a", "c"], ["b"], ["a", "c"], ["a", "b", "c"]):
        balancer.zero_grad()
        losses, _ = _losses(3, [True, True, True])
        balancer.backward({name: loss for name, loss in zip("abc", losses) if name in active})
        touched = [name for name, g in zip("abc", balancer.log_var.grad) if g != 0]
        assert touched == active


def test_a_subclass_that_overrides_combine_leaves_the_fast_path():
    losses, params = _losses(4, [True, True, True])
    reference = torch.autograd.grad(2.0 * (losses[0] + losses[1] + losses[2]), params, retain_graph=True)
    result = _Doubled().backward(losses)
    assert all(torch.allclose(p.grad, g, rtol=0, atol=1e-7) for p, g in zip(params, reference))
    assert [w.item() for w in result.weights.values()] == [2.0, 2.0, 2.0]
