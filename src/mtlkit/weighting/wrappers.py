"""Wrappers over any balancing method that reports task weights: `every=k` and `ema=β`.

- `every=k` computes the weights on one step in k and reuses them on the k − 1 steps in
  between (Nash-MTL's `update_weights_every`, generalised). A reuse step takes no task
  Jacobian. For a gradient method the shared part gets Σ_t w_t ∇L_t and the heads their own,
  unweighted gradient (the library's convention): with `shared_reps`, in one backward of
  Σ_t L_t whose task shares are scaled by w_t where each task reads the representation;
  with `shared_params`, likewise where each task enters the part of the graph several tasks
  share, when the shared parameters are that part's leaves (else in one backward of
  Σ_t w_t L_t into the shared parameters and one restricted to the task-specific ones).
  For a loss method: one backward of Σ_t w_t L_t.
- `ema=β` replaces the method's weights w_k by their bias-corrected exponential moving
  average ŵ_k = m_k / (1 − β^k), m_k = β m_{k−1} + (1 − β) w_k (the smoothing of CR-MOGM,
  Zhou et al., NeurIPS 2022, with Adam's bias correction so that the first steps are not
  shrunk towards zero). For a gradient method the update becomes ŵ @ J; for a loss method
  the loss gets Σ_t (ŵ_t − w_t) L_t added (gradients held constant), so the losses are
  weighted by ŵ while the method's own parameters (UW's log-variances) keep their gradients.

Both options are spelled the same everywhere: `get("mgda", every=4, ema=0.9)`, the string
"mgda@every=4,ema=0.9" (Trainer `weighting=`, YAML `weighting:`, CLI `weighting=...`), or
`{name: mgda, every: 4}` in YAML. With both, the average moves on compute steps only.

Which methods: every registered method whose step is Σ_t w_t ∇L_t for task weights it
reports, through the standard backward of `GradientBalancer`/`LossBalancer`. The others
raise `ConfigError`: methods that transform the task gradients (GradDrop, TrimmedMean,
DB-MTL, AdaTask, MetaBalance on several shared parameter tensors: no weights to reuse or
average) and methods that run their own backward (IMTL-H). MoCo and ExcessMTL wrap: the
wrapped method sees the rows it sees unwrapped (its Jacobian, or at a representation its
batch rows), and a method that cannot act at a representation raises its own error
there, wrapped or not. A wrapped method
takes `every` once more ("cr_mogm@every=4" = "mgda@ema=0.9,every=4"). A stateful method updates
its state on compute steps only: on reuse steps its own parameters (UW's log-variances,
receive no gradient, GradNorm's weights do not move, a post-step
`update` (FAMO's) is not forwarded, and the step reports no `grad_norm` stat. What a method
declares in `needs`, and the `context` the Trainer sets, are forwarded to it.

Task subsets: a method acts on the tasks labelled in the batch. `every` reuses weights only
for the same set of tasks as the step that computed them; a batch labelling another set is a
compute step (and restarts the count). `ema` keeps one average and one step count per task,
updated only on steps that label the task.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.weighting.base import (
    Balancer,
    BalanceResult,
    Collectives,
    GradientBalancer,
    LossBalancer,
    _flatten_params,
    _sees_only_gramian,
    shared_reps_refused,
)
from mtlkit.weighting.jacobian import _reader_owners, leaves_above, reachable_leaves

# The wrapper options, with a one-line description each (`mtlkit list` prints them).
WRAPPERS = {
    "every": "every=k: compute the weights on one step in k, reuse them in between (no Jacobian)",
    "ema": "ema=β: bias-corrected exponential moving average of the weights (CR-MOGM's smoothing)",
}


def wrap(method: Balancer, every: int = 1, ema: float | None = None) -> Balancer:
    """`method` with its weights computed every `every` steps and/or smoothed by `ema` (see module doc)."""
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ConfigError(f"every must be a positive integer (1: every step), got {every!r}")
    if ema is not None and not (isinstance(ema, (int, float)) and 0 <= ema < 1):
        raise ConfigError(f"ema must be a number in [0, 1) (the averaging factor β), got {ema!r}")
    name = type(method).__name__
    if isinstance(method, GradientBalancer) and type(method).aggregate is not GradientBalancer.aggregate:
        raise ConfigError(
            f"{name} transforms the task gradients instead of weighting them, so it has no task weights "
            "to reuse (every) or average (ema); use the method without these options"
        )
    standard = type(method)._backward in (GradientBalancer._backward, LossBalancer._backward)
    if not standard and not (isinstance(method, _Wrapper) and ema is None):
        raise ConfigError(
            f"{name} runs its own backward pass: its step is not Σ_t w_t ∇L_t of the task weights it reports, "
            "so every/ema cannot reuse or average them; use the method without these options"
        )
    if method.task_names is None:
        raise ConfigError(f"{name}: build the method with tasks=<names or count> before wrapping it")
    if every == 1 and ema is None:
        return method
    smoothing = None if ema is None else float(ema)
    if isinstance(method, GradientBalancer):
        if _sees_only_gramian(type(method)):
            return GramianWrapper(method, every, smoothing)
        return GradientWrapper(method, every, smoothing)
    if isinstance(method, LossBalancer):
        return LossWrapper(method, every, smoothing)
    raise ConfigError(f"{name} is neither a GradientBalancer nor a LossBalancer, so every/ema cannot wrap it")


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """'mgda@every=4,ema=0.9' as ('mgda', {'every': 4, 'ema': 0.9}); a plain name has no options."""
    name, at, suffix = spec.partition("@")
    if not at:
        return spec, {}
    options: dict[str, Any] = {}
    for item in suffix.split(","):
        key, eq, text = (part.strip() for part in item.partition("="))
        if not eq or key not in WRAPPERS or key in options:
            raise ConfigError(
                f"weighting {spec!r}: after '@' come the wrapper options every=<int> and/or ema=<float>, "
                f"comma-separated, e.g. 'mgda@every=4,ema=0.9' (method options go in a mapping: "
                f"{{name: {name}, <option>: <value>}})"
            )
        try:
            options[key] = int(text) if key == "every" else float(text)
        except ValueError:
            kind = "an integer" if key == "every" else "a number"
            raise ConfigError(f"weighting {spec!r}: {key} must be {kind}, got {text!r}") from None
    return name, options


def split_specs(text: str) -> list[str]:
    """'ew,mgda@every=4,ema=0.9' as ['ew', 'mgda@every=4,ema=0.9']: a comma list of specs.

    An item with '=' and no '@' continues the previous spec's wrapper options.
    """
    specs: list[str] = []
    for item in text.split(","):
        if specs and "=" in item and "@" not in item:
            specs[-1] += "," + item
        else:
            specs.append(item)
    return specs


class _Wrapper(Balancer):
    """The weight memory and step logic shared by the gradient and loss wrappers."""

    method: Balancer
    every: int
    ema: float | None
    since_compute: Tensor  # buffers (see `_setup`)
    stored: Tensor
    stored_tasks: Tensor
    average: Tensor
    average_steps: Tensor

    def _setup(self, method: Balancer, every: int, ema: float | None) -> None:
        self.method, self.every, self.ema = method, every, ema
        T = method.num_tasks
        self.register_buffer("since_compute", torch.zeros((), dtype=torch.long))  # steps since the last compute
        self.register_buffer("stored", torch.zeros(T, dtype=torch.float64))  # the weights to reuse
        self.register_buffer("stored_tasks", torch.zeros(T, dtype=torch.bool))  # the tasks they were computed for
        self.register_buffer("average", torch.zeros(T, dtype=torch.float64))  # m_t of the moving average
        self.register_buffer("average_steps", torch.zeros(T, dtype=torch.long))  # k_t, per task
        self._computed = False  # whether the last step computed the weights (for `update`)
        claims: frozenset[str] = getattr(method, "properties", frozenset())
        self.properties = claims if ema is None else claims & {"expected_structure", "permutation_invariant"}

    def extra_repr(self) -> str:
        return f"every={self.every}, ema={self.ema}"

    def epoch_end(self) -> None:
        self.method.epoch_end()

    # The step-context protocol (what a method declares in `needs`, the `context` the Trainer
    # sets before a step, `update(losses)` after it) is the method's: forwarded to it.
    @property
    def needs(self) -> frozenset[str]:
        return frozenset(getattr(self.method, "needs", frozenset()))

    @property
    def context(self) -> Any:
        return getattr(self.method, "context", None)

    @context.setter
    def context(self, value: Any) -> None:
        self.method.context = value

    # `backward` sets the collectives on the wrapper; the method may run its own backward or
    # draw extra batches (Auto-λ, MoDo) and reduce with them: forwarded to it.
    @property
    def _collectives(self) -> Collectives | None:
        return self.__dict__.get("_wrapper_collectives")

    @_collectives.setter
    def _collectives(self, value: Collectives | None) -> None:
        self.__dict__["_wrapper_collectives"] = value
        if "method" in self._modules:  # not yet while the balancer's __init__ runs
            self.method._collectives = value

    def update(self, losses: Any) -> None:
        """The method's post-step update, after compute steps only (its state waits on reuse steps)."""
        if self._computed:
            self.method.update(losses)  # type: ignore[operator]

    def _backward(self, names, index, losses, shared_params, shared_reps) -> BalanceResult:
        if shared_reps is not None and not self.method.supports_shared_reps:
            raise shared_reps_refused(self.method)  # the method's own error, before any step
        active = torch.zeros_like(self.stored_tasks)
        active[index.to(active.device)] = True
        self._computed = not (int(self.since_compute) < self.every and bool(torch.equal(active, self.stored_tasks)))
        if not self._computed:
            self.since_compute += 1
            w = self.stored[index.to(self.stored.device)].to(device=losses[0].device, dtype=losses[0].dtype)
            return self._reuse(names, losses, w, shared_params, shared_reps)
        if self._standard_backward():
            result = super()._backward(names, index, losses, shared_params, shared_reps)  # with self.combine
        else:
            result = self.method._backward(names, index, losses, shared_params, shared_reps)
        self.stored_tasks.zero_()
        if result.weights:  # none when the tasks do not reach the shared part: nothing to reuse
            self.stored[index.to(self.stored.device)] = torch.stack([result.weights[n] for n in names]).to(self.stored)
            self.stored_tasks.copy_(active)
        self.since_compute.fill_(1)
        return result

    def _reuse(self, names, losses, w, shared_params, shared_reps) -> BalanceResult:
        """The step with the stored weights `w` (no Jacobian)."""
        raise NotImplementedError

    def _standard_backward(self) -> bool:
        return type(self.method)._backward in (GradientBalancer._backward, LossBalancer._backward)

    def _smooth(self, w: Tensor, index: Tensor) -> Tensor:
        """The bias-corrected moving average of the active tasks' weights, after adding `w`."""
        if self.ema is None:
            return w
        rows = index.to(self.average.device)
        self.average[rows] = self.ema * self.average[rows] + (1 - self.ema) * w.detach().to(self.average)
        self.average_steps[rows] += 1
        correction = 1 - self.ema ** self.average_steps[rows].to(self.average)
        return (self.average[rows] / correction).to(device=w.device, dtype=w.dtype)

    def _checked_weights(self, w: Tensor | None) -> Tensor:
        if w is None:
            raise ConfigError(
                f"{type(self.method).__name__} reported no task weights (it transforms the task gradients), "
                "so every/ema cannot apply to it; use the method without these options"
            )
        return w


class GradientWrapper(_Wrapper, GradientBalancer):
    """A gradient method with `every`/`ema` (build it with `wrap`).

    The method sees the task Jacobian (or, at a representation, its rows) exactly as
    unwrapped: the rows it takes at a representation (`rep_reduce`, `batch_rows_only`)
    are the method's own; a method defined by `weights(G)` is wrapped by `GramianWrapper`.
    """

    method: GradientBalancer

    def __init__(self, method: GradientBalancer, every: int, ema: float | None) -> None:
        GradientBalancer.__init__(self, method.task_names, chunk_size=method.chunk_size)
        self._setup(method, every, ema)

    @property  # type: ignore[override]
    def rep_reduce(self) -> str:
        return self.method.rep_reduce

    @rep_reduce.setter
    def rep_reduce(self, value: str) -> None:
        self.method.rep_reduce = value

    @property  # type: ignore[override]
    def batch_rows_only(self) -> bool:
        return self.method.batch_rows_only

    @batch_rows_only.setter
    def batch_rows_only(self, value: bool) -> None:
        self.method.batch_rows_only = value

    @property  # type: ignore[override]
    def weights_from_context(self) -> bool:
        return self.method.weights_from_context

    @weights_from_context.setter
    def weights_from_context(self, value: bool) -> None:
        self.method.weights_from_context = value

    def combine(self, J: Tensor, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        self.method.column_blocks = self.column_blocks  # set by the engine, which runs on the wrapper
        g, w = self.method.combine(J, losses, index)
        w = self._checked_weights(w)
        if self.ema is None:
            return g, w
        w = self._smooth(w, index)
        return w @ J, w

    def _reuse(self, names, losses, w, shared_params, shared_reps) -> BalanceResult:
        """Σ_t w_t ∇L_t into the shared part, Σ_t ∇L_t into the task-specific leaves: no Jacobian."""
        vec = torch.stack(losses)
        reps = None if shared_reps is None else [shared_reps] if isinstance(shared_reps, Tensor) else list(shared_reps)
        params = None if shared_params is None else _flatten_params(shared_params)  # may be a generator: once
        if reps is not None:
            done = _scaled_rep_backward(losses, reps, w)
        elif params is not None:
            done = _scaled_shared_backward(losses, params, w)
        else:
            raise ValueError(f"{type(self.method).__name__} needs shared_params or shared_reps to take task gradients")
        if not done:
            self._two_pass_backward(vec, losses, w, params, reps)
        collectives = self._collectives
        if collectives is not None and reps is None:  # the engine's contract: shared .grad global on return
            params = params or []
            reached = torch.tensor([float(p.grad is not None) for p in params], dtype=torch.float64)
            collectives.all_reduce_sum(reached, "jacobian")  # a parameter some rank's batch reached: on every rank
            for p, hits in zip(params, reached.tolist()):
                if hits and p.grad is None:
                    p.grad = torch.zeros_like(p)
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                flat = torch.cat([g.reshape(-1) for g in grads])
                collectives.all_reduce_sum(flat, "jacobian")
                for g, part in zip(grads, flat.div_(collectives.world_size).split([g.numel() for g in grads])):
                    g.copy_(part.view_as(g))
        scaled = (w * vec).detach()
        return BalanceResult(loss=scaled.sum(), scaled_losses=dict(zip(names, scaled)), weights=dict(zip(names, w)))

    def _two_pass_backward(self, vec: Tensor, losses, w: Tensor, params: list[Tensor] | None, reps) -> None:
        """Σ_t w_t L_t backpropagated into the shared leaves, then Σ_t L_t into the others."""
        leaves = reachable_leaves(vec)
        if reps is not None:
            specific = {id(leaf) for leaf in leaves_above(losses, reps)}
            shared = [leaf for leaf in leaves if id(leaf) not in specific]
        else:
            reached = {id(leaf) for leaf in leaves}
            shared = [p for p in params or () if id(p) in reached]
        shared_ids = {id(p) for p in shared}
        specific_leaves = [leaf for leaf in leaves if id(leaf) not in shared_ids]
        if shared:
            torch.autograd.backward((w * vec).sum(), inputs=shared, retain_graph=bool(specific_leaves))
        if specific_leaves:
            torch.autograd.backward(vec.sum(), inputs=specific_leaves)


class GramianWrapper(GradientWrapper):
    """A method defined by `weights(G)` with `every`/`ema`: it still sees J only through G."""

    def weights(self, G: Tensor) -> Tensor:
        return self.method.weights(G)


def _scaled_rep_backward(losses: list[Tensor], reps: list[Tensor], w: Tensor) -> bool:
    """One backward of Σ_t L_t in which task t's gradient at the representations is scaled by w_t.

    The hooks sit on the autograd nodes through which each task reads the representations
    (as in `rep_jacobian`), so the heads get their own gradient and the trunk Σ_t w_t ∂L_t/∂z.
    False (nothing done) when a reader serves several tasks or a representation is a leaf.
    """
    targets = [(r.grad_fn, r.output_nr) for r in reps]
    owner = _reader_owners(losses, targets)
    if owner is None:
        return False
    scales = w.tolist()
    readers = [(node, [i for i, edge in enumerate(node.next_functions) if edge in targets]) for node in owner]
    _backward_scaling_edges(losses, [(node, edges, scales[owner[node]]) for node, edges in readers])
    return True


def _scaled_shared_backward(losses: list[Tensor], shared_params: list[Tensor], w: Tensor) -> bool:
    """One backward of Σ_t L_t in which task t's gradient is scaled by w_t where it enters the shared graph.

    The shared graph is the part of the autograd graph that several tasks reach; the hooks
    sit on each task's own nodes that feed it. That gives the shared parameters Σ_t w_t ∇L_t
    when they are exactly the leaves of the shared graph (a trunk); otherwise (False,
    nothing done) the caller takes the two-pass route.
    """
    owner = _task_owners(losses)
    graph_shared = {id(node.variable) for node, t in owner.items() if t < 0 and hasattr(node, "variable")}
    reached = {id(node.variable) for node in owner if hasattr(node, "variable")}
    if graph_shared != {id(p) for p in shared_params if id(p) in reached}:
        return False
    scales, entries = w.tolist(), []
    for node, t in owner.items():
        if t >= 0:
            edges = [i for i, (child, _) in enumerate(node.next_functions) if child is not None and owner[child] < 0]
            if edges:
                entries.append((node, edges, scales[t]))
    _backward_scaling_edges(losses, entries)
    return True


def _backward_scaling_edges(losses: list[Tensor], entries: list[tuple[Any, list[int], float]]) -> None:
    """One backward of Σ_t L_t with the gradient along each (node, its input edges) scaled by `scale`."""
    handles = [node.register_hook(functools.partial(_scale_edges, edges, scale)) for node, edges, scale in entries]
    try:
        torch.stack(losses).sum().backward()
    finally:
        for handle in handles:
            handle.remove()


def _task_owners(losses: list[Tensor]) -> dict:
    """{autograd node: the one task whose loss reaches it, or −1 if several do}, in O(nodes + edges)."""
    owner: dict = {}
    for t, loss in enumerate(losses):
        stack = [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is None:
                continue
            seen = owner.get(node)
            if seen is None:
                owner[node] = t
                stack.extend(child for child, _ in node.next_functions)
            elif seen != t and seen >= 0:
                _mark_shared(node, owner)
    return owner


def _mark_shared(node, owner: dict) -> None:
    """Mark `node` and everything below it as reached by several tasks."""
    stack = [node]
    while stack:
        node = stack.pop()
        if node is None or owner.get(node) == -1:
            continue
        owner[node] = -1
        stack.extend(child for child, _ in node.next_functions)


def _scale_edges(edges: list[int], scale: float, grad_inputs: tuple, grad_outputs: tuple) -> tuple:
    grads = list(grad_inputs)
    for i in edges:
        if grads[i] is not None:
            grads[i] = grads[i] * scale
    return tuple(grads)


class LossWrapper(_Wrapper, LossBalancer):
    """A loss method with `every`/`ema` (build it with `wrap`)."""

    method: LossBalancer

    def __init__(self, method: LossBalancer, every: int, ema: float | None) -> None:
        LossBalancer.__init__(self, method.task_names)
        self._setup(method, every, ema)

    def combine(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        objective, w = self.method.combine(losses, index)
        if self.ema is None:
            return objective, w
        smoothed = self._smooth(w, index)
        # The method reports w_t = ∂objective/∂L_t: adding (ŵ − w)·L makes the losses' weights ŵ.
        return objective + ((smoothed - w).detach() * losses).sum(), smoothed

    def _reuse(self, names, losses, w, shared_params, shared_reps) -> BalanceResult:
        vec = torch.stack(losses)
        (w * vec).sum().backward()
        scaled = (w * vec).detach()
        return BalanceResult(loss=scaled.sum(), scaled_losses=dict(zip(names, scaled)), weights=dict(zip(names, w)))
