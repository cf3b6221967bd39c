"""Robust multi-task learning with excess risks (He et al., ICML 2024)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting._state import resize_buffers, sized_like
from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.registry import register


@register("excess_mtl", "excessmtl")
class ExcessMTL(GradientBalancer):
    """ExcessMTL: raise the weight of tasks far from their optimum, measured by an excess-risk estimate.

    `Robust Multi-Task Learning with Excess Risks <https://arxiv.org/abs/2402.02009>`_
    (He, Zhou, Zhao, ICML 2024). Each task's excess risk is estimated from its gradient
    with a diagonal (AdaGrad) curvature model: e_t = g_tᵀ diag(Σ_s g_{t,s}² + ε)^{-1/2} g_t,
    the accumulated squares running over the steps so far. The first step records e_t(0);
    after it, weights follow exponentiated gradient ascent on the normalised estimates,
    w_t ← w_t exp(η e_t / e_t(0)), rescaled to sum to T. The update is Σ_t w_t g_t.

    Defaults: η = 1e-2 (`step_size`; the authors' and LibMTL's default), ε = 1e-7.
    The weights act on the shared part only (task heads get their own unweighted
    gradient, the library's convention; the paper weights the whole loss). When only
    some tasks are in the batch, only their weights move, keeping their sum. The
    accumulator (T × P), e(0) and the weights are buffers. Every step must reach the
    same shared parameters (else a ValueError).

    At a shared representation (`shared_reps`; LibMTL refuses ExcessMTL there) the
    coordinates of g_t, and so of the accumulator, are the batch rows: task t's gradient
    with respect to the representation summed over the batch (`rep_reduce="batch"`, the
    only mode: per-sample rows change meaning with every batch), T × D. The weights follow
    the same recursion and combine the per-sample rows, so the trunk receives
    Σ_t w_t ∂L_t/∂z. Departure: the excess risk is then estimated from the curvature seen at
    the representation instead of at the shared parameters (the paper's diagonal model
    is per parameter); the weighting rule is unchanged.
    """

    squares: Tensor
    initial_excess: Tensor
    task_weights: Tensor

    properties = frozenset({"expected_structure"})

    rep_reduce = "batch"  # at a representation, the accumulator's coordinates are the batch rows
    batch_rows_only = True

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        step_size: float = 1e-2,
        eps: float = 1e-7,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(tasks, chunk_size=chunk_size)
        self.step_size, self.eps = step_size, eps
        T = self.num_tasks
        self.register_buffer("squares", torch.zeros(T, 0))  # sized at the first step
        self.register_buffer("initial_excess", torch.full((T,), float("nan")))
        self.register_buffer("task_weights", torch.ones(T))

    def combine(self, J: Tensor, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        sized_like(self, "squares", J)
        squares = self.squares[index] + J**2
        self.squares[index] = squares
        excess = (J**2 / (squares + self.eps).sqrt()).sum(dim=1)
        initial = self.initial_excess[index].to(J)
        first = torch.isnan(initial)
        self.initial_excess[index] = torch.where(first, excess, initial).to(self.initial_excess)
        w = self.task_weights[index].to(J)
        if not bool(first.all()):
            # A task with zero gradient at its first step has e(0) = 0: it stays at its weight.
            ratio = torch.where(first | (initial <= 0), torch.zeros_like(excess), excess / initial)
            moved = w * torch.exp(self.step_size * ratio)
            w = moved * (w.sum() / moved.sum())
            self.task_weights[index] = w.to(self.task_weights)
        return w @ J, w

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        resize_buffers(self, state_dict, prefix, ["squares"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
