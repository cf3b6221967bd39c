"""Improvable gap balancing, heuristic version (Dai et al., UAI 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting.base import LossBalancer
from mtlkit.weighting.registry import register


@register("igbv1", "igb")
class IGBv1(LossBalancer):
    """IGBv1: weight each task by how far its loss still is from where it started, on log losses.

    `Improvable Gap Balancing for Multi-Task Learning <https://arxiv.org/abs/2307.15429>`_
    (Dai, Fei, Lu, UAI 2023). The objective is Σ_t w_t log L_t (scale-invariant loss
    balancing). During the first `base_epochs` epochs w_t = 1 while each task's mean
    training loss is recorded; that mean is its base loss b_t. From then on
    w = T' softmax(L_t / b_t) over the T' tasks in the batch: tasks whose loss has
    fallen less, relative to their base, get more weight (their improvable gap is larger).

    Defaults (authors' code): the base is the first epoch's mean loss (`base_epochs` = 1).
    A task absent from the whole base period gets its base at the end of the first epoch
    that sees it; until every task in a batch has a base, that batch uses w = 1.
    Reported weights are the effective weights w_t / L_t on the losses (0 for a loss of exactly 0,
    which is left out of the objective: its log is −∞ and its gradient vanishes). Needs non-negative
    losses. The loss sums and bases are buffers; the Trainer calls `epoch_end`.
    """

    task_names: list[str]  # required: set in __init__
    loss_sum: Tensor
    loss_count: Tensor
    base_losses: Tensor
    epochs: Tensor

    def __init__(self, tasks: int | Sequence[str] | None = None, base_epochs: int = 1) -> None:
        super().__init__(tasks)
        if base_epochs < 1:
            raise ValueError(f"IGBv1 base_epochs must be >= 1, got {base_epochs}")
        self.base_epochs = base_epochs
        T = self.num_tasks
        self.register_buffer("loss_sum", torch.zeros(T, dtype=torch.float64))
        self.register_buffer("loss_count", torch.zeros(T, dtype=torch.long))
        self.register_buffer("base_losses", torch.full((T,), float("nan"), dtype=torch.float64))
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))

    def combine(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        L = losses.detach()
        if bool((L < 0).any()):
            bad = [self.task_names[i] for i, ok in zip(index.tolist(), (L >= 0).tolist()) if not ok]
            raise ValueError(f"IGBv1 balances log losses and needs non-negative losses; task(s) {bad} are negative")
        base = self.base_losses[index]
        if bool(torch.isnan(base).any()):
            self.loss_sum[index] += L.to(self.loss_sum)
            self.loss_count[index] += 1
            w = torch.ones_like(L)
        else:
            w = L.numel() * torch.softmax(L / base.to(L), dim=0)
        # A loss of exactly 0 (fit perfectly, or underflowed) has log −∞ and no gradient: it is left out of
        # the objective, and its effective weight is reported as 0.
        positive = L > 0
        objective = torch.where(positive, w * torch.log(losses.clamp_min(torch.finfo(losses.dtype).tiny)), 0.0)
        return objective.sum(), torch.where(positive, w / L.clamp_min(torch.finfo(L.dtype).tiny), 0.0)

    def epoch_end(self) -> None:
        self.epochs += 1
        if int(self.epochs) >= self.base_epochs:
            ready = torch.isnan(self.base_losses) & (self.loss_count > 0)
            mean = self.loss_sum / self.loss_count.clamp(min=1)
            self.base_losses.copy_(torch.where(ready, mean, self.base_losses))
            self.loss_sum.zero_()
            self.loss_count.zero_()
