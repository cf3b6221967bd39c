"""Every registered balancer, by name: trains, survives a zero-gradient task, checkpoints.

Balancers that declare `needs` get a StepContext over the test model; those whose state
cannot act at a representation (`supports_shared_reps = False`) must refuse one with an
error that says what to do instead.
"""

import pytest
import torch

from mtlkit.weighting import available, get
from mtlkit.weighting.context import needs_of

TASKS = ["a", "b", "c"]
METHODS = available(aliases=False)
MODES = ["params", "reps"]


def _supports(name, mode):
    return mode == "params" or getattr(type(get(name, tasks=TASKS)), "supports_shared_reps", True)


def _step(model, balancer, mode, zero_task=False):
    if needs_of(balancer):
        balancer.context = model.context(TASKS)
    losses, rep = model()
    if zero_task:  # task b's loss is constant in every parameter: a zero gradient row
        losses[1] = (model.heads[1](rep) * 0).mean() + 1.0
    kwargs = {"shared_params": model.trunk.parameters()} if mode == "params" else {"shared_reps": rep}
    return balancer.backward(dict(zip(TASKS, losses)), **kwargs)


def _train(model_cls, name, mode, steps=4, zero_task=False):
    model = model_cls(num_tasks=3)
    balancer = get(name, tasks=TASKS)
    optimizer = torch.optim.SGD([*model.parameters(), *balancer.parameters()], lr=0.05)
    for step in range(steps):
        optimizer.zero_grad()
        result = _step(model, balancer, mode, zero_task)
        optimizer.step()
        if step % 2 == 1:
            balancer.epoch_end()
    return model, balancer, result


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", METHODS)
def test_method_trains_a_few_steps_without_nan(small_mtl, name, mode):
    if not _supports(name, mode):
        with pytest.raises(ValueError, match="cannot act at a shared representation.*rep_grad=False"):
            _train(small_mtl, name, mode)
        return
    model, balancer, result = _train(small_mtl, name, mode)
    for p in [*model.parameters(), *balancer.parameters()]:
        assert torch.isfinite(p).all()
    assert torch.isfinite(result.loss) and set(result.scaled_losses) == set(TASKS)
    assert all(p.grad is not None for p in model.trunk.parameters())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", METHODS)
def test_method_handles_a_task_with_zero_gradient(small_mtl, name, mode):
    if not _supports(name, mode):
        pytest.skip("refuses shared_reps (tested above)")
    model, balancer, result = _train(small_mtl, name, mode, steps=3, zero_task=True)
    for p in [*model.parameters(), *balancer.parameters()]:
        assert torch.isfinite(p).all()
    assert all(torch.isfinite(w).all() for w in result.weights.values())


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trip_reproduces_the_next_step(small_mtl, name):
    mode = "reps" if _supports(name, "reps") else "params"
    model, balancer, _ = _train(small_mtl, name, mode, steps=3)
    restored = get(name, tasks=TASKS)
    restored.load_state_dict(balancer.state_dict())
    grads = []
    for b in (balancer, restored):
        for p in model.parameters():
            p.grad = None
        torch.manual_seed(1)  # methods that draw random numbers draw the same ones
        _step(model, b, mode)
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
