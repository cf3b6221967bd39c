"""Smooth Tchebycheff scalarization (Lin et al., ICML 2024)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting.base import LossBalancer
from mtlkit.weighting.registry import register


@register("stch")
class STCH(LossBalancer):
    """Smooth Tchebycheff scalarization: T·μ·log Σ_t exp(log(L_t / n_t) / μ).

    `Smooth Tchebycheff Scalarization for Multi-Objective Optimization
    <https://arxiv.org/abs/2402.19078>`_ (Lin et al., ICML 2024), in the form of the
    authors' multi-task code (also LibMTL's): losses are normalised in log space by a
    nadir vector n (each task's average loss over one epoch), the ideal point is 0 and
    the preference is uniform. Before that, for `warmup_epochs` epochs, it backpropagates
    Σ_t log L_t; the averages of epoch number `warmup_epochs` (0-based) become n, and
    STCH proper starts in the epoch after. A task not seen in that epoch keeps n_t = 1.

    Defaults (authors' / LibMTL's): μ = 1, warmup_epochs = 4. Losses must be positive.
    Epochs are counted by `epoch_end()` (the Trainer calls it). State (epoch counter,
    nadir sums, nadir) is in buffers; needs `tasks` at construction.
    """

    task_names: list[str]  # required: set in __init__
    epoch: Tensor
    nadir_sum: Tensor
    nadir_count: Tensor
    nadir: Tensor

    def __init__(self, tasks: int | Sequence[str] | None = None, mu: float = 1.0, warmup_epochs: int = 4) -> None:
        super().__init__(tasks)
        if mu <= 0:
            raise ValueError(f"STCH mu must be positive, got {mu}")
        if warmup_epochs < 0:
            raise ValueError(f"STCH warmup_epochs must be >= 0, got {warmup_epochs}")
        self.mu, self.warmup_epochs = mu, warmup_epochs
        T = self.num_tasks
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        self.register_buffer("nadir_sum", torch.zeros(T, dtype=torch.float64))
        self.register_buffer("nadir_count", torch.zeros(T, dtype=torch.long))
        self.register_buffer("nadir", torch.ones(T, dtype=torch.float64))

    def combine(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        positive = (losses.detach() > 0).tolist()
        if not all(positive):
            bad = [self.task_names[i] for i, ok in zip(index.tolist(), positive) if not ok]
            raise ValueError(f"STCH needs positive losses; the loss of task(s) {bad} is <= 0")
        epoch = int(self.epoch)
        if epoch == self.warmup_epochs:
            self.nadir_sum.index_add_(0, index, losses.detach().to(self.nadir_sum.dtype))
            self.nadir_count.index_add_(0, index, torch.ones_like(index))
        if epoch <= self.warmup_epochs:
            return torch.log(losses).sum(), (1.0 / losses).detach()
        x = torch.log(losses / self.nadir[index].to(losses.dtype)) / self.mu
        objective = losses.numel() * self.mu * torch.logsumexp(x, dim=0)
        weights = losses.numel() * torch.softmax(x.detach(), dim=0) / losses.detach()
        return objective, weights

    def epoch_end(self) -> None:
        if int(self.epoch) == self.warmup_epochs:
            seen = self.nadir_count > 0
            self.nadir.copy_(torch.where(seen, self.nadir_sum / self.nadir_count.clamp(min=1), self.nadir))
        self.epoch += 1
