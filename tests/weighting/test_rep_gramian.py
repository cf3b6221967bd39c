"""The Gramian of the per-sample rows at a representation from the heads' factors (`rep_gramian`)."""

import pytest
import torch
from torch import nn

import mtlkit.weighting.jacobian as engine
from mtlkit.weighting import get
from mtlkit.weighting.jacobian import batch_rows, gramian, leaves_above, rep_gramian, rep_jacobian, task_jacobian


def _model(kind: str, T: int = 3):
    """(losses, reps, head parameters) of a float64 tanh trunk with heads of the given kind."""
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(5, 7), nn.Tanh()).double()
    x, y = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, T, dtype=torch.float64)
    rep = trunk(x)
    reps = [rep]
    if kind == "two reps":  # two representations, each read by its own products
        reps = [rep[:, :3], rep[:, 3:]]
    heads, losses = [], []
    for t in range(T):
        if kind == "width 1":
            layers = [nn.Linear(7, 1)]
        elif kind == "width 3":
            layers = [nn.Linear(7, 3)]
        elif kind == "no bias":
            layers = [nn.Linear(7, 2, bias=False)]
        elif kind == "two readers":
            layers = [nn.Linear(7, 2), nn.Linear(7, 1)]
        elif kind == "two reps":
            layers = [nn.Linear(3, 2), nn.Linear(4, 1)]
        else:
            raise ValueError(kind)
        layers = [layer.double() for layer in layers]
        heads.extend(p for layer in layers for p in layer.parameters())
        if kind == "two reps":
            out = torch.tanh(layers[0](reps[0])).sum(1) * layers[1](reps[1])[:, 0]
        elif kind == "two readers":
            out = torch.tanh(layers[0](rep)).sum(1) + layers[1](rep)[:, 0] ** 2
        else:
            out = torch.tanh(layers[0](rep)).sum(1)
        losses.append(((out - y[:, t]) ** 2).mean() * (t + 1))
    return losses, reps, heads


@pytest.fixture
def factors_always(monkeypatch):
    monkeypatch.setattr(engine, "_factors_are_cheaper", lambda *args: True)


@pytest.mark.parametrize("reduce", ["sample", "batch"])
@pytest.mark.parametrize("kind", ["width 1", "width 3", "no bias", "two readers", "two reps"])
def test_factored_gramian_and_update_equal_those_of_the_rows_in_float64(kind, reduce, factors_always):
    losses, reps, heads = _model(kind)
    J = task_jacobian(losses, reps)  # one plain backward per task: the independent reference
    rows = J if reduce == "sample" else batch_rows(J, reps)
    expected_heads = torch.autograd.grad(sum(losses), heads, retain_graph=True)
    G, times, grads = rep_gramian(losses, reps, also=heads, reduce=reduce)
    w = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64)
    assert torch.allclose(G, gramian(rows), rtol=1e-12, atol=1e-14)
    assert torch.allclose(times(w), w @ J, rtol=1e-12, atol=1e-14)
    assert all(torch.allclose(g, e, rtol=1e-12, atol=1e-14) for g, e in zip(grads, expected_heads))


def test_factored_gramian_sees_a_tensor_hook_on_a_head_output(factors_always):
    torch.manual_seed(0)
    trunk, heads = nn.Linear(4, 6).double(), [nn.Linear(6, 2).double() for _ in range(2)]
    x = torch.randn(8, 4, dtype=torch.float64)

    def losses_and_rep():
        rep = torch.tanh(trunk(x))
        outs = [head(rep) for head in heads]
        outs[0].register_hook(lambda g: 3 * g)  # task 0's gradient, as the heads' backward sees it
        return [(out**2).mean() for out in outs], rep

    losses, rep = losses_and_rep()
    J, _ = rep_jacobian(losses, [rep])
    losses, rep = losses_and_rep()
    G, _, _ = rep_gramian(losses, [rep], also=[p for h in heads for p in h.parameters()])
    assert torch.allclose(G, gramian(J), rtol=1e-12)


def test_factored_gramian_declines_where_it_does_not_apply():
    torch.manual_seed(0)
    trunk = nn.Linear(4, 6).double()
    x = torch.randn(8, 4, dtype=torch.float64)
    head = nn.Linear(6, 1).double()
    frozen = nn.Linear(6, 2, bias=False).double().requires_grad_(False)
    after = nn.Linear(2, 1).double()
    rep = torch.tanh(trunk(x))
    cases = {
        "a head starting with a non-product": [torch.tanh(rep).sum(), head(rep).sum()],
        "a head's first product on a frozen weight": [after(torch.tanh(frozen(rep))).sum(), head(rep).sum()],
        "a head parameter also in the trunk": [(rep @ trunk.weight).sum(), head(rep).sum()],
    }
    for name, losses in cases.items():
        also = leaves_above(losses, [rep]) + ([trunk.weight] if "trunk" in name else [])
        assert rep_gramian(losses, [rep], also=also) is None, name
    deep = torch.tanh(trunk(torch.randn(3, 8, 4, dtype=torch.float64)))  # 3-D: F.linear reads it through a view
    assert rep_gramian([head(deep).sum(), head(deep).mean()], [deep], also=list(head.parameters())) is None
    wide = [nn.Linear(6, 40).double() for _ in range(2)]  # K²(B + D) > T²·B·D: the rows are cheaper
    losses = [w(rep).sum() for w in wide]
    assert rep_gramian(losses, [rep], also=[p for w in wide for p in w.parameters()]) is None
    # Nothing ran: the rows path still finds every gradient.
    assert torch.allclose(rep_jacobian(losses, [rep])[0], task_jacobian(losses, [rep]))


@pytest.mark.parametrize(
    "name, options",
    [("mgda", {}), ("mgda", {"normalization": "loss+"}), ("upgrad", {"preference": [0.2, 0.3, 0.5]}), ("imtl_g", {})],
)
@pytest.mark.parametrize("kind", ["width 1", "two readers"])
@pytest.mark.parametrize("reduce", ["sample", "batch"])
def test_reps_backward_from_factors_equals_the_per_task_reference_in_float64(name, options, kind, reduce, monkeypatch):
    # The reference: rows from one plain backward per task, the method's weights from their Gramian
    # (of the batch-summed rows with rep_reduce="batch"), applied to the per-sample rows.
    losses, reps, heads = _model(kind)
    J = task_jacobian(losses, reps)
    balancer = get(name, tasks=3, **options)
    rows = J if reduce == "sample" else batch_rows(J, reps)
    _, w = balancer.combine(rows, torch.stack(losses).detach(), torch.arange(3))
    rep = reps[0]
    leaves = [leaf for leaf in engine.reachable_leaves_from([rep.grad_fn])]
    expected_trunk = torch.autograd.grad(rep, leaves, (w @ J).view_as(rep), retain_graph=True)
    expected_heads = torch.autograd.grad(sum(losses), heads)
    for factored in (True, False):  # the heads' factors, then the rows
        monkeypatch.setattr(engine, "_factors_are_cheaper", lambda *args, factored=factored: factored)
        losses, reps, heads = _model(kind)
        leaves = engine.reachable_leaves_from([reps[0].grad_fn])
        method = get(name, tasks=3, **options)
        method.rep_reduce = reduce
        result = method.backward(losses, shared_reps=reps[0])
        assert torch.allclose(torch.stack(list(result.weights.values())), w, rtol=1e-12, atol=1e-14)
        for p, e in zip([*leaves, *heads], [*expected_trunk, *expected_heads]):
            assert torch.allclose(p.grad, e, rtol=1e-12, atol=1e-14), (factored, p.shape)


def test_non_finite_head_gradient_raises_naming_the_task_before_any_grad_is_written(factors_always):
    torch.manual_seed(0)
    trunk, heads = nn.Linear(4, 6), [nn.Linear(6, 2) for _ in range(3)]
    rep = torch.tanh(trunk(torch.randn(8, 4)))
    outs = [head(rep) for head in heads]
    outs[1].register_hook(lambda g: torch.full_like(g, float("inf")))  # finite loss, infinite gradient
    with pytest.raises(FloatingPointError, match=r"gradient of task\(s\) \['1'\] is not finite"):
        get("mgda", tasks=3).backward([(out**2).mean() for out in outs], shared_reps=rep)
    assert all(p.grad is None for module in [trunk, *heads] for p in module.parameters())
