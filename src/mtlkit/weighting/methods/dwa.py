"""Dynamic weight average (Liu et al., CVPR 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting.base import LossBalancer
from mtlkit.weighting.registry import register


@register("dwa")
class DWA(LossBalancer):
    """Dynamic weight average: w_t = T·softmax_t(r / temperature), r_t = L̄_t(e-1) / L̄_t(e-2).

    `End-to-End Multi-Task Learning with Attention <https://arxiv.org/abs/1803.10704>`_
    (Liu, Johns, Davison, CVPR 2019). L̄_t(e) is task t's average training loss over
    epoch e, accumulated from the losses this balancer sees and closed by `epoch_end()`
    (the Trainer calls it). Defaults: temperature 2 (the paper's); weights are 1 until
    two epoch averages exist.

    Departure for partly labelled data: the averages are kept per task, a task absent
    for a whole epoch keeps its previous averages, and a task with fewer than two
    averages uses r_t = 1 while the others already use their ratio. Weights of tasks
    absent from a batch are not renormalised away. State (running sums, the last two
    averages) is in buffers; needs `tasks` at construction.
    """

    loss_sum: Tensor
    loss_count: Tensor
    history: Tensor
    seen: Tensor

    def __init__(self, tasks: int | Sequence[str] | None = None, temperature: float = 2.0) -> None:
        super().__init__(tasks)
        if temperature <= 0:
            raise ValueError(f"DWA temperature must be positive, got {temperature}")
        self.temperature = temperature
        T = self.num_tasks
        self.register_buffer("loss_sum", torch.zeros(T, dtype=torch.float64))
        self.register_buffer("loss_count", torch.zeros(T, dtype=torch.long))
        # history[0] = average two epochs ago, history[1] = last epoch's; seen = how many are set.
        self.register_buffer("history", torch.ones(2, T, dtype=torch.float64))
        self.register_buffer("seen", torch.zeros(T, dtype=torch.long))

    def combine(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        self.loss_sum.index_add_(0, index, losses.detach().to(self.loss_sum.dtype))
        self.loss_count.index_add_(0, index, torch.ones_like(index))
        w = self.task_weights()[index].to(losses.dtype)
        return (w * losses).sum(), w

    def task_weights(self) -> Tensor:
        """The current weight of every task (length T)."""
        before, last = self.history
        ready = (self.seen >= 2) & (before > 0)  # a zero average has no ratio: r_t = 1
        ratio = torch.where(ready, last / before, torch.ones_like(last))
        return self.num_tasks * torch.softmax(ratio / self.temperature, dim=0)

    def epoch_end(self) -> None:
        had = self.loss_count > 0
        average = self.loss_sum / self.loss_count.clamp(min=1)
        self.history[0] = torch.where(had, self.history[1], self.history[0])
        self.history[1] = torch.where(had, average, self.history[1])
        self.seen += had.long()
        self.seen.clamp_(max=2)
        self.loss_sum.zero_()
        self.loss_count.zero_()
