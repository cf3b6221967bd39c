"""Stochastic direction-oriented multi-objective gradient descent (Xiao et al., NeurIPS 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting._simplex import project_to_simplex, restrict
from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.context import EXTRA_TRAIN_BATCH, context_of
from mtlkit.weighting.registry import register


def sdmgrad_inner(GG: Tensor, w: Tensor, lamda: float, steps: int, lr: float, momentum: float) -> Tensor:
    """`steps` projected heavy-ball steps on w for min_{w ∈ Δ} ½‖J w + λ g₀‖², from a cross-batch Gramian.

    GG = J₁ J₂ᵀ (two independent batches), so GG w + λ GG 1/T is an unbiased gradient.
    """
    target = GG.mean(dim=1)  # J₁ g₀ with g₀ = J₂ᵀ 1/T, the average gradient
    velocity = torch.zeros_like(w)
    for step in range(steps):
        grad = GG @ w + lamda * target
        velocity = grad if step == 0 else momentum * velocity + grad
        w = project_to_simplex(w - lr * velocity)
    return w


@register("sdmgrad")
class SDMGrad(GradientBalancer):
    """SDMGrad: MGDA regularised toward the average gradient, solved with a cross-batch Gramian.

    `Direction-oriented Multi-objective Learning: Simple and Provable Stochastic
    Algorithms <https://arxiv.org/abs/2305.18409>`_ (Xiao, Ban, Ji, NeurIPS 2023). The
    direction is d = (J_ζᵀ w + λ g₀) / (1 + λ), g₀ the average task gradient, with w
    minimising ½‖Jᵀw + λ g₀‖² on the simplex. The weights are learnt with two extra
    independent batches ξ₁, ξ₂: GG = J_{ξ₁} J_{ξ₂}ᵀ, normalised by the squared mean of
    the square roots of its diagonal as in the authors' code (left as is when that is
    0), then `steps` projected SGD steps (lr 5, momentum 0.5: the authors' code) from
    the previous step's w.
    The update applies the weights (w + λ/T)/(1 + λ) to this step's gradients J_ζ.

    Needs "extra_train_batch" (`mtlkit.weighting.context`), as MoDo: the Trainer hands
    it two more batches of the step's loader; J_{ξ} are taken on the shared parameters
    (also when J_ζ is taken at a representation); under torch.distributed they are
    averaged over the ranks' shares of the extra batches, as MoDo's. Defaults (paper and LibMTL):
    λ = 0.3 (`lamda`), 20 inner steps. w is a buffer (starts uniform).
    """

    task_names: list[str]  # required: set in __init__
    simplex_weights: Tensor

    properties: frozenset[str] = frozenset()  # see tests/weighting/test_properties.py

    needs = frozenset({EXTRA_TRAIN_BATCH})
    weights_from_context = True  # the weights come from the extra batches, not from this step's rows

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        lamda: float = 0.3,
        steps: int = 20,
        lr: float = 5.0,
        momentum: float = 0.5,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(tasks, chunk_size=chunk_size)
        self.lamda, self.steps, self.lr, self.momentum = lamda, steps, lr, momentum
        self.context = None
        self.register_buffer("simplex_weights", torch.full((self.num_tasks,), 1.0 / self.num_tasks))

    def combine(self, J: Tensor, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        context = context_of(self)
        names = [self.task_names[i] for i in index.tolist()]
        J1, J2 = context.train_jacobians(2, names, self.chunk_size, self._collectives)
        GG = J1 @ J2.T
        scale = GG.diagonal().clamp(min=0).sqrt().mean()
        if float(scale) > 0:  # a cross-batch diagonal can be ≤ 0 throughout: then there is no scale to remove
            GG = GG / scale**2
        w, share = restrict(self.simplex_weights, index)
        w = sdmgrad_inner(GG, w.to(GG), self.lamda, self.steps, self.lr, self.momentum)
        self.simplex_weights[index] = (w * share).to(self.simplex_weights)
        weights = ((w + self.lamda / len(names)) / (1 + self.lamda)).to(J)
        return weights @ J, weights
