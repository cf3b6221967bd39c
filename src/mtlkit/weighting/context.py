"""What a balancer may ask for beyond this step's losses: one mechanism, declared by `needs`.

Most balancers see only the losses of the step's batch. A few need more, and say so in
their class attribute `needs` (a frozenset of the names below):

- `"extra_train_batch"`: further training batches, independent of this step's batch
  (MoDo's and SDMGrad's double sampling). `context.next_train_batch()` draws one from
  the same training loader as this step's batch (so the same tasks are labelled), from
  an order of its own: the epoch's plan is not consumed.
- `"valid_batch"`: batches of the validation loaders, in turn (Auto-λ's meta objective).
- `"post_step_losses"`: after `optimizer.step()`, the Trainer recomputes this step's
  losses on the same batch with one no-grad forward and calls `balancer.update(losses)`
  (FAMO's exact loop).

Before each `backward` the Trainer sets `balancer.context` to a `StepContext` (the step's
batch, the model's forward as `losses(batch)`, the draws above) and clears it after the
step; `mtlkit.training.step_context` is its side. In a hand-written loop, set
`balancer.context` yourself. Extra forwards leave the model's buffers (BatchNorm
statistics) as they were.

In a data-parallel run each process draws its own share of the extra batches, and
`losses(batch)` returns the global batch's losses whose gradients are this process's
share (`mtlkit.training.strategies.ddp`). Whatever a balancer computes from those
gradients (task Jacobians, a look-ahead step) it averages over the processes with
`global_mean` and the collectives its `backward` received, so that every process holds
the global batch's value, as one process would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mtlkit.weighting.jacobian import jacobian

if TYPE_CHECKING:
    from mtlkit.weighting.base import Collectives

EXTRA_TRAIN_BATCH = "extra_train_batch"
VALID_BATCH = "valid_batch"
POST_STEP_LOSSES = "post_step_losses"
NEEDS = frozenset({EXTRA_TRAIN_BATCH, VALID_BATCH, POST_STEP_LOSSES})


@dataclass(frozen=True)
class StepContext:
    """This step's batch and the model behind it, for balancers that declare `needs`.

    `losses(batch)` runs the model's training forward on a batch (the graph is kept
    unless called under `torch.no_grad()`) and returns the labelled tasks' losses.
    `next_train_batch()` / `next_valid_batch()` draw batches as `needs` describes
    (they raise if the balancer did not declare that need). `shared_parameters` are
    the parameters the balancer balances on (also when it acts at a representation),
    `parameters` every trainable parameter of the model, `lr` the optimizer's current
    learning rate (its first parameter group).
    """

    batch: Any
    losses: Callable[[Any], dict[str, Tensor]]
    next_train_batch: Callable[[], Any]
    next_valid_batch: Callable[[], Any]
    shared_parameters: Sequence[Tensor]
    parameters: Sequence[Tensor]
    lr: float

    def jacobian(self, batch: Any, names: Sequence[str], chunk_size: int | None = None) -> Tensor:
        """Rows ∂L_t/∂shared_parameters on `batch` for the tasks `names` (zero rows for tasks it does not label)."""
        losses = self.losses(batch)
        present = [name for name in names if name in losses]
        params = list(self.shared_parameters)
        if not params:
            raise ValueError("the model has no shared parameters to take the extra batch's task gradients on")
        width = sum(p.numel() for p in params)
        J = params[0].new_zeros(len(names), width)
        if present:
            rows = jacobian([losses[n].reshape(()) for n in present], params, chunk_size=chunk_size, retain_graph=False)
            J[[names.index(n) for n in present]] = rows.to(J.dtype)
        return J

    def train_jacobians(
        self, count: int, names: Sequence[str], chunk_size: int | None = None, collectives: Collectives | None = None
    ) -> Tensor:
        """count×T×P: `jacobian` on `count` further training batches, each the global batch's (`global_mean`)."""
        rows = torch.stack([self.jacobian(self.next_train_batch(), names, chunk_size) for _ in range(count)])
        return global_mean(rows, collectives, "jacobian")


def global_mean(tensor: Tensor, collectives: Collectives | None, kind: str) -> Tensor:
    """`tensor` averaged over the processes of a data-parallel run (one all-reduce); `tensor` itself without one.

    `kind` labels the collective's time (`Collectives.all_reduce_sum`).
    """
    if collectives is None:
        return tensor
    total = tensor.detach().clone().contiguous()
    collectives.all_reduce_sum(total, kind)
    return total / collectives.world_size


def global_mean_grads(
    grads: Sequence[Tensor | None], params: Sequence[Tensor], collectives: Collectives | None, kind: str
) -> list[Tensor | None]:
    """Gradients of `params` averaged over the processes (a missing one counts as zero); `grads` as they are without them."""
    if collectives is None:
        return list(grads)
    flat = torch.cat([(g if g is not None else p.new_zeros(p.shape)).reshape(-1) for g, p in zip(grads, params)])
    mean = global_mean(flat, collectives, kind)
    return [m.view_as(p).to(p.dtype) for m, p in zip(mean.split([p.numel() for p in params]), params)]


def needs_of(balancer: Any) -> frozenset[str]:
    """The `needs` a balancer declares (empty for most), checked against the known names."""
    needs = frozenset(getattr(balancer, "needs", frozenset()))
    unknown = needs - NEEDS
    if unknown:
        raise ValueError(f"{type(balancer).__name__} declares unknown needs {sorted(unknown)}; known: {sorted(NEEDS)}")
    return needs


def context_of(balancer: Any) -> StepContext:
    """The context the Trainer set on `balancer`, or a ValueError that says how to provide one."""
    context = getattr(balancer, "context", None)
    if context is None:
        name = type(balancer).__name__
        raise ValueError(
            f"{name} needs {sorted(needs_of(balancer))} each step: train it with mtlkit's Trainer, which "
            f"provides them, or set {name}.context to a mtlkit.weighting.context.StepContext before backward"
        )
    return context


def set_values(tensors: Sequence[Tensor], values: Sequence[Tensor]) -> None:
    """Point each tensor at new values without an in-place write.

    A look-ahead that moved the parameters in place would bump their version counters,
    and the step's own graph (which saved them) could no longer be backpropagated;
    swapping `.data` leaves that graph valid once the original values are back.
    """
    for tensor, value in zip(tensors, values):
        tensor.data = value
