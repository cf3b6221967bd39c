"""Auto-λ: the finite-difference hypergradient against autograd through the unrolled step."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mtlkit.weighting import get
from mtlkit.weighting.context import StepContext

TASKS = ["a", "b", "c"]


class _Losses(nn.Module):
    """The test model's task losses on a batch, as a function of its parameters (for functional_call)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, y):
        rep = self.model.trunk(x)
        return torch.stack([((head(rep) - t) ** 2).mean() for head, t in zip(self.model.heads, y)])


def _recording_context(model):
    context = model.context(TASKS)
    drawn = []

    def draw():
        drawn.append(context.next_valid_batch())
        return drawn[-1]

    return context.__class__(**{**context.__dict__, "next_valid_batch": draw}), drawn


def test_hypergradient_matches_autograd_through_the_virtual_step(small_mtl):
    model = small_mtl(num_tasks=3, dtype=torch.float64)
    balancer = get("auto_lambda", tasks=TASKS).double()
    context, drawn = _recording_context(model)
    losses, _ = model()
    fd = balancer.hypergradient(context, torch.stack(losses), torch.arange(3))

    f = _Losses(model)
    names = [name for name, _ in f.named_parameters()]
    theta = {n: p.detach().clone().requires_grad_() for n, p in f.named_parameters()}
    lam = balancer.lambdas.detach().clone().requires_grad_()
    train = functional_call(f, theta, (model.x, model.y))
    grads = torch.autograd.grad((lam * train).sum(), [theta[n] for n in names], create_graph=True)
    ahead = {n: theta[n] - context.lr * g for n, g in zip(names, grads)}
    (exact,) = torch.autograd.grad(functional_call(f, ahead, drawn[0]).sum(), lam)
    # The paper's central difference with ε = 0.01/‖d‖ is exact up to O(ε²): ~1e-4 relative here.
    assert torch.allclose(fd, exact, rtol=1e-3, atol=1e-12)


def test_backward_takes_one_adam_step_on_lambda_and_leaves_the_parameters_unchanged(small_mtl):
    model = small_mtl(num_tasks=3, dtype=torch.float64)
    balancer = get("auto_lambda", tasks=TASKS, lr=0.01).double()
    balancer.context = model.context(TASKS)
    before = [p.detach().clone() for p in model.parameters()]
    h = balancer.hypergradient(model.context(TASKS), torch.stack(model()[0]), torch.arange(3))
    losses, _ = model()
    balancer.backward(dict(zip(TASKS, losses)))
    # Adam's first step moves each λ by lr against the sign of its gradient.
    assert torch.allclose(balancer.lambdas, 0.1 - 0.01 * torch.sign(h), atol=1e-9)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    reference = small_mtl(num_tasks=3, dtype=torch.float64)
    (balancer.lambdas * torch.stack(reference()[0])).sum().backward()
    assert all(torch.allclose(p.grad, r.grad) for p, r in zip(model.parameters(), reference.parameters()))


def test_primary_tasks_must_be_known():
    with pytest.raises(ValueError, match=r"primary tasks \['z'\]"):
        get("auto_lambda", tasks=TASKS, primary=["a", "z"])


def test_primary_tasks_without_tasks_ask_for_the_tasks():
    # The primary tasks used to be looked up in the (missing) task list first: TypeError.
    with pytest.raises(ValueError, match="tasks=<number of tasks or task names>"):
        get("auto_lambda", primary=["a"])


def test_a_validation_loss_that_no_parameter_reaches_gives_a_zero_hypergradient():
    # ∂L_val/∂θ = 0, so L_val(θ − α∇Σλ_t L_t) does not depend on λ: the exact hypergradient is 0.
    # The gradient norm used to be the int 0 here, which torch.sqrt rejects (TypeError).
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    q = torch.tensor(3.0, requires_grad=True)  # reached by the validation loss only, not a model parameter
    context = StepContext(
        batch=None,
        losses=lambda batch: {"a": q**2},
        next_train_batch=lambda: None,
        next_valid_batch=lambda: None,
        shared_parameters=[p],
        parameters=[p],
        lr=0.1,
    )
    balancer = get("auto_lambda", tasks=["a", "b"])
    losses = torch.stack([(p**2).sum(), p.sum()])
    assert torch.equal(balancer.hypergradient(context, losses, torch.arange(2)), torch.zeros(2))
