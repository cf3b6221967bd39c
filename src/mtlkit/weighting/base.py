"""The interface every balancing method implements.

A balancer turns per-task losses into parameter gradients:

- `LossBalancer`s weight the losses (`combine`) and call backward once.
- `GradientBalancer`s need one gradient per task on the shared part. The Jacobian
  engine (`mtlkit.weighting.jacobian`) computes them in one batched backward, the
  method's pure core (`aggregate(J)`, or `weights(G)` from the T×T Gramian) combines
  them, and the result is written into the shared parameters' `.grad` — or, with
  `shared_reps`, pushed through the trunk from the representation. Task-specific
  parameters always receive their own task's (unweighted) gradient.

Zero and non-finite values:

- A non-finite task loss, or (gradient methods) a non-finite row of the task
  Jacobian or a non-finite combined update, raises `FloatingPointError` naming the task(s) (or the method),
  before any `.grad` of the shared part is written; nothing NaN reaches a parameter
  or a method's state. (Each check costs one host-device sync per step.)
- A task whose gradient is exactly zero (its loss is constant in the shared part, or
  its head is frozen) is a valid input to every method: methods that normalise by a
  norm add a small `eps`, and a method whose weights' normaliser vanishes returns
  zero weights rather than dividing by zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

import torch
from torch import Tensor, nn

from mtlkit.weighting.jacobian import gramian, jacobian, reachable_leaves

Losses = Union[Sequence[Tensor], Mapping[str, Tensor]]
Params = Union[Iterable[Tensor], Iterable[Iterable[Tensor]]]
Reps = Union[Tensor, Sequence[Tensor]]


@dataclass
class BalanceResult:
    """What a balancer decided for one step (all tensors detached).

    `loss` is the combined objective Σ w_t L_t and `scaled_losses` the w_t L_t; for
    methods that act on gradients without task weights, w_t = 1. The result unpacks
    as `(loss, scaled_losses)`, the pair that IMTL's `backward` returns.
    """

    loss: Tensor
    scaled_losses: dict[str, Tensor]
    weights: dict[str, Tensor] = field(default_factory=dict)
    stats: dict[str, Tensor] = field(default_factory=dict)

    def __iter__(self):
        return iter((self.loss, self.scaled_losses))


class Balancer(nn.Module):
    """Base class: `backward(losses, shared_params=..., shared_reps=...)` fills `.grad`.

    `tasks` names the tasks (a sequence of names) or counts them (an int); stateful
    methods size their state from it. Losses given as a list are matched to tasks by
    position, a dict by name. Losses with `requires_grad=False` are left out of the step.
    """

    def __init__(self, tasks: int | Sequence[str] | None = None) -> None:
        super().__init__()
        if isinstance(tasks, int):
            tasks = [str(i) for i in range(tasks)]
        self.task_names: list[str] | None = list(tasks) if tasks is not None else None

    @property
    def num_tasks(self) -> int:
        if self.task_names is None:
            raise ValueError(
                f"{type(self).__name__} keeps per-task state: build it with tasks=<number of tasks or task names>"
            )
        return len(self.task_names)

    def backward(
        self,
        losses: Losses,
        shared_params: Params | None = None,
        shared_reps: Reps | None = None,
    ) -> BalanceResult:
        """Run the backward pass for these task losses and return what was decided."""
        names, index, vec = self._active_losses(losses)
        if vec.numel() == 0:
            raise ValueError("no task loss requires grad: nothing to backpropagate")
        _check_finite_rows(vec.detach().unsqueeze(1), names, "loss")
        return self._backward(names, index, vec, shared_params, shared_reps)

    def epoch_end(self) -> None:
        """Hook called by the Trainer after each epoch (DWA and friends use it)."""

    def _backward(
        self,
        names: list[str],
        index: Tensor,
        losses: Tensor,
        shared_params: Params | None,
        shared_reps: Reps | None,
    ) -> BalanceResult:
        raise NotImplementedError

    def _active_losses(self, losses: Losses) -> tuple[list[str], Tensor, Tensor]:
        """Names, task indices and stacked values of the losses that require grad."""
        if isinstance(losses, Mapping):
            items = list(losses.items())
            if self.task_names is None:
                self.task_names = [name for name, _ in items]
            position = {name: i for i, name in enumerate(self.task_names)}
            unknown = [name for name, _ in items if name not in position]
            if unknown:
                raise KeyError(f"{type(self).__name__}: unknown task(s) {unknown}; known tasks: {self.task_names}")
            keyed = [(name, position[name], loss) for name, loss in items]
        else:
            losses = list(losses)
            if self.task_names is None:
                self.task_names = [str(i) for i in range(len(losses))]
            if len(losses) != len(self.task_names):
                raise ValueError(
                    f"{type(self).__name__}: got {len(losses)} losses for {len(self.task_names)} tasks"
                )
            keyed = [(self.task_names[i], i, loss) for i, loss in enumerate(losses)]
        active = [(n, i, loss) for n, i, loss in keyed if isinstance(loss, Tensor) and loss.requires_grad]
        for name, _, loss in active:
            if loss.numel() != 1:
                raise ValueError(f"the loss of task {name!r} must be a scalar, got shape {tuple(loss.shape)}")
        names = [n for n, _, _ in active]
        device = active[0][2].device if active else None
        index = torch.tensor([i for _, i, _ in active], dtype=torch.long, device=device)
        vec = torch.stack([loss.reshape(()) for _, _, loss in active]) if active else torch.empty(0)
        return names, index, vec


class LossBalancer(Balancer):
    """Methods that weight the losses and call backward once."""

    def combine(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """Return (objective to backpropagate, per-task weights) for the active tasks."""
        raise NotImplementedError

    def _backward(self, names, index, losses, shared_params, shared_reps) -> BalanceResult:
        objective, weights = self.combine(losses, index)
        objective.backward()
        scaled = (weights * losses).detach()
        return BalanceResult(
            loss=scaled.sum(),
            scaled_losses=dict(zip(names, scaled)),
            weights=dict(zip(names, weights.detach())),
        )


class GradientBalancer(Balancer):
    """Methods that combine one gradient per task.

    Implement `weights(G)` (T weights from the T×T Gramian) when the method needs only
    the Gramian, or `aggregate(J)` (the P-vector to apply, from the T×P Jacobian)
    otherwise. Stateful methods override `combine`, which also sees the losses.
    """

    def __init__(self, tasks: int | Sequence[str] | None = None, chunk_size: int | None = None) -> None:
        super().__init__(tasks)
        self.chunk_size = chunk_size

    def weights(self, G: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not define weights from a Gramian")

    def aggregate(self, J: Tensor) -> Tensor:
        return self.weights(gramian(J)) @ J

    def combine(self, J: Tensor, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor | None]:
        """Return (combined gradient, task weights or None) for this step.

        Methods defined by `weights(G)` report their weights; methods that override
        `aggregate` report None (their update is not a fixed combination of the rows).
        """
        if type(self).aggregate is GradientBalancer.aggregate:
            w = self.weights(gramian(J))
            return w @ J, w
        return self.aggregate(J), None

    def _backward(self, names, index, losses, shared_params, shared_reps) -> BalanceResult:
        g, weights = self._shared_backward(names, index, losses, shared_params, shared_reps)
        w = weights.detach() if weights is not None else torch.ones_like(losses)
        scaled = (w * losses).detach()
        return BalanceResult(
            loss=scaled.sum(),
            scaled_losses=dict(zip(names, scaled)),
            weights=dict(zip(names, w)) if weights is not None else {},
            stats={"grad_norm": g.detach().norm()},
        )

    def _shared_backward(self, names, index, losses, shared_params, shared_reps) -> tuple[Tensor, Tensor | None]:
        """Backward of `losses` with the combined task gradient on the shared part: (g, weights)."""
        if shared_reps is not None:
            return self._backward_through_reps(names, losses, index, shared_reps)
        if shared_params is not None:
            return self._backward_on_params(names, losses, index, shared_params)
        raise ValueError(f"{type(self).__name__} needs shared_params or shared_reps to take task gradients")

    def _combine_checked(self, J: Tensor, names: list[str], losses: Tensor, index: Tensor):
        hint = (
            "" if self.chunk_size == 1 else " With batched task backward passes, an inf inside one "
            "task's graph can reach the other tasks' rows: build the balancer with chunk_size=1 to isolate it."
        )
        _check_finite_rows(J, names, "gradient", hint)
        g, weights = self.combine(J, losses.detach(), index)
        if not bool(torch.isfinite(g).all()):
            raise FloatingPointError(
                f"{type(self).__name__} produced a non-finite update from finite task gradients "
                f"(tasks {names}); this is a bug in the method, please report it"
            )
        return g, weights

    def _backward_on_params(self, names: list[str], losses: Tensor, index: Tensor, shared_params: Params):
        leaves = reachable_leaves(losses)
        reached = {id(leaf) for leaf in leaves}
        # Shared parameters no active loss reaches keep `.grad` untouched (as after loss.backward()).
        params = [p for p in _flatten_params(shared_params) if id(p) in reached]
        shared = {id(p) for p in params}
        if not params:
            # These tasks do not use the shared part: nothing to balance, each gets its own gradient.
            torch.autograd.backward(losses.sum(), inputs=leaves)
            return losses.new_zeros(0), None
        J = jacobian(losses, params, chunk_size=self.chunk_size)
        g, weights = self._combine_checked(J, names, losses, index)
        specific = [leaf for leaf in leaves if id(leaf) not in shared]
        if specific:
            torch.autograd.backward(losses.sum(), inputs=specific)
        offset = 0
        for p in params:
            n = p.numel()
            update = g[offset : offset + n].view_as(p).to(p.dtype)
            p.grad = update if p.grad is None else p.grad + update
            offset += n
        return g, weights

    def _backward_through_reps(self, names: list[str], losses: Tensor, index: Tensor, shared_reps: Reps):
        reps = [shared_reps] if isinstance(shared_reps, Tensor) else list(shared_reps)
        for i, r in enumerate(reps):
            if not r.requires_grad:
                raise ValueError(
                    f"shared_reps[{i}] does not require grad: pass the representation the shared "
                    "trunk computed in this forward (not a detached copy)"
                )
        J = jacobian(losses, reps, chunk_size=self.chunk_size, retain_graph=True)
        g, weights = self._combine_checked(J, names, losses, index)
        # One backward: Σ_t L_t gives every head its own gradient but pushes Σ_t J_t
        # into the trunk; adding (g − Σ_t J_t) at the representation makes it g.
        correction = g - J.sum(0)
        grads, offset = [], 0
        for r in reps:
            grads.append(correction[offset : offset + r.numel()].view_as(r).to(r.dtype))
            offset += r.numel()
        torch.autograd.backward([losses.sum(), *reps], [None, *grads])
        return g, weights


def _check_finite_rows(M: Tensor, names: list[str], what: str, hint: str = "") -> None:
    """Raise FloatingPointError naming the tasks whose row of `M` is not finite."""
    finite = torch.isfinite(M).all(dim=1)
    if not bool(finite.all()):
        bad = [name for name, ok in zip(names, finite.tolist()) if not ok]
        raise FloatingPointError(
            f"the {what} of task(s) {bad} is not finite (inf or NaN); check these tasks' "
            f"loss functions, inputs and learning rate (no gradient was applied).{hint}"
        )


def _flatten_params(shared_params: Params) -> list[Tensor]:
    """Accept parameters or an iterable of parameter iterables (IMTL's `[model.parameters()]`)."""
    flat: list[Tensor] = []
    for item in shared_params:
        if isinstance(item, Tensor):
            flat.append(item)
        else:
            flat.extend(item)
    seen: set[int] = set()
    unique = []
    for p in flat:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            unique.append(p)
    if not unique:
        raise ValueError("shared_params holds no parameter that requires grad")
    return unique
