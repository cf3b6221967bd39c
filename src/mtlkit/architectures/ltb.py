"""Learning to branch: each task column picks, after every stage, which column to read."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.architectures.base import Architecture, _list_at, _Pass
from mtlkit.architectures.cross_stitch import _run_columns
from mtlkit.errors import ConfigError

_DEFAULT_EPOCHS = 100  # the schedule's length when `epochs` is not given


class LTB(Architecture):
    """Learning To Branch (LTB).

    [Guo et al., ICML 2020](http://proceedings.mlr.press/v119/guo20e.html). Every task
    has a column (a copy of the staged encoder); after each stage but the last, column
    t's next stage reads one column j, sampled from softmax(θ[t]) by hard Gumbel-softmax
    (straight-through), so the columns learn a tree of shared and branched stages. The
    schedule follows LibMTL: for the first `warmup` fraction of `epochs`, every column
    reads the mean of all columns; then the temperature is τ = epochs / 20 / √(epoch + 1).
    Set the epoch with `set_epoch(epoch)` (`mtlkit.Trainer` calls it at the start of each
    epoch, with the run's `n_epochs` when the model has no `epochs` of its own) or assign
    `model.epoch` and `model.epochs`, as LibMTL's Trainer does. Without `epochs` and
    outside the Trainer the schedule is that of a 100-epoch run (LibMTL's examples'
    length): the first epoch warms up, then τ = 5/√(epoch + 1). In eval mode each column reads its
    most likely parent.

    `multi_input=True` is refused, as in LibMTL: every column reads every task's input.

    Departures from LibMTL: any staged encoder (not only its ResNet); the warm-up
    averages the columns (LibMTL sums them); eval is deterministic (argmax). The shared
    parameters are the columns below the last stage and the branching logits before the
    last; the shared representation (`rep_grad`) is the stack of column outputs entering
    the last branching, whose row t, like column t's last stage, serves task t only.
    """

    def __init__(
        self,
        task_name: Sequence[str],
        encoder_class: Callable[[], Any],
        decoders: Mapping[str, nn.Module],
        rep_grad: bool = False,
        multi_input: bool = False,
        device: torch.device | str | None = None,
        *,
        epochs: int | None = None,
        warmup: float = 0.01,
        **kwargs: Any,
    ) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs)
        self._refuse_multi_input("every task column reads the other columns, so all tasks need the same input")
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            raise ConfigError(f"LTB epochs must be a positive int (the length of training), got {epochs!r}")
        self.columns = self._new_task_columns()
        self.num_stages = len(_list_at(self.columns, self.task_name[0]))
        T = self.task_num
        self.branch_logits = nn.ParameterList(nn.Parameter(torch.zeros(T, T)) for _ in range(self.num_stages - 1))
        self.epoch = 0
        self.epochs = epochs
        self.warmup = warmup
        self._finish_init()

    def set_epoch(self, epoch: int, epochs: int | None = None) -> None:
        """Tell the branching schedule which epoch (from 0) is starting, and optionally the run's length."""
        self.epoch = epoch
        if epochs is not None:
            self.epochs = epochs

    def temperature(self) -> float:
        """The Gumbel-softmax temperature at the current epoch."""
        return self._epochs() / 20 / math.sqrt(self.epoch + 1)

    def branches(self) -> Tensor:
        """(stages − 1, T): after each stage, the column each task's next stage reads in eval mode."""
        return torch.stack([logits.detach().argmax(-1) for logits in self.branch_logits])

    def _mixing(self, i: int) -> Tensor:
        logits = self.branch_logits[i]
        T = self.task_num
        if not self.training:
            return nn.functional.one_hot(logits.argmax(-1), T).to(logits.dtype)
        if self.epoch < self.warmup * self._epochs():
            return torch.full_like(logits, 1 / T)
        return nn.functional.gumbel_softmax(logits, tau=self.temperature(), hard=True, dim=-1)

    def _epochs(self) -> int:
        return _DEFAULT_EPOCHS if self.epochs is None else self.epochs

    def _encode(self, inputs: Any, tasks: list[str]) -> _Pass:
        return _run_columns(self.columns, self.task_name, inputs, tasks, self._mixing)

    def shared_parameters(self) -> list[nn.Parameter]:
        last = self.num_stages - 1
        columns = [p for t in self.task_name for p in _list_at(self.columns, t)[:last].parameters()]
        return columns + list(self.branch_logits[: last - 1])
