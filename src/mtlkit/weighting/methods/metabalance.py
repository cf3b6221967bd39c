"""Adapting the gradient magnitudes of auxiliary tasks (He et al., WWW 2022)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting._state import resize_buffers
from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.registry import register

_STRATEGIES = ("both", "decrease", "increase")


@register("metabalance")
class MetaBalance(GradientBalancer):
    """MetaBalance: relax each auxiliary task's gradient toward the target task's gradient norm, per parameter.

    `MetaBalance: Improving Multi-Task Recommendations via Adapting Gradient Magnitudes
    of Auxiliary Tasks <https://arxiv.org/abs/2203.06801>`_ (He, Feng, Cheng, Zhao, Wang,
    Zhang, Sun, WWW 2022), Algorithm 1. For every shared parameter tensor θ separately, with
    moving averages m_t ← β m_t + (1 − β) ‖∇_θ L_t‖ of each task's gradient norm on θ, an
    auxiliary gradient on θ is rescaled to ∇_θ L_aux (r m_target / m_aux + 1 − r): r = 1 moves
    it to the target's norm, r = 0 leaves it. The update on θ is ∇_θ L_target + Σ_aux of the
    rescaled gradients. The engine hands the method the shared parameters' sizes
    (`column_blocks`), so the averages are a T × (number of shared parameter tensors) buffer;
    a step whose losses reach only some shared tensors moves only their averages.

    With more than one shared parameter tensor each task has one weight per tensor, so the
    step reports no task weights (and `every`/`ema` cannot wrap it there). At a shared
    representation (`shared_reps`) the representation is the one "parameter" (several
    representations count as one): one norm per task over the whole representation
    gradient (its per-sample rows), so the weights are
    (1, r m_target/m_aux + 1 − r, ...) and are reported.

    `strategy` picks which auxiliary gradients are relaxed: "both" (default), only those
    larger than the target's ("decrease"), or only the smaller ones ("increase") — the
    paper's strategies C, A and B. Defaults: `target` the first task, r = 0.7 (`relax`;
    the paper tunes it per dataset), β = 0.9. A batch without the target task leaves the
    gradients as they are (weights 1); an auxiliary gradient with zero average norm is left
    as it is. The averages start at zero, as in the paper.
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
        self.register_buffer("norm_averages", torch.zeros(T, 0))  # T × blocks, sized at the first step

    def combine(self, J: Tensor, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor | None]:
        blocks = self.column_blocks or [(0, J.shape[1])]  # a representation: one block
        sizes = [n for _, n in blocks]
        if sum(sizes) != J.shape[1]:
            raise ValueError(f"MetaBalance: column blocks {blocks} do not add up to the {J.shape[1]} columns of J")
        pieces = J.split(sizes, dim=1)
        norms = torch.stack([piece.norm(dim=1) for piece in pieces], dim=1)  # tasks × blocks
        columns = torch.tensor([i for i, _ in blocks], device=self.norm_averages.device)
        needed = int(columns.max()) + 1
        if self.norm_averages.shape[1] < needed:  # a tensor seen for the first time: its averages start at 0
            grown = norms.new_zeros(self.num_tasks, needed).to(self.norm_averages.device)
            grown[:, : self.norm_averages.shape[1]] = self.norm_averages
            self.norm_averages = grown
        rows = index.to(columns.device).unsqueeze(1)
        m = self.beta * self.norm_averages[rows, columns].to(J) + (1 - self.beta) * norms
        self.norm_averages[rows, columns] = m.to(self.norm_averages)
        W = torch.ones_like(m)
        present = index.tolist()
        if self.target in present:
            m_target = m[present.index(self.target)]
            scale = self.relax * m_target / m.clamp(min=torch.finfo(m.dtype).tiny) + 1 - self.relax
            relaxed = m > 0
            if self.strategy == "decrease":
                relaxed &= m > m_target
            elif self.strategy == "increase":
                relaxed &= m < m_target
            W = torch.where(relaxed, scale, W)
            W[present.index(self.target)] = 1.0
        g = torch.cat([w @ piece for w, piece in zip(W.T, pieces)])
        return g, W[:, 0] if len(blocks) == 1 else None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        resize_buffers(self, state_dict, prefix, ["norm_averages"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
