"""The layer-by-layer Gramian on shared parameters against the explicit Jacobian, in float64.

Reference: J from one plain `autograd.grad` per task (`task_jacobian`), G = JJᵀ, and the
update ∂Σ_t w_t L_t/∂params from one plain backward.
"""

import pytest
import torch
from torch import nn

from mtlkit.weighting import available, get
from mtlkit.weighting.base import _sees_only_gramian
from mtlkit.weighting.context import needs_of
from mtlkit.weighting.gramian import layers_with_rules
from mtlkit.weighting.jacobian import gramian, params_gramian, task_jacobian

D64 = torch.float64


class Tied(nn.Module):
    """One Linear applied twice: its weight feeds two products, so it has no per-layer rule."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.layer = nn.Linear(width, width)

    def forward(self, x):
        return self.layer(torch.tanh(self.layer(x)))


class RightProduct(nn.Module):
    """x @ W (the weight itself as the product's second factor, not its transpose), no bias."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_in, d_out))

    def forward(self, x):
        return x @ self.weight


TRUNKS = {
    "linear": lambda: nn.Linear(5, 6),
    "linear without bias": lambda: nn.Linear(5, 6, bias=False),
    "linear-relu stack": lambda: nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 6)),
    "layer norm mixed in": lambda: nn.Sequential(
        nn.Linear(5, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 6, bias=False)
    ),
    "conv mixed in": lambda: nn.Sequential(
        nn.Unflatten(1, (1, 5)), nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Tanh(), nn.Linear(6, 6)
    ),
    "conv2d": lambda: nn.Sequential(
        nn.Unflatten(1, (1, 1, 5)),
        nn.Conv2d(1, 3, (1, 2), padding=(0, 1)),
        nn.ReLU(),
        nn.Conv2d(3, 2, (1, 3), stride=(1, 2), dilation=(1, 2), bias=False),
        nn.Flatten(),
        nn.Linear(2, 6),
    ),
    "tied weights": lambda: Tied(5),
    "x @ W": lambda: nn.Sequential(RightProduct(5, 8), nn.Tanh(), nn.Linear(8, 6)),
}


def _model(trunk: str, T: int, seed: int = 0, sequence: bool = False):
    torch.manual_seed(seed)
    body = TRUNKS[trunk]().to(D64)
    width = 5 if trunk == "tied weights" else 6
    heads = nn.ModuleList(nn.Linear(width, 1).to(D64) for _ in range(T))
    x = torch.randn(7, 3, 5, dtype=D64) if sequence else torch.randn(9, 5, dtype=D64)
    y = torch.randn(T, *x.shape[:-1], 1, dtype=D64)
    return body, heads, x, y


def _losses(body, heads, x, y):
    rep = body(x)
    return [((head(rep) - target) ** 2).mean() for head, target in zip(heads, y)]


def _check(losses, params, T):
    expected = gramian(task_jacobian(losses, params))
    G, apply = params_gramian(losses, params)
    assert torch.allclose(G, expected, rtol=1e-12, atol=1e-13)
    w = torch.linspace(0.2, 1.0, T, dtype=D64)
    reference = torch.autograd.grad(
        (w * torch.stack(losses)).sum(), params, retain_graph=True, allow_unused=True, materialize_grads=True
    )
    apply(w)
    for p, g in zip(params, reference):
        assert torch.allclose(p.grad, g, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("held", [True, False])
@pytest.mark.parametrize("T", [1, 2, 10])
@pytest.mark.parametrize("trunk", list(TRUNKS))
def test_layered_gramian_and_update_equal_the_explicit_jacobians(trunk, T, held, monkeypatch):
    # held=False: nothing is kept for the update (layers fold their blocks as the backward
    # reaches them); the update comes from one more backward.
    _hold(held, monkeypatch)
    body, heads, x, y = _model(trunk, T)
    _check(_losses(body, heads, x, y), list(body.parameters()), T)


def test_linear_on_a_sequence_batch_is_exact():
    # A Linear on B×S×D input multiplies the flattened (B·S)×D view: the rule applies to it.
    body, heads, x, y = _model("linear-relu stack", 3, sequence=True)
    params = list(body.parameters())
    losses = _losses(body, heads, x, y)
    assert len(layers_with_rules([loss.grad_fn for loss in losses], [loss.grad_fn for loss in losses], params)) == 3
    _check(losses, params, 3)


def test_only_qualifying_products_take_the_rule():
    body, heads, x, y = _model("layer norm mixed in", 2)
    losses = _losses(body, heads, x, y)
    roots = [loss.grad_fn for loss in losses]
    layers = layers_with_rules(roots, roots, list(body.parameters()))
    assert {id(layer.weight) for layer in layers} == {id(body[0].weight), id(body[3].weight)}
    assert [layer.bias is body[0].bias for layer in layers if layer.weight is body[0].weight] == [True]
    body, heads, x, y = _model("conv2d", 2)
    losses = _losses(body, heads, x, y)
    roots = [loss.grad_fn for loss in losses]
    layers = layers_with_rules(roots, roots, list(body.parameters()))
    assert {id(layer.weight) for layer in layers} == {id(body[1].weight), id(body[3].weight), id(body[5].weight)}
    tied, heads, x, y = _model("tied weights", 2)
    losses = _losses(tied, heads, x, y)
    roots = [loss.grad_fn for loss in losses]
    assert layers_with_rules(roots, roots, list(tied.parameters())) == []
    # A layer whose bias is not among the parameters keeps the generic path for its weight.
    body, heads, x, y = _model("linear", 2)
    losses = _losses(body, heads, x, y)
    roots = [loss.grad_fn for loss in losses]
    assert layers_with_rules(roots, roots, [body.weight]) == []


def _hold(held: bool, monkeypatch) -> None:
    import mtlkit.weighting.jacobian as engine

    monkeypatch.setattr(engine, "_HELD_ELEMENTS", engine._HELD_ELEMENTS if held else 0)


@pytest.mark.parametrize("held", [True, False])
def test_a_parameter_reached_by_tasks_through_different_paths(held, monkeypatch):
    _hold(held, monkeypatch)
    # Task 1 reads the first layer's output directly, task 2 also reads the trunk's output
    # and the first layer's weight a second time: several frontier edges, one tied weight.
    body, heads, x, y = _model("linear-relu stack", 3)
    params = list(body.parameters())
    inner = body[1](body[0](x))
    rep = body(x)
    losses = [
        ((heads[0](rep) - y[0]) ** 2).mean(),
        ((heads[1](rep) - y[1]) ** 2).mean() + (inner**2).mean(),
        ((heads[2](rep) - y[2]) ** 2).mean() + 0.1 * (body[0].weight ** 2).sum(),
    ]
    _check(losses, params, 3)


@pytest.mark.parametrize("held", [True, False])
def test_a_task_with_masked_samples(held, monkeypatch):
    _hold(held, monkeypatch)
    # A task labelled on some samples only: its loss reads a subset of the batch.
    body, heads, x, y = _model("linear-relu stack", 3)
    params = list(body.parameters())
    rep = body(x)
    mask = torch.tensor([True, False, True, True, False, False, True, False, True])
    losses = [((heads[0](rep) - y[0]) ** 2).mean(), ((heads[1](rep[mask]) - y[1][mask]) ** 2).mean()]
    losses.append(((heads[2](rep) - y[2]) ** 2).mean())
    _check(losses, params, 3)


def _gramian_only_methods() -> list[str]:
    names = []
    for name in available(aliases=False):
        balancer = get(name, tasks=3)
        if hasattr(balancer, "_backward_on_params") and _sees_only_gramian(type(balancer)):
            names.append(name)
    return names


@pytest.mark.parametrize("name", _gramian_only_methods())
def test_every_gramian_only_method_writes_the_explicit_paths_grads(small_mtl, name):
    # chunk_size=1 holds the rows (the explicit Jacobian path); the default takes the Gramian
    # path. A missing-label task (loss without grad) is left out of both steps.
    tasks = ["a", "b", "c", "d"]
    results = {}
    for chunk_size in (None, 1):
        model = small_mtl(num_tasks=4, dtype=D64)
        balancer = get(name, tasks=tasks, chunk_size=chunk_size)
        if needs_of(balancer):
            balancer.context = model.context(tasks)
        losses, _ = model()
        losses[2] = losses[2].detach()
        torch.manual_seed(3)  # methods that draw random numbers draw the same ones
        balancer.backward(dict(zip(tasks, losses)), shared_params=model.trunk.parameters())
        results[chunk_size] = [p.grad for p in model.parameters()]
    for fast, explicit in zip(*results.values()):
        assert (fast is None) == (explicit is None)
        if fast is not None:
            assert torch.allclose(fast, explicit, rtol=1e-10, atol=1e-10)


class _FirstOnly(torch.autograd.Function):
    """a + 0·b whose backward gives b no gradient (None): a layer below b is never reached."""

    @staticmethod
    def forward(ctx, a, b):
        return a + 0 * b

    @staticmethod
    def backward(ctx, grad):
        return grad, None


@pytest.mark.parametrize("held", [True, False])
def test_a_layer_no_gradient_reaches_gets_a_zero_update(held, monkeypatch):
    _hold(held, monkeypatch)
    torch.manual_seed(0)
    reached, cut = nn.Linear(3, 4).to(D64), nn.Linear(3, 4).to(D64)
    x = torch.randn(5, 3, dtype=D64)
    z = _FirstOnly.apply(reached(x), cut(x))
    losses = [z.sum(), (z**2).sum()]
    params = [*reached.parameters(), *cut.parameters()]
    _check(losses, params, 2)
    assert all(torch.count_nonzero(p.grad) == 0 for p in cut.parameters())


def _peak_bytes(step) -> int:
    """The most bytes of CPU tensors alive at once during `step()`, above what was alive before it."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):  # allocations (+bytes) and frees (-bytes)
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def test_without_holding_the_peak_memory_does_not_grow_with_depth(monkeypatch):
    # Chains of 3 and 9 equal layers, T = 8. Holding keeps every layer's T output gradients
    # for the update: one chunk (T×B×D numbers) more per layer. Folding each layer's block as
    # the backward reaches it keeps a fixed number of chunks alive whatever the depth (the
    # T rows at the representation, the backward's own two, a layer's output gradient and
    # the one it passes down, and the fold's product); what grows is the update itself, the
    # parameters' gradients (`.grad` and the flat copy `apply` returns).
    import mtlkit.weighting.jacobian as engine

    T, B, D = 8, 64, 128
    chunk = T * B * D * 4
    peaks = {}
    for depth in (3, 9):
        torch.manual_seed(0)
        body = nn.Sequential(*(m for _ in range(depth) for m in (nn.Linear(D, D), nn.Tanh())))
        heads = nn.ModuleList(nn.Linear(D, 1) for _ in range(T))
        x, y = torch.randn(B, D), torch.randn(T, B, 1)
        for held in (True, False):
            monkeypatch.setattr(engine, "_HELD_ELEMENTS", 2**40 if held else 0)
            losses = _losses(body, heads, x, y)
            params = list(body.parameters())
            peaks[depth, held] = _peak_bytes(
                lambda losses=losses, params=params: params_gramian(losses, params)[1](torch.ones(T))
            )
    assert peaks[9, True] - peaks[3, True] > 5.5 * chunk
    grads = 2 * 6 * (D * D + D) * 4  # the 6 more layers' update, twice
    assert peaks[9, False] - peaks[3, False] < grads + 0.25 * chunk
    assert peaks[3, False] < 3.5 * chunk


def test_a_given_chunk_size_takes_the_jacobian_that_many_rows_at_a_time(small_mtl, monkeypatch):
    # chunk_size=2 is the user's choice of how many rows one backward takes: the Gramian
    # path (which runs all T rows at once) is not taken, and the result is the same.
    import mtlkit.weighting.base as engine

    tasks = ["a", "b", "c", "d"]
    grads = {}
    original = engine.jacobian
    for chunk_size in (None, 2):
        model = small_mtl(num_tasks=4, dtype=D64)
        balancer = get("mgda", tasks=tasks, chunk_size=chunk_size)
        calls: list[dict] = []
        monkeypatch.setattr(engine, "jacobian", lambda *a, calls=calls, **k: calls.append(k) or original(*a, **k))
        losses, _ = model()
        balancer.backward(dict(zip(tasks, losses)), shared_params=model.trunk.parameters())
        grads[chunk_size] = [p.grad for p in model.parameters()]
        assert calls == ([] if chunk_size is None else [{"chunk_size": 2}])
    for default, chunked in zip(*grads.values()):
        assert torch.allclose(default, chunked, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("per_task", [True, False])
def test_convolutions_on_cpu_take_one_backward_per_task(per_task, monkeypatch):
    # On CPU a kept (small) Gramian step whose backward passes through a 2-D convolution
    # runs one plain backward per task (vmap would run the convolution sample by sample);
    # both ways give the explicit Jacobian's G and update.
    import mtlkit.weighting.jacobian as engine

    if not per_task:
        monkeypatch.setattr(engine, "_convolutions_on_cpu", lambda *args: False)
    vmapped = []
    vmap = torch.func.vmap
    monkeypatch.setattr(torch.func, "vmap", lambda *a, **k: vmapped.append(1) or vmap(*a, **k))
    body, heads, x, y = _model("conv2d", 3)
    _check(_losses(body, heads, x, y), list(body.parameters()), 3)
    assert bool(vmapped) is not per_task
