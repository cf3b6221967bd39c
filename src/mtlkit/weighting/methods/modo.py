"""Multi-objective gradient with double sampling (Chen et al., NeurIPS 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting._simplex import project_to_simplex, restrict
from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.context import EXTRA_TRAIN_BATCH, context_of
from mtlkit.weighting.registry import register


@register("modo")
class MoDo(GradientBalancer):
    """MoDo: MGDA's weights learnt by stochastic steps with two independent batches, so they are unbiased.

    `Three-Way Trade-Off in Multi-Objective Learning: Optimization, Generalization and
    Conflict-Avoidance <https://arxiv.org/abs/2305.20057>`_ (Chen, Fernando, Ying, Chen,
    NeurIPS 2023). Each step draws three batches: with task Jacobians J₁, J₂ of two
    extra training batches (on the shared parameters),
    λ ← Π_Δ(λ − γ (J₁ J₂ᵀ λ + ρ λ)), an unbiased step on ½‖J λ‖² + ½ρ‖λ‖²; the update is
    Σ_t λ_t g_t with the gradients g_t of this step's batch (Π_Δ: projection onto the simplex).

    Needs "extra_train_batch" (`mtlkit.weighting.context`): the Trainer hands it two more
    batches of the step's training loader; in a hand-written loop set `balancer.context`.
    The extra batches feed the weights only (task heads get this batch's gradient;
    LibMTL averages the three batches' head gradients). J₁, J₂ are taken on the shared
    parameters also when this batch's gradients are taken at a representation (rows at
    a representation are per-sample: two batches' rows cannot be paired). Under
    torch.distributed each rank draws its share of the extra batches and J₁, J₂ are
    averaged over the ranks (the global batches' Jacobians), so λ is the same on every
    rank; at a representation each rank applies it to its own rows.

    Defaults (the paper's and LibMTL's): γ = 1e-3, ρ = 0.1; λ starts uniform (a buffer).
    """

    task_names: list[str]  # required: set in __init__
    lambdas: Tensor

    properties: frozenset[str] = frozenset()  # see tests/weighting/test_properties.py

    needs = frozenset({EXTRA_TRAIN_BATCH})
    weights_from_context = True  # the weights come from the extra batches, not from this step's rows

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        gamma: float = 1e-3,
        rho: float = 0.1,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(tasks, chunk_size=chunk_size)
        self.gamma, self.rho = gamma, rho
        self.context = None
        self.register_buffer("lambdas", torch.full((self.num_tasks,), 1.0 / self.num_tasks))

    def combine(self, J: Tensor, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        context = context_of(self)
        names = [self.task_names[i] for i in index.tolist()]
        J1, J2 = context.train_jacobians(2, names, self.chunk_size, self._collectives)
        lam, share = restrict(self.lambdas, index)
        lam = lam.to(J1)
        lam = project_to_simplex(lam - self.gamma * (J1 @ (J2.T @ lam) + self.rho * lam)).to(J)
        self.lambdas[index] = (lam * share).to(self.lambdas)
        return lam @ J, lam
