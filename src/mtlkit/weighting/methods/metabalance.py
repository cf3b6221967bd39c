"""Adapting the gradient magnitudes of auxiliary tasks (He et al., WWW 2022)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.registry import register

_STRATEGIES = ("both", "decrease", "increase")


@register("metabalance")
class MetaBalance(GradientBalancer):
    """MetaBalance: relax each auxiliary task's gradient toward the target task's gradient norm.

    `MetaBalance: Improving Multi-Task Recommendations via Adapting Gradient Magnitudes
    of Auxiliary Tasks <https://arxiv.org/abs/2203.06801>`_ (He, Feng, Cheng, Zhao, Wang,
    Zhang, Sun, WWW 2022). With moving averages m_t ← β m_t + (1 − β) ‖g_t‖ of every
    task's gradient norm, an auxiliary gradient is rescaled to
    g_aux (r m_target / m_aux + 1 − r): r = 1 moves it to the target's norm, r = 0 leaves it.
    The update is g_target + Σ_aux of the rescaled gradients, i.e. weights
    (1, r m_target/m_aux + 1 − r, ...).

    `strategy` picks which auxiliary gradients are relaxed: "both" (default), only those
    larger than the target's ("decrease"), or only the smaller ones ("increase") — the
    paper's strategies C, A and B. Defaults: `target` the first task, r = 0.7 (`relax`;
    the paper tunes it per dataset), β = 0.9. Departure: the norms are those of the
    whole shared gradient (or of the representation gradient with `shared_reps`), not of
    each parameter tensor separately, so the result is one weight per task. A batch
    without the target task gets weights 1; an auxiliary task with zero gradient norm
    keeps weight 1. The averages (zero-initialised, as in the paper) are a buffer.
    """

    task_names: list[str]  # required: set in __init__
    norm_averages: Tensor

    properties = frozenset({"expected_structure"})

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        target: str | None = None,
        relax: float = 0.7,
        beta: float = 0.9,
        strategy: str = "both",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(tasks, chunk_size=chunk_size)
        T = self.num_tasks  # raises without tasks
        if strategy not in _STRATEGIES:
            raise ValueError(f"MetaBalance strategy must be one of {_STRATEGIES}, got {strategy!r}")
        if target is not None and target not in self.task_names:
            raise ValueError(f"MetaBalance target {target!r} is not among the tasks {self.task_names}")
        self.target = self.task_names.index(target) if target is not None else 0
        self.relax, self.beta, self.strategy = relax, beta, strategy
        self.register_buffer("norm_averages", torch.zeros(T))

    def combine(self, J: Tensor, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        norms = J.norm(dim=1)
        m = self.beta * self.norm_averages[index].to(J) + (1 - self.beta) * norms
        self.norm_averages[index] = m.to(self.norm_averages)
        w = torch.ones_like(norms)
        rows = index.tolist()
        if self.target in rows:
            m_target = m[rows.index(self.target)]
            scale = self.relax * m_target / m.clamp(min=torch.finfo(m.dtype).tiny) + 1 - self.relax
            relaxed = m > 0
            if self.strategy == "decrease":
                relaxed &= m > m_target
            elif self.strategy == "increase":
                relaxed &= m < m_target
            w = torch.where(relaxed, scale, w)
            w[rows.index(self.target)] = 1.0
        return w @ J, w
