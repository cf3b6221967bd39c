"""MoCo and ExcessMTL at a shared representation, AdaTask's refusal, and their every/ema wrappers.

Reference for the representation mode: a bias b added to the representation (z = f(x) + b,
b shared) has as its gradient exactly each task's gradient at z summed over the batch, the
rows these methods keep their state in at z. So, step after step on batches of changing
size, the weights a method takes at z (`shared_reps`) equal those it takes on b alone
(`shared_params=[b]`, whose recursion tests/weighting/test_moco.py and test_excess_mtl.py
replay in numpy); and the trunk receives Σ_t w_t ∇L_t, computed task by task in float64.
"""

import pytest
import torch
from torch import nn

from mtlkit.errors import ConfigError
from mtlkit.weighting import get

TASKS = ["a", "b", "c"]
OPTIONS = {"moco": {"gamma": 20.0}, "excess_mtl": {"step_size": 0.5}}  # weights that move visibly in 5 steps


class BiasedRep(nn.Module):
    """z = f(x) + b with a shared bias b in front of three linear heads (float64)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6)).double()
        self.bias = nn.Parameter(0.1 * torch.randn(6, dtype=torch.float64))
        self.heads = nn.ModuleList(nn.Linear(6, 1).double() for _ in TASKS)

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        z = self.trunk(x) + self.bias
        return {t: ((head(z) - target) ** 2).mean() for t, head, target in zip(TASKS, self.heads, y)}, z


def _batches(steps: int = 5):
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        n = 7 if step == 3 else 12  # a shorter batch: the per-sample rows change width, the batch rows do not
        x = torch.randn(n, 5, generator=generator, dtype=torch.float64)
        y = torch.randn(len(TASKS), n, 1, generator=generator, dtype=torch.float64)
        yield x, y


def _zero(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def _weights(result) -> torch.Tensor:
    return torch.stack([result.weights[t] for t in TASKS])


def _weighted_trunk_grad(model: BiasedRep, losses: dict[str, torch.Tensor], w: torch.Tensor) -> list[torch.Tensor]:
    """Σ_t w_t ∇_trunk L_t, one autograd.grad per task."""
    params = [*model.trunk.parameters(), model.bias]
    per_task = [torch.autograd.grad(losses[t], params, retain_graph=True) for t in TASKS]
    return [sum(float(w[i]) * grads[j] for i, grads in enumerate(per_task)) for j in range(len(params))]


@pytest.mark.parametrize("name", ["moco", "excess_mtl"])
def test_weights_at_the_representation_equal_those_on_a_bias_in_front_of_the_heads(name):
    model = BiasedRep()
    at_rep, on_bias = get(name, tasks=TASKS, **OPTIONS[name]), get(name, tasks=TASKS, **OPTIONS[name])
    for x, y in _batches():
        _zero(model)
        losses, _ = model.losses(x, y)
        reference = on_bias.backward(losses, shared_params=[model.bias])
        losses, z = model.losses(x, y)
        expected = _weighted_trunk_grad(model, losses, _weights(reference))
        _zero(model)
        result = at_rep.backward(losses, shared_reps=z)
        torch.testing.assert_close(_weights(result), _weights(reference), rtol=1e-12, atol=1e-12)
        got = [p.grad for p in [*model.trunk.parameters(), model.bias]]
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    assert float(_weights(result).std()) > 1e-3  # the weights moved away from uniform: the check has teeth


def _shared(model: BiasedRep, mode: str, z: torch.Tensor) -> dict:
    return {"shared_reps": z} if mode == "reps" else {"shared_params": [*model.trunk.parameters(), model.bias]}


@pytest.mark.parametrize("mode", ["reps", "params"])
@pytest.mark.parametrize("name", ["moco", "excess_mtl"])
def test_every_2_reuses_the_weights_without_moving_the_method(name, mode):
    model = BiasedRep()
    balancer, alone = get(name, tasks=TASKS, every=2, **OPTIONS[name]), get(name, tasks=TASKS, **OPTIONS[name])
    batches = list(_batches(2))
    losses, z = model.losses(*batches[0])
    first = balancer.backward(losses, **_shared(model, mode, z))
    losses, z = model.losses(*batches[0])
    torch.testing.assert_close(_weights(first), _weights(alone.backward(losses, **_shared(model, mode, z))))
    state = {k: v.clone() for k, v in balancer.method.state_dict().items()}
    losses, z = model.losses(*batches[1])
    expected = _weighted_trunk_grad(model, losses, _weights(first))
    _zero(model)
    second = balancer.backward(losses, **_shared(model, mode, z))
    assert torch.equal(_weights(second), _weights(first))
    for g, e in zip([p.grad for p in [*model.trunk.parameters(), model.bias]], expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    assert all(torch.equal(v, balancer.method.state_dict()[k]) for k, v in state.items())  # no step on reuse


@pytest.mark.parametrize("name", ["moco", "excess_mtl"])
def test_per_sample_rows_are_refused_with_the_reason(name):
    with pytest.raises(ConfigError, match="rep_reduce='batch'"):
        get(name, tasks=TASKS, rep_reduce="sample")
    balancer = get(name, tasks=TASKS)
    balancer.rep_reduce = "sample"
    model = BiasedRep()
    losses, z = model.losses(*next(_batches()))
    with pytest.raises(ValueError, match=f"{type(balancer).__name__} keeps state in the coordinates.*'batch'"):
        balancer.backward(losses, shared_reps=z)


@pytest.mark.parametrize("spec", ["adatask", "adatask@every=2", "adatask@ema=0.5"])
def test_adatask_refuses_a_representation_with_one_error_wrapped_or_not(spec):
    model = BiasedRep()
    losses, z = model.losses(*next(_batches()))
    with pytest.raises(ValueError) as raised:
        get(spec, tasks=TASKS).backward(losses, shared_reps=z)
    message = str(raised.value)
    assert message.startswith("AdaTask cannot act at a shared representation")
    assert "shared_params" in message and "rep_grad=False" in message
    assert all(p.grad is None for p in model.parameters())  # refused before any backward


def test_adatask_under_a_wrapper_says_it_reports_no_weights():
    model = BiasedRep()
    losses, _ = model.losses(*next(_batches()))
    with pytest.raises(ConfigError, match="AdaTask reported no task weights"):
        get("adatask@every=2", tasks=TASKS).backward(losses, shared_params=model.trunk.parameters())


def test_a_wrapped_non_gramian_method_sees_the_jacobian_not_a_gramian_root():
    """On shared parameters the wrapper used to hand every method a T×T root of G: MoCo tracked it."""
    model = BiasedRep()
    wrapped, alone = get("moco", tasks=TASKS, ema=0.5), get("moco", tasks=TASKS)
    for x, y in _batches(2):
        for balancer in (wrapped, alone):
            losses, _ = model.losses(x, y)
            balancer.backward(losses, shared_params=model.trunk.parameters())
    assert wrapped.method.tracked.shape == (3, sum(p.numel() for p in model.trunk.parameters()))
    torch.testing.assert_close(wrapped.method.tracked, alone.tracked)
