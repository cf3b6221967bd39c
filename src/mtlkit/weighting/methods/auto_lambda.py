"""Auto-λ: task weights learnt by a one-step look-ahead on validation data (Liu et al., TMLR 2022)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting.base import LossBalancer
from mtlkit.weighting.context import VALID_BATCH, StepContext, context_of, global_mean_grads, set_values
from mtlkit.weighting.registry import register


@register("auto_lambda", "autol")
class AutoLambda(LossBalancer):
    """Auto-λ: weights λ that make one training step lower the validation loss of the primary tasks.

    `Auto-Lambda: Disentangling Dynamic Task Relationships
    <https://arxiv.org/abs/2202.03091>`_ (Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang,
    TMLR 2022). The objective is Σ_t λ_t L_t. Before each step, λ takes one Adam step on
    the validation loss after a virtual SGD step θ' = θ − α ∇_θ Σ_t λ_t L_t(θ) (α: the
    optimizer's learning rate): with d = ∇_θ' Σ_{primary} L_val(θ') and ε = 0.01/‖d‖,
    the hypergradient is −α (L(θ + ε d) − L(θ − ε d)) / (2ε) on this step's batch (the
    paper's finite-difference Hessian-vector product). λ is unconstrained, as in the
    authors' code.

    Needs "valid_batch" (`mtlkit.weighting.context`): the Trainer hands it one batch of
    the validation loaders per step (in turn) and the model's forward; a validation
    batch that labels no primary task leaves λ unchanged for that step. The look-ahead
    moves every trainable parameter and restores it exactly; its extra forwards leave
    BatchNorm statistics unchanged. Cost per step: one extra backward, a validation
    forward and backward, and two training forwards. Under torch.distributed each rank
    draws its shard of the validation batch; the look-ahead gradient and d are averaged
    over the ranks (two all-reduces of the parameters' size), so λ is the global batch's.

    Defaults (authors' code): λ starts at 0.1 (`init`), meta lr 1e-4 (Adam β = (0.9,
    0.999)), all tasks primary (`primary=None`, the paper's "total" setting). λ and the
    Adam moments are buffers.

    Against the paper and the authors' code (checked term by term): the look-ahead is the
    paper's θ' = θ − α ∇_θ Σ_t λ_t L_t(θ) on this step's batch, over every trainable
    parameter, with α the optimizer's current learning rate (first parameter group); d is
    taken at θ', the shifted points are θ ± ε d around the original θ, and the
    hypergradient needs no gradient in λ beyond the per-task losses there, as in the
    authors' finite difference. One departure: the authors' code also puts the optimizer's
    weight decay δ (of its first parameter group, whatever the optimizer) and, for SGD
    with momentum μ, the momentum buffer b into the virtual step, θ' = θ − α (∇_θ L + μ b +
    δ θ); mtlkit's step context carries the learning rate only, so with weight decay or
    momentum the look-ahead here is the paper's plain-SGD one, which differs from the
    authors' by α (μ b + δ θ). An adaptive optimizer's scaling (Adam's) is replayed by neither.
    """

    task_names: list[str]  # required: set in __init__
    lambdas: Tensor
    adam_m: Tensor
    adam_v: Tensor
    adam_steps: Tensor

    needs = frozenset({VALID_BATCH})

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        init: float = 0.1,
        lr: float = 1e-4,
        primary: Sequence[str] | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> None:
        super().__init__(tasks)
        T = self.num_tasks  # raises without tasks
        unknown = [t for t in primary or [] if t not in self.task_names]
        if unknown:
            raise ValueError(f"Auto-λ primary tasks {unknown} are not among the tasks {self.task_names}")
        self.primary = list(primary) if primary is not None else list(self.task_names)
        self.lr, self.betas = lr, betas
        self.context = None
        self.register_buffer("lambdas", torch.full((T,), float(init)))
        self.register_buffer("adam_m", torch.zeros(T))
        self.register_buffer("adam_v", torch.zeros(T))
        self.register_buffer("adam_steps", torch.zeros(T, dtype=torch.long))

    def combine(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        hypergradient = self.hypergradient(context_of(self), losses, index)
        if hypergradient is not None:
            self._adam_step(hypergradient, index)
        w = self.lambdas[index].to(losses)
        return (w * losses).sum(), w.detach()

    def hypergradient(self, context: StepContext, losses: Tensor, index: Tensor) -> Tensor | None:
        """∂L_val(θ − α∇Σλ_t L_t)/∂λ for the tasks `index` (finite differences), or None without a primary label."""
        names = [self.task_names[i] for i in index.tolist()]
        params = list(context.parameters)
        weighted = (self.lambdas[index].to(losses) * losses).sum()
        local = torch.autograd.grad(weighted, params, retain_graph=True, allow_unused=True)
        grads = global_mean_grads(local, params, self._collectives, "gradients")  # the global batch's
        original = [p.data for p in params]
        try:
            set_values(params, [o - context.lr * g if g is not None else o for o, g in zip(original, grads)])
            valid = context.losses(context.next_valid_batch())
            primary = [valid[t] for t in self.primary if t in valid]
            if not primary:
                return None
            local = torch.autograd.grad(torch.stack(primary).sum(), params, allow_unused=True)
            d = global_mean_grads(local, params, self._collectives, "gradients")
            norm = torch.sqrt(sum(((g.detach() ** 2).sum() for g in d if g is not None), losses.new_zeros(())))
            if not float(norm) > 0:
                return torch.zeros_like(losses.detach())
            eps = 0.01 / norm
            shifted = []
            for sign in (1.0, -1.0):
                set_values(params, [o + sign * eps * g if g is not None else o for o, g in zip(original, d)])
                with torch.no_grad():
                    train = context.losses(context.batch)
                shifted.append(torch.stack([train[n].detach().reshape(()) for n in names]))
        finally:
            set_values(params, original)
        return (-context.lr * (shifted[0] - shifted[1]) / (2 * eps)).to(losses.dtype)

    @torch.no_grad()
    def _adam_step(self, grad: Tensor, index: Tensor) -> None:
        """Adam on λ_t for the tasks `index`, each with its own step count."""
        beta1, beta2 = self.betas
        grad = grad.to(self.lambdas)
        m = beta1 * self.adam_m[index] + (1 - beta1) * grad
        v = beta2 * self.adam_v[index] + (1 - beta2) * grad**2
        self.adam_m[index], self.adam_v[index] = m, v
        self.adam_steps[index] += 1
        k = self.adam_steps[index].to(m)
        self.lambdas[index] -= self.lr * (m / (1 - beta1**k)) / ((v / (1 - beta2**k)).sqrt() + 1e-8)
