"""Group optimisation for multi-task alignment (Shen et al., NeurIPS 2024)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting.base import LossBalancer
from mtlkit.weighting.registry import register


def kmeans_1d(values: Tensor, k: int) -> Tensor:
    """Each value replaced by its cluster's mean, for the optimal (least squares) k-means partition.

    Exact: in one dimension an optimal partition splits the sorted values into k runs,
    found by dynamic programming over the split points (T values: O(k T²)).
    """
    x, order = torch.sort(values.detach().double().cpu())
    n = x.numel()
    k = max(1, min(k, n))
    s1 = [0.0, *x.cumsum(0).tolist()]
    s2 = [0.0, *(x**2).cumsum(0).tolist()]

    def cost(i: int, j: int) -> float:  # squared deviation of x[i:j] from its mean
        return s2[j] - s2[i] - (s1[j] - s1[i]) ** 2 / (j - i)

    best = [[float("inf")] * (n + 1) for _ in range(k + 1)]
    split = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for c in range(1, k + 1):
        for j in range(c, n + 1):
            for i in range(c - 1, j):
                total = best[c - 1][i] + cost(i, j)
                if total < best[c][j]:
                    best[c][j], split[c][j] = total, i
    means = torch.empty(n, dtype=torch.float64)
    j = n
    for c in range(k, 0, -1):
        i = split[c][j]
        means[i:j] = (s1[j] - s1[i]) / (j - i)
        j = i
    out = torch.empty_like(means)
    out[order] = means
    return out.to(dtype=values.dtype, device=values.device)


@register("go4align")
class GO4Align(LossBalancer):
    """GO4Align: risk-guided task indicators, clustered into groups that share one weight.

    `GO4Align: Group Optimization for Multi-Task Alignment
    <https://arxiv.org/abs/2404.06486>`_ (Shen, Wang, Xiao, Van Noord, Worring, NeurIPS
    2024). Each step, with the (detached) losses L_t of the batch's tasks:

    - risk-guided indicators: p_t ← p_t exp(−η L_t), renormalised over all tasks;
    - scale: s_t = Σ_u L_u / L_t, indicator γ_t = s_t p_t;
    - dynamical group assignment: the γ_t are clustered into `num_groups` groups, and
      each task's weight is its group's mean γ; the objective is Σ_t w_t L_t.

    Defaults (authors' code): η = 1e-4 (`step_size`), p uniform at the start; the paper
    tunes the number of groups per benchmark (`num_groups` = 2 here). Departure: the
    grouping is the exact 1-D k-means optimum (`kmeans_1d`), not a seeded Lloyd run, so
    it is deterministic. A task whose loss is exactly 0 gets weight 0 (its scale 1/L_t is undefined and its
    gradient vanishes); negative losses raise. p is a buffer.
    """

    task_names: list[str]  # required: set in __init__
    indicators: Tensor

    def __init__(self, tasks: int | Sequence[str] | None = None, num_groups: int = 2, step_size: float = 1e-4) -> None:
        super().__init__(tasks)
        if num_groups < 1:
            raise ValueError(f"GO4Align num_groups must be >= 1, got {num_groups}")
        self.num_groups, self.step_size = num_groups, step_size
        self.register_buffer("indicators", torch.full((self.num_tasks,), 1.0 / self.num_tasks))

    def combine(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        L = losses.detach()
        if bool((L < 0).any()):
            bad = [self.task_names[i] for i, ok in zip(index.tolist(), (L >= 0).tolist()) if not ok]
            raise ValueError(f"GO4Align scales by 1/L_t and needs non-negative losses; task(s) {bad} are negative")
        p = self.indicators.clone()
        p[index] = p[index] * torch.exp(-self.step_size * L.to(p))
        self.indicators.copy_(p / p.sum())
        # A loss of exactly 0 (a task fit perfectly, or a loss that underflowed) has no gradient to
        # scale: such tasks get weight 0 and the groups are formed over the others.
        positive = L > 0
        w = torch.zeros_like(L)
        if bool(positive.any()):
            gamma = (L.sum() / L[positive]) * self.indicators[index[positive]].to(L)
            w[positive] = kmeans_1d(gamma, self.num_groups).to(L)
        return (w * losses).sum(), w
