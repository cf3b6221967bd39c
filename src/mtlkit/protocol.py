"""The small protocol through which the Trainer drives any multi-task model, and the
one per-task loss helper that every front door calls.

`MultitaskClassifier` (Snorkel flows), `MTLModel` (torchMTL dict graphs) and every
architecture in `mtlkit.architectures` implement `MultiTaskModel`, so one Trainer, one
set of balancers and one scoring loop serve all three front doors. Each computes a
task's loss with `labelled_targets` (`labelled_batch` for all of a batch's tasks at once)
then `task_loss`, so all three follow one label convention
(`mtlkit.labels`: class label -1 and regression NaN mean "no label") and share the
checks `mtlkit.checks` runs on the first batch of each training dataset.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from mtlkit import checks
from mtlkit.labels import AUTO, Marker, resolve, unlabelled_rows


@dataclass
class StepOutput:
    """Per-task results of one training forward pass.

    `losses` holds one scalar per task that has at least one labelled row in the
    batch (tasks without labels are absent, not zero); `counts` the number of
    labelled rows behind each loss. `shared_reps` holds the shared representation
    tensor(s) of this forward when the model computes task gradients at the
    representation (`rep_grad`), else `None`.
    """

    losses: dict[str, Tensor]
    counts: dict[str, int] = field(default_factory=dict)
    shared_reps: list[Tensor] | None = None


@runtime_checkable
class MultiTaskModel(Protocol):
    """What the Trainer, the balancers and the scoring loop need from a model."""

    @property
    def task_names(self) -> list[str]:
        """All task names, in a stable order."""

    def training_step(self, X: Mapping[str, Any] | Tensor, Y: Mapping[str, Tensor]) -> StepOutput:
        """Forward the batch and return the loss of each task labelled in `Y`."""

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters used by more than one task (where gradient balancers act)."""

    def task_outputs(self, X: Mapping[str, Any] | Tensor, task_names: list[str]) -> dict[str, Tensor]:
        """Outputs for scoring (probabilities for classifiers, values for regressors)."""

    def scorers(self) -> Mapping[str, Any]:
        """The `Scorer` of each task that has one."""


if TYPE_CHECKING:

    class TrainableModel(nn.Module, MultiTaskModel):
        """What the Trainer trains: an `nn.Module` implementing `MultiTaskModel` (for type checking only)."""


@dataclass
class Labelled:
    """One task's targets in a batch and which of their rows carry a label."""

    target: Tensor
    rows: Tensor | None  # boolean mask of the labelled rows; None when every row is labelled
    count: int  # the number of labelled rows (what `StepOutput.counts` reports)
    marker: Marker = AUTO


def labelled_targets(task: str, target: Any, marker: Marker = AUTO) -> Labelled | None:
    """The labelled rows of one task's targets (see `mtlkit.labels`), or None when no row has a label.

    `marker` is the task Scorer's `abstain_label` where the task has one. Costs one host
    read (`labelled_batch`), none with ``marker=None``.
    """
    return labelled_batch({task: target}, {task: marker}).get(task)


def labelled_batch(targets: Mapping[str, Any], markers: Mapping[str, Marker]) -> dict[str, Labelled]:
    """`labelled_targets` of every task in a batch's targets; tasks without a labelled row are left out.

    `markers` gives each task's missing-label marker (default ``"auto"``). A task none of
    whose entries is its marker (the usual batch) costs one reduction, and all the
    tasks together one host read (`host_values`); only a task with missing labels pays
    for its row mask and count (one more read).
    """
    checks: dict[str, bool] = {}
    pending: list[tuple[str, Tensor, Callable[[Any], bool]]] = []
    for task, target in targets.items():
        if not isinstance(target, Tensor):
            raise TypeError(f"task {task!r}: targets must be a tensor, got {type(target).__name__}")
        check = _may_hold(target, markers.get(task, AUTO))
        if isinstance(check, bool):
            checks[task] = check
        else:
            pending.append((task, *check))
    if pending:
        for (task, _, test), value in zip(pending, host_values([probe for _, probe, _ in pending])):
            checks[task] = test(value)
    found: dict[str, Labelled] = {}
    for task, target in targets.items():
        marker = markers.get(task, AUTO)
        if not checks[task]:
            found[task] = Labelled(target, None, _rows(target), marker)
            continue
        absent = unlabelled_rows(target, marker)
        count = _rows(absent) - int(absent.count_nonzero())
        if count:
            found[task] = Labelled(target, None if count == _rows(absent) else ~absent, count, marker)
    return found


def _rows(tensor: Tensor) -> int:
    """`len(tensor)` (the first dimension), without `Tensor.__len__`'s Python-level checks."""
    return tensor.shape[0] if tensor.dim() else len(tensor)


def _may_hold(target: Tensor, marker: Marker) -> bool | tuple[Tensor, Callable[[Any], bool]]:
    """Whether an entry of `target` may be the marker: False, True (count exactly), or a 0-d
    tensor from one reduction and the test of its value.

    For NaN, the sum is NaN when an entry is (or when +inf meets -inf: a false alarm, which
    the exact count settles); for a number, no entry is smaller than the minimum. The
    minimum of int64 targets is compared with an int marker in Python (exact, one tensor
    operation less); others in the target's dtype, as `mtlkit.labels.missing` compares.
    """
    value = resolve(target, marker)
    if value is None:
        return False
    if not _rows(target):
        return True  # the exact count (zero) leaves the task out
    if value != value:  # NaN
        return (target.sum(), math.isnan) if target.is_floating_point() else False
    dtype = target.dtype
    if dtype is torch.int64 and type(value) is int and -(2**63) <= value < 2**63:
        return target.amin(), functools.partial(operator.ge, value)  # value >= min
    if dtype in _UNORDERED:
        return True
    return target.amin() <= value, bool


_UNORDERED = (torch.bool, torch.complex32, torch.complex64, torch.complex128)  # no cheap bound: count exactly


def host_values(tensors: Sequence[Tensor]) -> list[Any]:
    """The values of one-element tensors as Python numbers.

    On an accelerator all of them in one device sync (stacked); on the CPU, where a read
    syncs nothing, each is read directly (cheaper than stacking them first).
    """
    if not tensors:
        return []
    if tensors[0].is_cpu:
        return list(map(Tensor.item, tensors))
    return torch.stack([tensor.detach().reshape(()) for tensor in tensors]).tolist()


def task_loss(task: str, loss_fn: Callable[..., Tensor], output: Any, labels: Labelled) -> Tensor:
    """`loss_fn(output, target)` on the labelled rows of one task.

    For torch's elementwise losses (mse, l1, smooth_l1, huber, binary cross-entropy,
    as functions or modules) a trailing size-1 dimension on one side only is squeezed:
    a regression head's (N, 1) output against (N,) targets (or (N,) against (N, 1))
    would otherwise broadcast to N×N. Other losses get the shapes as they are. On the
    first batch of each training dataset in `Trainer.fit`, `mtlkit.checks` checks the
    output against the targets and names the task, dataset and split of a mismatch.
    """
    target = labels.target
    if labels.rows is not None:
        if not isinstance(output, Tensor):
            raise ValueError(
                f"task {task!r}: some rows of the batch are unlabelled, but the task's output is a "
                f"{type(output).__name__}, which cannot be masked row by row; make its last layer return a tensor"
            )
        output, target = output[labels.rows.to(output.device)], target[labels.rows.to(target.device)]
    if isinstance(output, Tensor):
        if target.device != output.device:
            target = target.to(output.device)
        if checks.loss_kind(loss_fn) == "elementwise":
            output, target = _squeeze_trailing_one(output, target)
    if checks.first_batch_dataset() is not None:
        return checks.first_batch_loss(task, loss_fn, output, target, labels.marker)
    return loss_fn(output, target)


def _squeeze_trailing_one(output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    if output.dim() == target.dim() + 1 and output.shape[-1] == 1 and output.shape[:-1] == target.shape:
        return output.squeeze(-1), target
    if target.dim() == output.dim() + 1 and target.shape[-1] == 1 and target.shape[:-1] == output.shape:
        return output, target.squeeze(-1)
    return output, target
