"""The `every=k` and `ema=β` wrappers: reuse without a Jacobian, the bias-corrected average, task subsets, resume."""

from __future__ import annotations

import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.weighting import GradientBalancer, available, base, get
from mtlkit.weighting.registry import _REGISTRY
from mtlkit.weighting.wrappers import GradientWrapper, LossWrapper, parse_spec, split_specs, wrap

TASKS = ["a", "b", "c"]


def _backward(model, balancer, mode, tasks=TASKS):
    losses, rep = model()
    kwargs = {"shared_params": model.trunk.parameters()} if mode == "params" else {"shared_reps": rep}
    return balancer.backward({t: losses[TASKS.index(t)] for t in tasks}, **kwargs)


def _task_grads(model, tasks=TASKS):
    """Per task: its gradient of the trunk parameters and of its own head (float64 model)."""
    losses, _ = model()
    rows = {}
    for t in tasks:
        loss = losses[TASKS.index(t)]
        rows[t] = torch.cat(
            [g.reshape(-1) for g in torch.autograd.grad(loss, list(model.trunk.parameters()), retain_graph=True)]
        )
    return rows


def _trunk_grad(model):
    return torch.cat([p.grad.reshape(-1) for p in model.trunk.parameters()])


def _zero(model):
    for p in model.parameters():
        p.grad = None


def test_string_and_keyword_forms_build_the_same_wrapper():
    a = get("mgda@every=4,ema=0.9", tasks=TASKS)
    b = get("MGDA", tasks=TASKS, every=4, ema=0.9)
    assert isinstance(a, GradientWrapper) and (a.every, a.ema) == (b.every, b.ema) == (4, 0.9)
    assert get("mgda@every=2", tasks=TASKS, every=8).every == 8  # the keyword wins
    assert parse_spec("upgrad@ema=0.5") == ("upgrad", {"ema": 0.5})
    assert type(get("mgda", tasks=TASKS, every=1)).__name__ == "MGDA"  # nothing to wrap
    assert isinstance(get("uw@every=3", tasks=TASKS), LossWrapper)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mgda@every=x", "every must be an integer"),
        ("mgda@c=0.4", "after '@' come the wrapper options"),
        ("mgda@every=2,every=3", "after '@'"),
        ("mgda@every=0", "positive integer"),
        ("mgda@ema=1.0", r"\[0, 1\)"),
        ("graddrop@every=2", "transforms the task gradients"),
        ("trimmed_mean@ema=0.9", "transforms the task gradients"),
        ("imtl@ema=0.9", "runs its own backward"),
        ("imtl@every=2", "runs its own backward"),
        ("cr_mogm@ema=0.5", "runs its own backward"),
        ("mgdaa@every=2", "unknown balancer 'mgdaa'"),
    ],
)
def test_bad_wrapper_specs_raise_config_errors_that_say_what_to_change(spec, message):
    with pytest.raises(ConfigError, match=message):
        get(spec, tasks=TASKS)


def test_a_method_reporting_no_weights_raises_at_its_first_step(small_mtl):
    balancer = get("db_mtl@every=2", tasks=TASKS)
    with pytest.raises(ConfigError, match="DBMTL reported no task weights"):
        _backward(small_mtl(num_tasks=3), balancer, "params")


@pytest.mark.parametrize("mode", ["params", "reps"])
def test_every_k_reuses_the_weights_with_one_weighted_backward_and_no_jacobian(small_mtl, mode, monkeypatch):
    model = small_mtl(num_tasks=3, dtype=torch.float64)
    balancer = get("mgda", tasks=TASKS, every=3)
    first = _backward(model, balancer, mode)
    w = torch.stack([first.weights[t] for t in TASKS])

    def no_jacobian(*args, **kwargs):
        raise AssertionError("a reuse step took a task Jacobian")

    monkeypatch.setattr(base, "jacobian", no_jacobian)
    monkeypatch.setattr(base, "rep_jacobian", no_jacobian)
    monkeypatch.setattr(base, "params_gramian", no_jacobian)  # the Gramian path of weights(G) methods
    rows = _task_grads(model)
    for _ in range(2):  # steps 2 and 3 of 3 reuse w
        _zero(model)
        result = _backward(model, balancer, mode)
        assert torch.equal(torch.stack([result.weights[t] for t in TASKS]), w)
        expected = sum(w[i] * rows[t] for i, t in enumerate(TASKS))
        assert torch.allclose(_trunk_grad(model), expected, atol=1e-12)
        for i, head in enumerate(model.heads):  # heads: their own unweighted gradient
            losses, _ = model()
            own = torch.autograd.grad(losses[i], list(head.parameters()), retain_graph=True)
            assert all(torch.allclose(p.grad, g, atol=1e-12) for p, g in zip(head.parameters(), own))
    with pytest.raises(AssertionError, match="took a task Jacobian"):  # step 4 computes again
        _backward(model, balancer, mode)


def test_every_k_computes_afresh_when_the_batch_labels_another_set_of_tasks(small_mtl):
    model = small_mtl(num_tasks=3, dtype=torch.float64)
    balancer = get("mgda", tasks=TASKS, every=10)
    calls = []
    original = balancer.method.combine
    balancer.method.combine = lambda J, losses, index: calls.append(index.tolist()) or original(J, losses, index)
    _backward(model, balancer, "params")
    _backward(model, balancer, "params")  # same tasks: reused
    _backward(model, balancer, "params", tasks=["a", "c"])  # another set: computed
    _backward(model, balancer, "params", tasks=["a", "c"])  # reused
    _backward(model, balancer, "params")  # back to all three: computed
    assert calls == [[0, 1, 2], [0, 2], [0, 1, 2]]


def test_ema_is_the_bias_corrected_average_of_the_methods_weights_per_task(small_mtl):
    model = small_mtl(num_tasks=3, dtype=torch.float64)
    beta = 0.8
    plain, smoothed = get("mgda", tasks=TASKS), get("mgda", tasks=TASKS, ema=beta)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    history = {t: [] for t in TASKS}
    for step in range(5):
        tasks = TASKS if step != 2 else ["a", "b"]  # task c is absent once: its average waits
        _zero(model)
        raw = _backward(model, plain, "params", tasks)
        _zero(model)
        result = _backward(model, smoothed, "params", tasks)
        for t in tasks:
            history[t].append(float(raw.weights[t]))
            k = len(history[t])
            m = sum((1 - beta) * beta ** (k - 1 - i) * w for i, w in enumerate(history[t]))
            assert float(result.weights[t]) == pytest.approx(m / (1 - beta**k), rel=1e-12)
        rows = _task_grads(model, tasks)
        expected = sum(result.weights[t] * rows[t] for t in tasks)
        assert torch.allclose(_trunk_grad(model), expected, atol=1e-12)
        optimizer.step()


def test_ema_on_a_loss_method_reweights_the_losses_and_keeps_the_methods_own_gradients(small_mtl):
    model = small_mtl(num_tasks=3, dtype=torch.float64)
    uw = get("uw", tasks=TASKS)
    uw.log_var.data = torch.tensor([0.3, -0.2, 0.1])
    wrapped = wrap(get("uw", tasks=TASKS), ema=0.5)
    wrapped.method.load_state_dict(uw.state_dict())
    wrapped.average.copy_(torch.tensor([0.1, 0.9, 0.4]))  # a history, so that ŵ ≠ w
    wrapped.average_steps.fill_(1)
    for balancer in (uw, wrapped):
        _zero(model)
        result = _backward(model, balancer, "params")
        weights = torch.stack([result.weights[t] for t in TASKS]).double()
        expected = sum(weights[i] * row for i, row in enumerate(_task_grads(model).values()))
        assert torch.allclose(_trunk_grad(model), expected, atol=1e-12)
    w = 0.5 * torch.exp(-uw.log_var.detach()).double()
    hat = (0.5 * torch.tensor([0.1, 0.9, 0.4]) + 0.5 * w) / (1 - 0.5**2)
    assert torch.allclose(weights, hat.double(), atol=1e-6)
    assert torch.allclose(wrapped.method.log_var.grad, uw.log_var.grad)  # UW's own parameters: unchanged


def test_cr_mogm_is_mgda_with_ema_point_nine_and_takes_every_on_top(small_mtl):
    model = small_mtl(num_tasks=3, dtype=torch.float64)
    pairs = [(get("cr_mogm", tasks=TASKS), get("mgda@ema=0.9", tasks=TASKS))]
    pairs.append((get("cr_mogm@every=2", tasks=TASKS), get("mgda@ema=0.9,every=2", tasks=TASKS)))
    for a, b in pairs:
        for _ in range(3):
            ra, rb = _backward(model, a, "reps"), _backward(model, b, "reps")
            assert all(torch.equal(ra.weights[t], rb.weights[t]) for t in TASKS)


@pytest.mark.parametrize("spec", ["mgda@every=3,ema=0.7", "uw@every=2,ema=0.5", "upgrad@every=2", "cr_mogm@every=2"])
def test_state_dict_round_trip_resumes_the_wrapper_exactly(small_mtl, spec):
    model = small_mtl(num_tasks=3)
    balancer = get(spec, tasks=TASKS)
    optimizer = torch.optim.SGD([*model.parameters(), *balancer.parameters()], lr=0.05)
    for _ in range(4):
        optimizer.zero_grad()
        _backward(model, balancer, "params")
        optimizer.step()
    restored = get(spec, tasks=TASKS)
    restored.load_state_dict(balancer.state_dict())
    grads = []
    for b in (balancer, restored):
        for _ in range(2):  # one reuse and one compute step, or two of either
            _zero(model)
            _backward(model, b, "params")
            grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert torch.equal(grads[0], grads[2]) and torch.equal(grads[1], grads[3])


def _wrappable(name: str) -> bool:
    cls = _REGISTRY[name]
    return not (issubclass(cls, GradientBalancer) and cls.aggregate is not GradientBalancer.aggregate)


@pytest.mark.parametrize("mode", ["params", "reps"])
@pytest.mark.parametrize("name", [n for n in available(aliases=False) if _wrappable(n)])
def test_every_weighting_method_trains_with_both_wrappers(small_mtl, name, mode):
    model = small_mtl(num_tasks=3)
    try:
        balancer = get(f"{name}@every=2", tasks=TASKS)
        smoothed = get(f"{name}@ema=0.5", tasks=TASKS)
    except ConfigError as error:  # the documented exceptions
        assert "runs its own backward" in str(error) or "no task weights" in str(error)
        return
    if mode == "reps" and not balancer.method.supports_shared_reps:  # the wrapper raises the method's error
        with pytest.raises(ValueError, match=f"{type(balancer.method).__name__} cannot act at a shared representation"):
            _backward(model, balancer, mode)
        return
    optimizer = torch.optim.SGD([*model.parameters(), *balancer.parameters(), *smoothed.parameters()], lr=0.05)
    for _ in range(4):
        for b in (balancer, smoothed):
            optimizer.zero_grad()
            if b.needs:  # what the Trainer hands methods that declare needs (an extra or a validation batch)
                b.context = model.context(TASKS)
            try:
                result = _backward(model, b, mode)
            except ConfigError as error:
                assert "reported no task weights" in str(error)  # DB-MTL and the like
                return
            optimizer.step()
            assert set(result.weights) == set(TASKS) and all(torch.isfinite(w) for w in result.weights.values())
        balancer.epoch_end()
        smoothed.epoch_end()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_reuse_at_a_representation_read_through_a_shared_layer_takes_the_two_pass_route(small_mtl):
    model = small_mtl(num_tasks=3, dtype=torch.float64)
    balancer = get("upgrad", tasks=TASKS, every=2)

    def forward():
        rep = model.trunk(model.x)
        shared_after = torch.tanh(rep)  # one node reads the representation for every task
        return [((head(shared_after) - y) ** 2).mean() for head, y in zip(model.heads, model.y)], rep

    for _ in range(2):  # the second step reuses the weights
        _zero(model)
        losses, rep = forward()
        result = balancer.backward(dict(zip(TASKS, losses)), shared_reps=rep)
    losses, _ = forward()
    w = [result.weights[t] for t in TASKS]
    rows = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.trunk.parameters()), retain_graph=True)])
        for loss in losses
    ]
    assert torch.allclose(_trunk_grad(model), sum(wi * row for wi, row in zip(w, rows)), atol=1e-12)
    for i, head in enumerate(model.heads):
        own = torch.autograd.grad(losses[i], list(head.parameters()), retain_graph=True)
        assert all(torch.allclose(p.grad, g, atol=1e-12) for p, g in zip(head.parameters(), own))


def test_reuse_with_shared_params_that_are_not_the_whole_shared_graph_keeps_the_compute_step_convention(small_mtl):
    model = small_mtl(num_tasks=3, dtype=torch.float64)
    balancer = get("mgda", tasks=TASKS, every=2)
    first = list(model.trunk[0].parameters())  # only the first trunk layer is declared shared
    for _ in range(2):  # the second step reuses the weights
        _zero(model)
        losses, _ = model()
        result = balancer.backward(dict(zip(TASKS, losses)), shared_params=iter(first))  # a one-shot iterator
    w = [result.weights[t] for t in TASKS]
    losses, _ = model()
    for params, weights in ((first, w), (list(model.trunk[2].parameters()), [1.0, 1.0, 1.0])):
        rows = [torch.autograd.grad(loss, params, retain_graph=True) for loss in losses]
        for k, p in enumerate(params):
            assert torch.allclose(p.grad, sum(wi * row[k] for wi, row in zip(weights, rows)), atol=1e-12)


def test_a_comma_list_of_specs_keeps_each_specs_wrapper_options():
    assert split_specs("ew,mgda@every=4,ema=0.9,upgrad@ema=0.5,pcgrad") == [
        "ew",
        "mgda@every=4,ema=0.9",
        "upgrad@ema=0.5",
        "pcgrad",
    ]


def test_reuse_on_the_quickstart_graph_weights_exactly_the_shared_parameters():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_every_method_trains_the_quickstart_graph import _quickstart_model

    from mtlkit.data.synthetic import QuickstartDataset

    torch.manual_seed(0)
    model = _quickstart_model().double()
    data = QuickstartDataset(n=16, seed=0)
    tasks = ["Task1", "Task2", "Task3"]
    X, Y = {"x": data.X.double()}, dict(zip(tasks, [t.double() for t in data.targets]))
    balancer = get("mgda@every=2", tasks=tasks)
    for _ in range(2):  # the second step reuses the weights
        _zero(model)
        result = balancer.backward(model.training_step(X, Y).losses, shared_params=model.shared_parameters())
    w = [result.weights[t] for t in tasks]
    shared = {id(p) for p in model.shared_parameters()}
    assert shared  # Embed1 and Embed2 serve two tasks each
    losses = model.training_step(X, Y).losses
    for p in model.parameters():
        rows = [torch.autograd.grad(losses[t], p, retain_graph=True, allow_unused=True)[0] for t in tasks]
        rows = [torch.zeros_like(p) if g is None else g for g in rows]
        expected = sum(wi * g for wi, g in zip(w, rows)) if id(p) in shared else sum(rows)
        assert torch.allclose(p.grad, expected, atol=1e-12)


def test_the_step_context_protocol_reaches_the_method_and_updates_follow_compute_steps_only(small_mtl):
    from mtlkit.weighting import LossBalancer

    class PostStep(LossBalancer):
        needs = frozenset({"post_step_losses"})

        def __init__(self, tasks=None):
            super().__init__(tasks)
            self.updates, self.context = [], None

        def combine(self, losses, index):
            return losses.sum(), torch.ones_like(losses)

        def update(self, losses):
            self.updates.append(self.context)

    model = small_mtl(num_tasks=3)
    balancer = wrap(PostStep(tasks=TASKS), every=2)
    assert balancer.needs == {"post_step_losses"}
    for step in range(4):
        balancer.context = f"step {step}"  # what the Trainer does before backward
        _backward(model, balancer, "params")
        balancer.update({})  # and after optimizer.step()
    assert balancer.method.updates == ["step 0", "step 2"]  # compute steps 0 and 2; 1 and 3 reuse
