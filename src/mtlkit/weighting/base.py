"""The interface every balancing method implements.

A balancer turns per-task losses into parameter gradients:

- `LossBalancer`s weight the losses (`combine`) and call backward once.
- `GradientBalancer`s need one gradient per task on the shared part. The Jacobian
  engine (`mtlkit.weighting.jacobian`) takes them on the shared parameters in one
  batched backward (`chunk_size` rows at a time), or, with `shared_reps`, at the
  representation in one pass over the heads; the method's pure core (`aggregate(J)`,
  or `weights(G)` from the T×T Gramian) combines them; the result is written into the
  shared parameters' `.grad`, or pushed through the trunk from the representation in
  one backward. Task-specific parameters always receive their own task's (unweighted)
  gradient; shared parameters that no active loss reaches keep their `.grad`.

Zero and non-finite values:

- A non-finite task loss, or (gradient methods) a non-finite row of the task Jacobian
  or a non-finite combined update, raises `FloatingPointError` naming the task(s) (or
  the method) before any `.grad` is written: nothing NaN reaches a parameter or a
  method's state. Each check is one reduction and one host-device sync per step.
  Under fp16 autocast with a `GradScaler`, overflowing steps therefore raise instead
  of being skipped; use bf16 or unscaled losses with gradient balancers.
- A task whose gradient is exactly zero (its loss is constant in the shared part, or
  its head is frozen) is a valid input to every method: methods that normalise by a
  norm add a small `eps`, and a method whose weights' normaliser vanishes returns
  zero weights rather than dividing by zero (tested for every registered method).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from mtlkit.weighting.jacobian import (
    batch_rows,
    gramian,
    gramian_root,
    heads_above,
    jacobian,
    params_gramian,
    reachable_leaves,
    rep_gramian,
    rep_jacobian,
)
from mtlkit.weighting.overlap import summed_blocks

Losses = Sequence[Tensor] | Mapping[str, Tensor]
Params = Iterable[Tensor] | Iterable[Iterable[Tensor]]
Reps = Tensor | Sequence[Tensor]


@dataclass
class BalanceResult:
    """What a balancer decided for one step (all tensors detached).

    `loss` is the combined objective Σ w_t L_t and `scaled_losses` the w_t L_t; for
    methods that act on gradients without task weights, w_t = 1. The result unpacks
    as `(loss, scaled_losses)`, the pair that IMTL's `backward` returns: for losses
    given as a list, `scaled_losses` is then a list in the same order, in which a
    loss left out of the step (no grad) appears unscaled.
    """

    loss: Tensor
    scaled_losses: dict[str, Tensor]
    weights: dict[str, Tensor] = field(default_factory=dict)
    stats: dict[str, Tensor] = field(default_factory=dict)
    positional: list[Tensor] | None = None  # the unpacked scaled losses, for list input

    def __iter__(self):
        return iter((self.loss, self.scaled_losses if self.positional is None else self.positional))

    def _in_order(self, every: list[str], losses: list) -> None:
        """For losses given as a list (every task's name, in order): `positional`, a left-out loss unscaled."""
        self.positional = [
            self.scaled_losses.get(name, loss.detach() if isinstance(loss, Tensor) else loss)
            for name, loss in zip(every, losses)
        ]


class _LazyResult(BalanceResult):
    """A `BalanceResult` with its tensors built on first read.

    The Trainer reads a result's tensors only on the steps it logs: the others build none.
    Holds the detached losses of the active tasks (stacked, or a list) and a copy of the
    weights (None: all 1, listed in `weights` only with `unit_weights_listed`), and builds
    from them what an eager result holds, with the same values.
    """

    def __init__(
        self,
        names: list[str],
        losses: Tensor | list[Tensor],
        weights: Tensor | None,
        stats: dict[str, Tensor] | None = None,
        unit_weights_listed: bool = True,
    ) -> None:
        self._names, self._losses, self._weights, self._listed = names, losses, weights, unit_weights_listed
        self.stats = {} if stats is None else stats
        self._order: tuple[list[str], dict] | None = None

    def __getattr__(self, name: str):  # only for attributes not set yet: loss, scaled_losses, weights
        if name not in ("loss", "scaled_losses", "weights"):
            raise AttributeError(name)
        vec = torch.stack(self._losses) if isinstance(self._losses, list) else self._losses
        w = vec.new_ones(vec.shape) if self._weights is None else self._weights
        scaled = w * vec
        self.loss, self.scaled_losses = scaled.sum(), dict(zip(self._names, scaled))
        self.weights = dict(zip(self._names, w)) if self._weights is not None or self._listed else {}
        return getattr(self, name)

    @property
    def positional(self) -> list[Tensor] | None:  # type: ignore[override]
        if self._order is None:
            return None
        every, left_out = self._order
        scaled = self.scaled_losses
        return [scaled[name] if name in scaled else left_out[name] for name in every]

    def _in_order(self, every: list[str], losses: list) -> None:
        # The active tasks' scaled losses are all in `scaled_losses`: keep the others' losses only.
        active = set(self._names)
        left_out = {n: x.detach() if isinstance(x, Tensor) else x for n, x in zip(every, losses) if n not in active}
        self._order = (every, left_out)


class Balancer(nn.Module):
    """Base class: `backward(losses, shared_params=..., shared_reps=...)` fills `.grad`.

    `tasks` names the tasks (a sequence of names) or counts them (an int); stateful
    methods size their state from it. Losses given as a list are matched to tasks by
    position, a dict by name. Losses with `requires_grad=False` are left out of the step.
    """

    _losses_checked = False  # True within `losses_checked()`

    # False for a method that cannot act at a shared representation: `backward` then refuses
    # `shared_reps` (`shared_reps_refused` says why and what to use instead).
    supports_shared_reps = True

    def __init__(self, tasks: int | Sequence[str] | None = None) -> None:
        super().__init__()
        if isinstance(tasks, int):
            tasks = [str(i) for i in range(tasks)]
        self.task_names: list[str] | None = list(tasks) if tasks is not None else None
        self._collectives: Collectives | None = None

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
        *,
        collectives: Collectives | None = None,
    ) -> BalanceResult:
        """Run the backward pass for these task losses and return what was decided.

        With `collectives` (a data-parallel run; the losses are this process's share of
        the global batch's, as `mtlkit.training` builds them), a gradient method acts on
        the global batch: on return the `.grad` of every parameter in `shared_params` is
        the global one on every process; the other gradients are this process's share,
        which the caller averages (or, when `collectives.reduces_in_backward`, the
        data-parallel wrapper averages during the engine's backward). Balancers that draw
        extra batches (`mtlkit.weighting.context`) average what they compute from them with it.
        """
        if not isinstance(losses, Mapping):
            losses = list(losses)
        every, names, index, active = self._active_losses(losses)
        if not active:
            raise ValueError("no task loss requires grad: nothing to backpropagate")
        if shared_reps is not None and not self.supports_shared_reps:
            raise shared_reps_refused(self)
        if not self._losses_checked:
            vec = torch.stack(active).detach()
            if not bool(torch.isfinite(vec).all()):
                _check_finite_rows(vec.unsqueeze(1), names, "loss")
        if collectives is None:  # `_collectives` is None outside a call: nothing to set (nn.Module's setattr is slow)
            result = self._backward(names, index, active, shared_params, shared_reps)
        else:
            self._collectives = collectives  # read by the engine (`_shared_backward`) during this call only
            try:
                result = self._backward(names, index, active, shared_params, shared_reps)
            finally:
                self._collectives = None
        if not isinstance(losses, Mapping):
            result._in_order(every, losses)
        return result

    @contextlib.contextmanager
    def losses_checked(self) -> Iterator[None]:
        """Within this block `backward` skips its check that the losses are finite (a device sync).

        For a caller that has just checked the same losses itself, as the Trainer does.
        """
        # A plain flag, set past nn.Module's (per-step costly) attribute bookkeeping.
        object.__setattr__(self, "_losses_checked", True)
        try:
            yield
        finally:
            object.__setattr__(self, "_losses_checked", False)

    def epoch_end(self) -> None:
        """Hook called by the Trainer after each epoch (DWA and friends use it)."""

    def _backward(
        self,
        names: list[str],
        index: Tensor,
        losses: list[Tensor],
        shared_params: Params | None,
        shared_reps: Reps | None,
    ) -> BalanceResult:
        """Backpropagate the active tasks' scalar losses (`index`: their task positions)."""
        raise NotImplementedError

    def _active_losses(self, losses: Losses) -> tuple[list[str], list[str], Tensor, list[Tensor]]:
        """The task name of each loss (in input order); names, task indices and the (0-d) losses of
        the tasks whose loss requires grad."""
        if isinstance(losses, Mapping):
            if self.task_names is None:
                self.task_names = list(losses)
            position = {name: i for i, name in enumerate(self.task_names)}
            every = list(losses)
            unknown = [name for name in every if name not in position]
            if unknown:
                raise KeyError(f"{type(self).__name__}: unknown task(s) {unknown}; known tasks: {self.task_names}")
            keyed = zip(every, [position[name] for name in every], losses.values())
        else:
            losses = list(losses)
            if self.task_names is None:
                self.task_names = [str(i) for i in range(len(losses))]
            if len(losses) != len(self.task_names):
                raise ValueError(f"{type(self).__name__}: got {len(losses)} losses for {len(self.task_names)} tasks")
            every = list(self.task_names)
            keyed = zip(every, range(len(losses)), losses)
        names: list[str] = []
        positions: list[int] = []
        active: list[Tensor] = []
        for name, i, loss in keyed:
            if isinstance(loss, Tensor) and loss.requires_grad:
                if loss.dim() != 0:
                    if loss.numel() != 1:
                        raise ValueError(f"the loss of task {name!r} must be a scalar, got shape {tuple(loss.shape)}")
                    loss = loss.reshape(())
                names.append(name)
                positions.append(i)
                active.append(loss)
        return every, names, self._task_index(positions, active[0].device if active else None), active

    def _task_index(self, positions: list[int], device: torch.device | None) -> Tensor:
        """`positions` as a tensor on `device`, kept for the next steps with the same active tasks."""
        # In the instance's own dict: also there for a balancer pickled before it existed.
        indices: dict[tuple[tuple[int, ...], torch.device | None], Tensor] = self.__dict__.setdefault("_indices", {})
        key = (tuple(positions), device)
        index = indices.get(key)
        if index is None:
            index = torch.tensor(positions, dtype=torch.long, device=device)
            if len(indices) < 64:  # the subsets of tasks a run meets: a few, one per kind of batch
                indices[key] = index
        return index


class LossBalancer(Balancer):
    """Methods that weight the losses and call backward once."""

    # True for a method whose weights are constant ones (EW): its backward is that of Σ_t L_t,
    # without `combine`. A subclass that overrides `combine` is False unless it says otherwise.
    unit_weights = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "combine" in vars(cls) and "unit_weights" not in vars(cls):
            cls.unit_weights = False

    def combine(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """Return (objective to backpropagate, per-task weights) for the active tasks."""
        raise NotImplementedError

    def _backward(self, names, index, losses, shared_params, shared_reps) -> BalanceResult:
        # One backward of the weighted losses: a data-parallel wrapper (DDP) averages its gradients.
        if self.unit_weights:  # the same gradients as `combine`'s Σ_t 1·L_t, in fewer operations
            (losses[0] if len(losses) == 1 else torch.stack(losses).sum()).backward()
            return _LazyResult(names, [loss.detach() for loss in losses], None)
        vec = torch.stack(losses)
        objective, weights = self.combine(vec, index)
        objective.backward()
        # A copy of the weights: a method may update the tensor it returned in place later.
        return _LazyResult(names, vec.detach(), weights.detach().clone())


class Collectives(Protocol):
    """The cross-process operations the backward engine needs to act on the global batch of a data-parallel run.

    A training strategy (`mtlkit.training.strategies`) passes one to `Balancer.backward`;
    outside a multi-process run there is none. Optionally, collectives whose attribute
    `overlaps_jacobian` is True, with a method `start_all_reduce_sum(tensor, kind)` that
    starts an in-place sum and returns the function that waits for it, get J's blocks
    on shared parameters all-reduced while the backward runs (`mtlkit.weighting.overlap`).
    """

    @property
    def world_size(self) -> int:
        """The number of processes whose local batches make up the global batch."""

    @property
    def rank(self) -> int:
        """This process's place among them (0 … world_size − 1), the order of `all_gather`'s output."""

    @property
    def shards_jacobian(self) -> bool:
        """True when a reduce-scatter costs less than an all-reduce of the same data (NCCL): methods
        defined by weights(G) then take the global Gramian from slices of J (`_combine_sharded`)
        instead of averaging the whole J."""

    @property
    def reduces_in_backward(self) -> bool:
        """True when the model's forward ran through a wrapper (DDP) that averages every gradient
        reaching the model's parameters in the next backward: the engine then runs one backward
        for all of them (at a representation), and writes none itself."""

    def all_reduce_sum(self, tensor: Tensor, kind: str) -> None:
        """Replace `tensor` (in place) by its sum over the processes; `kind` labels the time spent."""

    def reduce_scatter_sum(self, output: Tensor, input: Tensor, kind: str) -> None:
        """`output` on process r: the r-th of world_size equal slices of `input` (1-D), summed over the processes."""

    def all_gather(self, output: Tensor, input: Tensor, kind: str) -> None:
        """`output` (1-D): every process's `input` (1-D, equal sizes), concatenated in rank order."""


class GradientBalancer(Balancer):
    """Methods that combine one gradient per task.

    Implement `weights(G)` (T weights from the T×T Gramian) when the method needs only
    the Gramian, or `aggregate(J)` (the P-vector to apply, from the T×P Jacobian)
    otherwise. Stateful methods override `combine`, which also sees the losses.

    `chunk_size` bounds the rows of one batched backward on the shared parameters
    (1: one plain backward per task, for graphs vmap cannot batch). With None (the default)
    the engine chooses: methods defined by `weights(G)` take G layer by layer without
    holding J (`mtlkit.weighting.jacobian.params_gramian`), the others J in one batched
    backward or one backward per task. A given `chunk_size` always takes J that many rows
    at a time (J is then held, also for methods that need only G).

    `rep_reduce` (with `shared_reps`; set it on the balancer, or pass it to
    `mtlkit.weighting.get`) says which rows at the representation give the weights:
    "sample" (default) keeps one row block per sample, T×(B·D), the exact task Jacobian
    at the representation; "batch" sums each task's gradient over the batch first, T×D,
    as LibMTL's `rep_grad=True` does. Either way the weights then combine the per-sample
    rows that go through the trunk. "batch" needs a method defined by `weights(G)`; the two
    give different weights (benchmarks/README.md compares them). Heads starting with
    `nn.Linear` give either Gramian from their factors, without the rows (`rep_gramian`).
    A method whose state follows the coordinates of its task gradients across steps (MoCo,
    ExcessMTL) sets `batch_rows_only`: per-sample rows change meaning with every batch, so at
    a representation it takes "batch" rows only (its default) and reports weights for them.
    """

    rep_reduce: str = "sample"
    # True when `combine`'s weights do not depend on this step's task gradients (MoDo, SDMGrad take
    # them from the step context's other batches): under torch.distributed at a representation,
    # every process then applies the same weights to its own rows.
    weights_from_context: bool = False
    batch_rows_only = False
    # Set by the engine before `combine` on the shared parameters: for each block of J's columns,
    # in order, (the position of its tensor in `shared_params`, its entry count); a step whose
    # losses reach only some shared tensors has only their blocks. None at a representation.
    # (MetaBalance acts per parameter tensor.)
    column_blocks: list[tuple[int, int]] | None = None

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
            w = self._gramian_weights(gramian(J), losses, index)
            return w @ J, w
        return self.aggregate(J), None

    def _gramian_weights(self, G: Tensor, losses: Tensor, index: Tensor) -> Tensor:
        """The weights `combine` applies to J, from its Gramian, for a method defined by `weights(G)`.

        Methods whose weights also depend on the losses or on which tasks are active (MGDA's
        loss normalisation, UPGrad's preference) override this rather than `combine`.
        """
        return self.weights(G)

    def _backward(self, names, index, losses, shared_params, shared_reps) -> BalanceResult:
        g, weights = self._shared_backward(names, index, losses, shared_params, shared_reps)
        return gradient_step_result(names, losses, weights, g.detach().norm())

    def _shared_backward(self, names, index, losses, shared_params, shared_reps) -> tuple[Tensor, Tensor | None]:
        """Backward of `losses` with the combined task gradient on the shared part: (g, weights).

        The engine of every gradient method; it uses the collectives given to `backward`.
        """
        collectives = self._collectives
        if shared_reps is not None:
            return self._backward_through_reps(names, losses, index, shared_reps, collectives)
        if shared_params is not None:
            return self._backward_on_params(names, losses, index, shared_params, collectives)
        raise ValueError(f"{type(self).__name__} needs shared_params or shared_reps to take task gradients")

    def _combine_checked(self, J: Tensor, names: list[str], losses: list[Tensor], index: Tensor, hint: str = ""):
        _check_finite_rows(J, names, "gradient", hint)
        g, weights = self.combine(J, torch.stack(losses).detach(), index)
        if not bool(torch.isfinite(g.sum())):
            raise FloatingPointError(
                f"{type(self).__name__} produced a non-finite update from finite task gradients "
                f"(tasks {names}); this is a bug in the method, please report it"
            )
        return g, weights

    def _backward_on_params(
        self,
        names: list[str],
        losses: list[Tensor],
        index: Tensor,
        shared_params: Params,
        collectives: Collectives | None,
    ):
        vec = torch.stack(losses)
        leaves = reachable_leaves(vec)
        reached = {id(leaf) for leaf in leaves}
        # Shared parameters no active loss reaches keep `.grad` untouched (as after loss.backward()).
        # With collectives every process takes all of them (zero columns where unreached), so
        # that the Jacobians line up; the global J then drops what no process reached.
        given = _flatten_params(shared_params)
        params = [p for p in given if id(p) in reached or collectives is not None]
        if params and collectives is None and self.chunk_size is None and _sees_only_gramian(type(self)):
            # The Gramian path (see mtlkit.weighting.jacobian): G without holding J, then one weighted backward.
            specific = [leaf for leaf in leaves if all(leaf is not p for p in params)]
            G, apply = params_gramian(losses, params, specific)
            _check_finite_rows(G.diagonal().unsqueeze(1), names, "gradient")
            _, weights = self._combine_checked(gramian_root(G), names, losses, index)
            return apply(weights), weights
        J, combined = None, None
        position = {id(p): i for i, p in enumerate(given)}
        overlapped = _overlapped_blocks(self, losses, params, reached, collectives)
        if overlapped is not None:  # J's blocks all-reduced during the backward that made them
            N = collectives.world_size  # type: ignore[union-attr]
            combined, params = self._combine_blocks(*overlapped, names, losses, index, N, position)
        elif params:
            J = jacobian(losses, params, chunk_size=self.chunk_size)
        if collectives is not None and J is not None:  # J is None only without shared parameters
            flags = [id(p) in reached for p in params]
            if collectives.shards_jacobian and _sees_only_gramian(type(self)):
                combined, params = self._combine_sharded(J, params, flags, names, losses, index, collectives)
            else:
                J, params = _global_jacobian(J, params, flags, collectives)
        shared = {id(p) for p in params}
        self.column_blocks = [(position[id(p)], p.numel()) for p in params]
        if combined is None:
            if J is None or not params:  # (J is None implies no params)
                # These tasks do not use the shared part: nothing to balance, each gets its own gradient.
                torch.autograd.backward(vec.sum(), inputs=leaves)
                return vec.new_zeros(0), None
            hint = (
                ""
                if self.chunk_size == 1
                else " With batched task backward passes, an inf inside one "
                "task's graph can reach the other tasks' rows: build the balancer with chunk_size=1 to isolate it."
            )
            combined = self._combine_checked(J, names, losses, index, hint)
        g, weights = combined
        specific = [leaf for leaf in leaves if id(leaf) not in shared]
        if specific:
            torch.autograd.backward(vec.sum(), inputs=specific)
        offset = 0
        for p in params:
            n = p.numel()
            update = g[offset : offset + n].view_as(p).to(p.dtype)
            p.grad = update if p.grad is None else p.grad + update
            offset += n
        return g, weights

    def _combine_blocks(
        self,
        blocks: list[Tensor],
        used: list[bool],
        params: list[Tensor],
        names: list[str],
        losses: list[Tensor],
        index: Tensor,
        N: int,
        position: dict[int, int],
    ) -> tuple[tuple[Tensor, Tensor | None] | None, list[Tensor]]:
        """From J's per-parameter blocks summed over N processes: ((g, weights), the parameters some process reached).

        A method that sees J only through G gets G = Σ_b b bᵀ / N² and g = wᵀJ block by
        block; any other gets the mean J itself. `position`: each parameter's place in
        `shared_params`, for `column_blocks`.
        """
        blocks = [b for b, u in zip(blocks, used) if u]
        params = [p for p, u in zip(params, used) if u]
        if not params:
            return None, []
        self.column_blocks = [(position[id(p)], p.numel()) for p in params]
        if not _sees_only_gramian(type(self)):
            J = torch.cat(blocks, dim=1).div_(N)
            return self._combine_checked(J, names, losses, index), params
        G = torch.stack([b @ b.T for b in blocks]).sum(0) / N**2
        _check_finite_rows(G.diagonal().unsqueeze(1), names, "gradient")
        # Any matrix with Gramian G stands in for the global J: the method sees G only.
        _, weights = self._combine_checked(gramian_root(G), names, losses, index)
        w = weights.to(blocks[0].dtype) / N
        g = torch.cat([w @ b for b in blocks])
        if not bool(torch.isfinite(g.sum())):
            raise FloatingPointError(
                f"{type(self).__name__} produced a non-finite update from finite task gradients "
                f"(tasks {names}); this is a bug in the method, please report it"
            )
        return (g, weights), params

    def _combine_sharded(
        self,
        J: Tensor,
        params: list[Tensor],
        reached: list[bool],
        names: list[str],
        losses: list[Tensor],
        index: Tensor,
        collectives: Collectives,
    ) -> tuple[tuple[Tensor, Tensor] | None, list[Tensor]]:
        """For a method that sees J only through G: ((g, weights), the parameters some process reached).

        Process r receives the global J's r-th slice of columns (one reduce-scatter of T×P),
        its partial Gramian J_r J_rᵀ is summed over processes (one T×T all-reduce, which also
        carries the reached flags), every process takes the same weights w from G, and the
        slices of g = wᵀJ are gathered (one all-gather of P). Against averaging the whole J
        (all-reduce of T×P), this moves about half the bytes and splits the Gramian's work.
        """
        N = collectives.world_size
        T, P = J.shape
        width = -(-P // N)
        padded = J.new_zeros(T, N * width)
        padded[:, :P] = J
        shard = J.new_empty(T, width)
        chunks = padded.view(T, N, width).transpose(0, 1).contiguous()  # process r's columns: chunks[r]
        collectives.reduce_scatter_sum(shard.view(-1), chunks.view(-1), "jacobian")
        shard /= N
        flat = torch.cat([(shard @ shard.T).reshape(-1), torch.tensor(reached, dtype=J.dtype, device=J.device)])
        collectives.all_reduce_sum(flat, "gramian")
        G = flat[: T * T].view(T, T)
        used = (flat[T * T :] > 0).tolist()
        if not any(used):
            return None, []
        _check_finite_rows(G.diagonal().unsqueeze(1), names, "gradient")
        # Any matrix with Gramian G stands in for the global J: the method sees G only.
        _, weights = self._combine_checked(gramian_root(G), names, losses, index)
        g = J.new_empty(N * width)
        collectives.all_gather(g, weights.to(shard.dtype) @ shard, "update")
        g = g[:P]
        if not all(used):
            g = torch.cat([piece for piece, u in zip(g.split([p.numel() for p in params]), used) if u])
        if not bool(torch.isfinite(g.sum())):
            raise FloatingPointError(
                f"{type(self).__name__} produced a non-finite update from finite task gradients "
                f"(tasks {names}); this is a bug in the method, please report it"
            )
        return (g, weights), [p for p, u in zip(params, used) if u]

    def _backward_through_reps(
        self,
        names: list[str],
        losses: list[Tensor],
        index: Tensor,
        shared_reps: Reps,
        collectives: Collectives | None,
    ):
        if self.column_blocks is not None:  # (nn.Module's setattr costs a few µs a step)
            self.column_blocks = None
        reps = [shared_reps] if isinstance(shared_reps, Tensor) else list(shared_reps)
        for i, r in enumerate(reps):
            if not r.requires_grad:
                raise ValueError(
                    f"shared_reps[{i}] does not require grad: pass the representation the shared "
                    "trunk computed in this forward (not a detached copy)"
                )
        # Two passes: one over the heads (per-task rows at the representation by hooks, or,
        # for heads that start with a matrix product, the factors of their Gramian; and the
        # heads' own gradients), one through the trunk from g. A batched pass would push T
        # rows (T−1 of them zero) through every head.
        one_backward = collectives is not None and collectives.reduces_in_backward
        batch = self.rep_reduce != "sample" or self.batch_rows_only
        if batch:  # LibMTL's rep_grad: weights from the batch-summed rows, applied to the per-sample rows
            _check_rep_reduce(self)
        readers, above = heads_above(losses, reps)
        specific = [] if one_backward else above
        plain = self._combines_gramian() and collectives is None and not self.batch_rows_only
        found = (
            rep_gramian(losses, reps, also=specific, readers=readers, reduce="batch" if batch else "sample")
            if plain
            else None
        )
        if found is not None:
            G, times, specific_grads = found
            weights = self._rows_gramian_weights(G, names, losses, index)
            g = _checked_update(self, times(weights), names)
        else:
            J, specific_grads = rep_jacobian(losses, reps, also=specific, retain_graph=one_backward, readers=readers)
            if batch:
                rows = batch_rows(J, reps)
                if collectives is not None:  # the global batch's rows: sums add up (see _combine_global_gramian)
                    rows = rows.contiguous()
                    collectives.all_reduce_sum(rows, "jacobian")
                    rows = rows / collectives.world_size
                _, weights = self._combine_checked(rows, names, losses, index)
                g = weights @ J
            elif collectives is not None:
                g, weights = self._combine_global_gramian(J, names, losses, index, collectives, reps)
            elif plain:
                weights = self._rows_gramian_weights(gramian(J), names, losses, index)
                g = _checked_update(self, weights.to(J.dtype) @ J, names)
            else:
                g, weights = self._combine_checked(J, names, losses, index)
        for leaf, grad in zip(specific, specific_grads):
            if grad is not None:
                leaf.grad = grad if leaf.grad is None else leaf.grad + grad
        grads, offset = [], 0
        for r in reps:
            grads.append(g[offset : offset + r.numel()].view_as(r).to(r.dtype))
            offset += r.numel()
        if one_backward:
            # Every gradient in one backward of Σ_t L_t whose gradient at the representation is
            # replaced by g: the heads get their own tasks' gradients, the trunk g, and a
            # data-parallel wrapper (DDP) averages all of them while the backward runs.
            handles = [r.register_hook(functools.partial(_replace, grad)) for r, grad in zip(reps, grads)]
            try:
                torch.stack(losses).sum().backward()
            finally:
                for handle in handles:
                    handle.remove()
        elif reps:
            torch.autograd.backward(reps, grads)
        return g, weights

    def _combines_gramian(self) -> bool:
        """Whether `combine` is w(G) @ J with w from `_gramian_weights` (the class overrides neither)."""
        cls = type(self)
        return cls.combine is GradientBalancer.combine and cls.aggregate is GradientBalancer.aggregate

    def _rows_gramian_weights(self, G: Tensor, names: list[str], losses: list[Tensor], index: Tensor) -> Tensor:
        """The weights from the Gramian of the task rows, its finiteness checked on the diagonal.

        A row holding inf or NaN has a non-finite squared norm: one check of T values instead of T×N.
        """
        norms = G.diagonal().tolist()  # T numbers on the host, where the solvers want G anyway
        bad = [name for name, x in zip(names, norms) if not math.isfinite(x)]
        if bad:
            raise _non_finite(bad, "gradient")
        return self._gramian_weights(G, torch.stack(losses).detach(), index)

    def _combine_global_gramian(
        self,
        J: Tensor,
        names: list[str],
        losses: list[Tensor],
        index: Tensor,
        collectives: Collectives,
        reps: list[Tensor],
    ):
        """In a data-parallel run at a representation: weights from the global batch's Gramian, applied to J.

        Rows of J are per-sample here, so processes cannot average them; their Gramians add
        up instead. Exact for methods that see J only through G: those defined by `weights(G)`.
        A process's rows are world_size × its share (the losses' surrogate scaling), so the
        global Gramian is Σ_r G_r / world_size². Methods that need the rows themselves get
        the global rows gathered instead (`_combine_gathered`).
        """
        if self.weights_from_context:  # the same weights on every process: applied to this process's rows
            return self._combine_checked(J, names, losses, index)
        if not _sees_only_gramian(type(_innermost(self))):  # a wrapper looks Gramian-only: ask its method
            return self._combine_gathered(J, names, losses, index, collectives, reps)
        G = gramian(J).contiguous()
        collectives.all_reduce_sum(G, "gramian")
        G = G / collectives.world_size**2
        _check_finite_rows(G.diagonal().unsqueeze(1), names, "gradient")
        # Any matrix with Gramian G stands in for the global J: the method sees G only.
        _, weights = self._combine_checked(gramian_root(G).to(J.dtype), names, losses, index)
        return weights @ J, weights

    def _combine_gathered(
        self,
        J: Tensor,
        names: list[str],
        losses: list[Tensor],
        index: Tensor,
        collectives: Collectives,
        reps: list[Tensor],
    ) -> tuple[Tensor, Tensor | None]:
        """The method on the global batch's rows at the representation; this process's slice of its update.

        For methods that need the task gradients themselves (GradDrop, TrimmedMean, DB-MTL,
        MetaBalance). Every process gathers every process's rows (one all-gather of the
        per-sample counts, one of T × its columns, padded to the largest process's), so all
        of them apply the method to the same global J, with the same state and random draws,
        and keep the columns of their own samples. Samples are ordered as one process holds
        the global batch when the loaders are split like `DistributedSampler` (sample j of
        process r comes j·world_size + r, a representation's leading dimension indexing its
        samples): per-column random draws and state then match one process's. The rows and
        the update are world_size × the global ones on this process's samples (the losses'
        surrogate scaling), as in the Gramian path.
        """
        N, rank, T = collectives.world_size, collectives.rank, J.shape[0]
        if not reps:  # no columns: the global J is this one
            return self._combine_checked(J, names, losses, index)
        # Each representation's (samples, values per sample) on every process: one small all-gather.
        shapes = [(r.shape[0], math.prod(r.shape[1:])) if r.dim() else (1, 1) for r in reps]
        every_shape = J.new_empty(N * len(reps) * 2, dtype=torch.long)
        collectives.all_gather(every_shape, J.new_tensor(shapes, dtype=torch.long).view(-1), "rows")
        layouts = every_shape.view(N, len(reps), 2).tolist()  # [process][representation] = [samples, width]
        for k, (_, width) in enumerate(shapes):
            found = [layout[k][1] for layout in layouts]
            if found != [width] * N:
                raise ValueError(
                    f"{type(self).__name__}: shared_reps[{k}] holds {found} values per sample on processes "
                    f"0…{N - 1}: every process's representation must have the same shape past its leading "
                    "(sample) dimension"
                )
        # T × every process's columns, padded to the largest process's.
        columns = [sum(n * w for n, w in layout) for layout in layouts]
        most = max(columns)
        local = J if J.shape[1] == most else torch.cat([J, J.new_zeros(T, most - J.shape[1])], dim=1)
        gathered = J.new_empty(N * T * most)
        collectives.all_gather(gathered, local.reshape(-1), "rows")
        pieces = [  # [process][representation]: T × samples × width, the padding dropped
            [part.view(T, n, w) for part, (n, w) in zip(block[:, :used].split([n * w for n, w in layout], 1), layout)]
            for block, used, layout in zip(gathered.view(N, T, most), columns, layouts)
        ]
        global_blocks, mine = [], []
        for k, (_, width) in enumerate(shapes):
            sizes = [layout[k][0] for layout in layouts]
            # One process holds sample j of process r at j·N + r (the strided split of the shards):
            # `order` takes the processes' samples, concatenated by process, into that order.
            order = torch.cat([torch.arange(n) * N + r for r, n in enumerate(sizes)]).argsort().to(J.device)
            rows = torch.cat([piece[k] for piece in pieces], dim=1)[:, order]
            global_blocks.append(rows.reshape(T, -1))
            start = sum(sizes[:rank])
            mine.append((order.argsort()[start : start + sizes[rank]], rows.shape[1], width))  # our samples' places
        g_global, weights = self._combine_checked(torch.cat(global_blocks, dim=1).div_(N), names, losses, index)
        parts = g_global.split([block.shape[1] for block in global_blocks])
        g = [part.view(total, width)[where].reshape(-1) for part, (where, total, width) in zip(parts, mine)]
        return torch.cat(g).mul_(N), weights


def _replace(value: Tensor, grad: Tensor) -> Tensor:
    return value


def gradient_step_result(
    names: list[str], losses: list[Tensor], weights: Tensor | None, grad_norm: Tensor
) -> BalanceResult:
    """A gradient method's `BalanceResult`: the losses scaled by its weights (1 without them), the update's norm.

    Built on first read (a copy of the weights: a method may update the tensor it returned in place later).
    """
    return _LazyResult(
        names,
        [loss.detach() for loss in losses],
        None if weights is None else weights.detach().clone(),
        {"grad_norm": grad_norm.reshape(())},
        unit_weights_listed=False,
    )


def _checked_update(balancer: GradientBalancer, g: Tensor, names: list[str]) -> Tensor:
    """`g`, after checking that the combined update of finite task gradients is finite."""
    if not bool(torch.isfinite(g.sum())):
        raise FloatingPointError(
            f"{type(balancer).__name__} produced a non-finite update from finite task gradients "
            f"(tasks {names}); this is a bug in the method, please report it"
        )
    return g


def _check_rep_reduce(balancer: GradientBalancer) -> None:
    name = type(balancer).__name__
    if balancer.rep_reduce != "batch":
        if balancer.batch_rows_only:
            raise ValueError(
                f"{name} keeps state in the coordinates of its task gradients across steps, and per-sample rows "
                f"at a representation change meaning with every batch: use rep_reduce='batch' (its default), "
                f"not {balancer.rep_reduce!r}"
            )
        raise ValueError(f"{name}: rep_reduce must be 'sample' or 'batch', got {balancer.rep_reduce!r}")
    if not (_sees_only_gramian(type(balancer)) or balancer.batch_rows_only):
        raise ValueError(
            f"{name} needs the task gradients themselves, so it cannot take weights from batch-summed rows: "
            "use rep_reduce='sample' or a method defined by weights(G) (mgda, upgrad, imtl_g, cagrad, ...)"
        )


def shared_reps_refused(balancer: Balancer) -> ValueError:
    """The error for a method that cannot act at a shared representation (`supports_shared_reps = False`)."""
    return ValueError(
        f"{type(balancer).__name__} cannot act at a shared representation: its update is not a weighted sum of "
        "the task gradients but is built entry by entry from per-task state it keeps for each shared parameter "
        "(see its docstring), and a representation has no such entries. Take the task gradients on the shared "
        "parameters: backward(losses, shared_params=...) (architectures: rep_grad=False); or, to act at the "
        "representation, use a method that reports task weights (e.g. excess_mtl or moco)"
    )


def _overlapped_blocks(
    balancer: GradientBalancer,
    losses: list[Tensor],
    params: list[Tensor],
    reached: set[int],
    collectives: Collectives | None,
) -> tuple[list[Tensor], list[bool], list[Tensor]] | None:
    """J's per-parameter blocks summed over processes as the backward made them (`mtlkit.weighting.overlap`), with
    the flags of the parameters some process reached and the parameters; None where that path does not apply."""
    if (
        not params
        or collectives is None
        or not getattr(collectives, "overlaps_jacobian", False)
        or balancer.chunk_size is not None  # all T rows go through one backward here
        or (collectives.shards_jacobian and _sees_only_gramian(type(balancer)))
    ):
        return None
    found = summed_blocks(losses, params, [id(p) in reached for p in params], collectives)  # type: ignore[arg-type]
    return None if found is None else (*found, params)


def _innermost(balancer: GradientBalancer) -> GradientBalancer:
    """The method inside `every`/`ema` wrappers (`mtlkit.weighting.wrappers`), or the balancer itself."""
    inner = getattr(balancer, "method", None)
    while isinstance(inner, GradientBalancer):
        balancer, inner = inner, getattr(inner, "method", None)
    return balancer


def _sees_only_gramian(cls: type[GradientBalancer]) -> bool:
    """Whether a method's update depends on J only through JJᵀ (it is defined by `weights(G)`)."""
    return cls.weights is not GradientBalancer.weights and cls.aggregate is GradientBalancer.aggregate


def _global_jacobian(
    J: Tensor, params: list[Tensor], reached: list[bool], collectives: Collectives
) -> tuple[Tensor, list[Tensor]]:
    """The mean J over processes (one all-reduce, which also carries the reached flags), restricted
    to the parameters some process reached, and those parameters."""
    flat = torch.cat([J.reshape(-1), torch.tensor(reached, dtype=J.dtype, device=J.device)])
    collectives.all_reduce_sum(flat, "jacobian")
    J = flat[: J.numel()].div_(collectives.world_size).view_as(J)
    used = (flat[J.numel() :] > 0).tolist()
    if all(used):
        return J, params
    columns = torch.cat([torch.full((p.numel(),), u, device=J.device) for p, u in zip(params, used)])
    return J[:, columns], [p for p, u in zip(params, used) if u]


def _check_finite_rows(M: Tensor, names: list[str], what: str, hint: str = "") -> None:
    """Raise FloatingPointError naming the tasks whose row of `M` is not finite."""
    # A row sum is inf/NaN iff the row holds an inf/NaN (or overflows, itself a failure):
    # one reduction instead of a full-size boolean mask.
    finite = torch.isfinite(M.sum(dim=1))
    if not bool(finite.all()):
        raise _non_finite([name for name, ok in zip(names, finite.tolist()) if not ok], what, hint)


def _non_finite(bad: list[str], what: str, hint: str = "") -> FloatingPointError:
    return FloatingPointError(
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
