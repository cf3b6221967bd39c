import pytest
import torch

from mtlkit.weighting import GradientBalancer, get
from mtlkit.weighting.jacobian import (
    gramian,
    gramian_root,
    jacobian,
    leaves_above,
    params_gramian,
    rep_jacobian,
    task_jacobian,
)


def _sequential_reference(losses, inputs):
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, inputs)])
        )
    return torch.stack(rows)


def test_batched_jacobian_equals_one_autograd_grad_call_per_task(small_mtl):
    model = small_mtl(num_tasks=4, dtype=torch.float64)
    losses, _ = model()
    params = list(model.parameters())
    J = jacobian(torch.stack(losses), params)
    assert torch.allclose(J, _sequential_reference(losses, params), atol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7])
def test_chunked_and_sequential_jacobians_equal_the_unchunked_one(small_mtl, chunk_size):
    model = small_mtl(num_tasks=5, dtype=torch.float64)
    losses, rep = model()
    vec = torch.stack(losses)
    inputs = [rep, *model.trunk.parameters()]
    full = jacobian(vec, inputs)
    assert torch.allclose(jacobian(vec, inputs, chunk_size=chunk_size), full, atol=1e-12)


def test_inputs_a_loss_does_not_reach_get_zero_columns(small_mtl):
    model = small_mtl(num_tasks=2)
    losses, _ = model()
    head0 = list(model.heads[0].parameters())
    J = jacobian(torch.stack(losses), head0)
    assert J[1].abs().sum() == 0 and J[0].abs().sum() > 0


def test_chunk_size_below_one_is_rejected(small_mtl):
    losses, rep = small_mtl()()
    with pytest.raises(ValueError, match="chunk_size"):
        jacobian(torch.stack(losses), [rep], chunk_size=0)


class _NumpyDouble(torch.autograd.Function):
    """Leaves PyTorch in its backward, which vmap cannot batch."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return torch.from_numpy(grad.detach().numpy() * 2)


def test_unbatchable_backward_falls_back_to_sequential_with_a_warning():
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    y = _NumpyDouble.apply(x)
    losses = torch.stack([y.sum(), (y**2).sum()])
    with pytest.warns(RuntimeWarning, match="chunk_size=1"):
        J = jacobian(losses, [x])
    expected = torch.stack([torch.full_like(x, 2.0), 8 * x.detach()])
    assert torch.allclose(J, expected)


def test_errors_that_are_not_about_batching_propagate():
    x = torch.randn(3, requires_grad=True)
    losses = torch.stack([(x * 2).sum(), (x**2).sum()])
    losses.sum().backward()  # frees the graph
    with pytest.raises(RuntimeError, match="second time"):
        jacobian(losses, [x])


class _FixedWeights(GradientBalancer):
    """A linear aggregation: the case where rep mode and param mode must agree."""

    def weights(self, G):
        return torch.linspace(0.5, 1.5, G.shape[0], dtype=G.dtype)


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_rep_mode_equals_param_mode_for_a_fixed_combination(small_mtl):
    by_params, by_reps = small_mtl(dtype=torch.float64), small_mtl(dtype=torch.float64)
    losses, _ = by_params()
    _FixedWeights().backward(losses, shared_params=by_params.trunk.parameters())
    losses, rep = by_reps()
    _FixedWeights().backward(losses, shared_reps=rep)
    expected, actual = _grads(by_params), _grads(by_reps)
    for name in expected:
        assert torch.allclose(actual[name], expected[name], atol=1e-12), name


def test_heads_get_their_own_unweighted_gradient_in_both_modes(small_mtl):
    for mode in ("params", "reps"):
        model = small_mtl(dtype=torch.float64)
        losses, rep = model()
        reference = [
            torch.autograd.grad(loss, list(head.parameters()), retain_graph=True)
            for loss, head in zip(losses, model.heads)
        ]
        kwargs = {"shared_params": model.trunk.parameters()} if mode == "params" else {"shared_reps": rep}
        _FixedWeights().backward(losses, **kwargs)
        for head, grads in zip(model.heads, reference):
            for p, g in zip(head.parameters(), grads):
                assert torch.allclose(p.grad, g, atol=1e-12), mode


def test_gramian_is_the_matrix_of_row_inner_products():
    J = torch.randn(3, 7, dtype=torch.float64)
    G = gramian(J)
    assert torch.allclose(G[0, 2], J[0] @ J[2]) and torch.allclose(G, G.T)


def test_per_task_jacobian_equals_the_batched_one(small_mtl):
    model = small_mtl(num_tasks=4, dtype=torch.float64)
    losses, rep = model()
    inputs = [rep, *model.trunk.parameters()]
    assert torch.allclose(task_jacobian(losses, inputs), jacobian(torch.stack(losses), inputs), atol=1e-12)


def test_one_pass_rep_jacobian_equals_per_task_passes(small_mtl):
    model = small_mtl(num_tasks=4, dtype=torch.float64)
    losses, rep = model()
    losses[2] = losses[2] + (rep * rep).mean()  # a task reading the representation twice
    assert torch.allclose(rep_jacobian(losses, [rep])[0], task_jacobian(losses, [rep]), atol=1e-12)


def test_rep_jacobian_with_a_layer_shared_after_the_representation_is_still_exact(small_mtl):
    model = small_mtl(num_tasks=3, dtype=torch.float64)
    _, rep = model()
    shared = torch.tanh(rep)  # read by every task: one pass cannot separate them
    losses = [((head(shared) - y) ** 2).mean() for head, y in zip(model.heads, model.y)]
    assert torch.allclose(rep_jacobian(losses, [rep])[0], task_jacobian(losses, [rep]), atol=1e-12)


def test_rep_jacobian_over_two_representations_and_an_unreached_one(small_mtl):
    model = small_mtl(num_tasks=2, dtype=torch.float64)
    _, rep = model()
    a, b = rep[:, :3], rep[:, 3:]
    unused = rep * 2
    losses = [(a**2).sum(), (a * b).sum()]
    J, _ = rep_jacobian(losses, [a, b, unused])
    assert torch.allclose(J, task_jacobian(losses, [a, b, unused]), atol=1e-12)


def test_rep_jacobian_also_returns_the_heads_gradients_of_the_summed_losses(small_mtl):
    model = small_mtl(num_tasks=3, dtype=torch.float64)
    losses, rep = model()
    heads = list(model.heads.parameters())
    expected = torch.autograd.grad(sum(losses), heads, retain_graph=True)
    shared = (rep * 0).sum()  # one node reading rep for every task: the per-task fallback
    for inputs in (losses, [loss + shared for loss in losses]):
        _, grads = rep_jacobian(inputs, [rep], also=heads)
        assert all(torch.allclose(g, e) for g, e in zip(grads, expected))


def test_leaves_above_stop_at_the_representation(small_mtl):
    model = small_mtl(num_tasks=2)
    losses, rep = model()
    found = {id(p) for p in leaves_above(losses, [rep])}
    assert found == {id(p) for p in model.heads.parameters()}


# --- the Gramian path on shared parameters -------------------------------------------------


@pytest.mark.parametrize("case", ["frontier", "skip connection", "no frontier"])
def test_params_gramian_equals_the_batched_jacobians_gramian_in_float64(small_mtl, case):
    model = small_mtl(num_tasks=4, dtype=torch.float64)
    losses, _rep = model()
    params = list(model.trunk.parameters())
    if case == "skip connection":  # task 2 also reads an inner trunk layer: two frontier edges
        losses[2] = losses[2] + (model.trunk[1](model.trunk[0](model.x)) ** 2).mean()
    if case == "no frontier":  # a parameter only task 0 reaches: rows from the losses themselves
        params.append(model.heads[0].weight)
    expected = gramian(jacobian(losses, params))
    G, apply = params_gramian(losses, params)
    assert torch.allclose(G, expected, rtol=1e-12, atol=1e-14)
    w = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    reference = torch.autograd.grad((w * torch.stack(losses)).sum(), params, retain_graph=True)
    apply(w)
    for p, g in zip(params, reference):
        assert torch.allclose(p.grad, g, atol=1e-12)


def test_params_gramian_holds_no_block_of_the_jacobian_afterwards(small_mtl):
    model = small_mtl(dtype=torch.float64)
    losses, _ = model()
    params = list(model.trunk.parameters())
    params_gramian(losses, params)[0]
    assert all(p.grad is None for p in params) and all(not p._backward_hooks for p in params)


def test_params_gramian_falls_back_to_rows_when_the_backward_cannot_be_batched():
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    y = _NumpyDouble.apply(x)
    losses = [y.sum(), (y**2).sum()]
    with pytest.warns(RuntimeWarning, match="one at a time"):
        G, _ = params_gramian(losses, [x])
    J = torch.stack([torch.full_like(x, 2.0), 8 * x.detach()])
    assert torch.allclose(G, J @ J.T)


def test_gramian_root_reproduces_a_singular_gramian():
    J = torch.randn(3, 7, dtype=torch.float64)
    J[2] = J[0] + J[1]  # rank 2
    R = gramian_root(gramian(J))
    assert torch.allclose(R @ R.T, gramian(J), atol=1e-12)


@pytest.mark.parametrize("name", ["mgda", "upgrad", "imtl_g", "cagrad", "aligned_mtl", "nash_mtl", "pcgrad", "gradvac"])
def test_gramian_path_gives_the_jacobian_paths_weights_and_grads(small_mtl, name):
    # chunk_size=1 takes the rows themselves (the Jacobian path); the default takes the Gramian path.
    results = {}
    for chunk_size in (None, 1):
        model = small_mtl(num_tasks=4, dtype=torch.float64)
        balancer = get(name, tasks=4, chunk_size=chunk_size)
        losses, _ = model()
        out = balancer.backward(losses, shared_params=model.trunk.parameters())
        results[chunk_size] = (out.weights, _grads(model))
    (w_gram, g_gram), (w_rows, g_rows) = results[None], results[1]
    for task in w_rows:
        assert torch.allclose(w_gram[task], w_rows[task], atol=1e-7), task
    for param in g_rows:
        assert torch.allclose(g_gram[param], g_rows[param], atol=1e-7), param


# --- rep_reduce: which rows at the representation give the weights --------------------------


def _mgda_two_task_weights(g1, g2):
    """Closed-form min-norm point of the segment [g1, g2] (Sener & Koltun 2018, T = 2)."""
    a = float(torch.clamp((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0.0, 1.0))
    return torch.tensor([a, 1.0 - a], dtype=torch.float64)


@pytest.mark.parametrize("rep_reduce", ["sample", "batch"])
def test_rep_reduce_weights_and_trunk_grads_match_a_float64_reference(small_mtl, rep_reduce):
    model = small_mtl(num_tasks=2, dtype=torch.float64, seed=3)
    losses, rep = model()
    rows = [torch.autograd.grad(loss, rep, retain_graph=True)[0] for loss in losses]  # B×D each
    flat = [r.sum(0) if rep_reduce == "batch" else r.reshape(-1) for r in rows]
    w = _mgda_two_task_weights(*flat)
    expected = torch.autograd.grad(
        rep, list(model.trunk.parameters()), w[0] * rows[0] + w[1] * rows[1], retain_graph=True
    )
    balancer = get("mgda", tasks=2, rep_reduce=rep_reduce)
    out = balancer.backward(losses, shared_reps=rep)
    assert torch.allclose(torch.stack(list(out.weights.values())), w, atol=1e-10)
    for p, g in zip(model.trunk.parameters(), expected):
        assert torch.allclose(p.grad, g, atol=1e-12)


def test_the_two_rep_reduce_modes_give_different_weights(small_mtl):
    weights = {}
    for mode in ("sample", "batch"):
        model = small_mtl(num_tasks=3, dtype=torch.float64, seed=1)
        losses, rep = model()
        balancer = get("upgrad", tasks=3)
        balancer.rep_reduce = mode
        weights[mode] = torch.stack(list(balancer.backward(losses, shared_reps=rep).weights.values()))
    assert not torch.allclose(weights["sample"], weights["batch"], atol=1e-3)


def test_rep_reduce_is_checked():
    from mtlkit import ConfigError

    with pytest.raises(ConfigError, match="rep_reduce='mean'"):
        get("mgda", rep_reduce="mean")
    with pytest.raises(ConfigError, match="needs a gradient method"):
        get("ew", rep_reduce="batch")


def test_batch_rows_need_a_method_that_sees_only_the_gramian(small_mtl):
    model = small_mtl(dtype=torch.float64)
    losses, rep = model()
    with pytest.raises(ValueError, match="GradDrop needs the task gradients themselves"):
        get("graddrop", tasks=3, rep_reduce="batch").backward(losses, shared_reps=rep)


def test_a_leaf_below_the_frontier_but_not_shared_still_gets_its_gradient(small_mtl):
    # The trunk's last layer is not in shared_params (so it is "specific") but lies below the
    # frontier: the rows at the frontier must not stop the gradient it receives through it.
    model = small_mtl(num_tasks=2, dtype=torch.float64)
    losses, _ = model()
    last = model.trunk[2].weight
    expected = torch.autograd.grad(sum(losses), last, retain_graph=True)[0]
    _FixedWeights().backward(losses, shared_params=list(model.trunk[0].parameters()))
    assert torch.allclose(last.grad, expected, atol=1e-12)
