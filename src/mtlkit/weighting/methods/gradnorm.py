"""Gradient normalisation (Chen et al., ICML 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.registry import register


def gradnorm_weight_gradient(weights: Tensor, norms: Tensor, ratios: Tensor, alpha: float) -> Tensor:
    """∂L_grad/∂w for L_grad = Σ_t |w_t n_t − Ḡ r_t^α|, the target Ḡ r_t^α held constant.

    n_t = ‖∇L_t‖ (so ‖∇(w_t L_t)‖ = w_t n_t), Ḡ = mean_t w_t n_t, r_t = L̃_t / mean L̃
    the relative inverse training rate (L̃_t = L_t / L_t(0)).
    """
    weighted = weights * norms
    target = weighted.mean() * ratios**alpha
    return norms * torch.sign(weighted - target)


@register("gradnorm")
class GradNorm(GradientBalancer):
    """GradNorm: learn task weights that equalise weighted gradient norms, scaled by training rates.

    `GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep Multitask
    Networks <https://arxiv.org/abs/1711.02257>`_ (Chen et al., ICML 2018). Each step the
    shared part gets Σ_t w_t g_t with the current weights; then the weights take one
    gradient step on L_grad (`gradnorm_weight_gradient`) with step size `lr`, are kept
    non-negative, and are renormalised so that they sum to T (the paper's rule).

    Design: the task gradients g_t are the Jacobian rows the balancer already has, so
    n_t = ‖g_t‖ costs nothing extra. The paper measures n_t at the last shared layer W
    to save backward passes; here it is the whole shared parameter vector, or, with
    `shared_reps`, the shared representation (LibMTL's rep_grad mode) — the cheap
    choice. The weights are a buffer updated by the balancer itself (plain gradient
    descent, `lr`), not an optimiser parameter: the paper steps them with the network's
    optimiser; doing it here keeps the balancer self-contained. The initial losses
    L_t(0) are each task's loss at its first step (buffer `initial_losses`; NaN until
    seen). When only some tasks are in a batch, only their weights move, rescaled to
    keep their sum, so the total stays T.

    Defaults: alpha = 1.5 (the paper's NYUv2 value), lr = 0.025. Needs positive losses
    at the first step (for L_t(0)) and `tasks` at construction.
    """

    task_names: list[str]  # required: set in __init__
    task_weights: Tensor
    initial_losses: Tensor

    properties = frozenset({"expected_structure"})

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        alpha: float = 1.5,
        lr: float = 0.025,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(tasks, chunk_size=chunk_size)
        if lr <= 0:
            raise ValueError(f"GradNorm lr must be > 0, got {lr}")
        self.alpha = alpha
        self.lr = lr
        self.register_buffer("task_weights", torch.ones(self.num_tasks))
        self.register_buffer("initial_losses", torch.full((self.num_tasks,), float("nan")))

    def weights(self, G: Tensor) -> Tensor:
        """The current task weights (all tasks); `combine` also updates them."""
        return self.task_weights.to(dtype=G.dtype, device=G.device)

    def combine(self, J: Tensor, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        rows = index.to(self.task_weights.device)
        first = torch.isnan(self.initial_losses[rows])
        if bool(first.any()):
            new = losses.to(self.initial_losses)[first.to(losses.device)]
            if bool((new <= 0).any()):
                bad = [self.task_names[i] if self.task_names else i for i in rows[first][new <= 0].tolist()]
                raise ValueError(
                    f"GradNorm measures training rates against the first loss, which must be > 0; "
                    f"task(s) {bad} start at a loss <= 0"
                )
            self.initial_losses[rows[first]] = new
        w = self.task_weights[rows].to(J)
        g = w @ J
        relative = losses.to(J) / self.initial_losses[rows].to(J)
        ratios = relative / relative.mean()
        step = gradnorm_weight_gradient(w, J.norm(dim=1), ratios, self.alpha)
        # A weight pushed below zero stops at zero (the paper's rule can overshoot).
        moved = (w - self.lr * step).clamp(min=0)
        if not float(moved.sum()) > 0:
            # Renormalising all-zero weights is impossible; keeping the old ones would freeze them silently.
            names = [self.task_names[i] for i in rows.tolist()]
            raise FloatingPointError(
                f"GradNorm's weight step (lr={self.lr}) drove the weights of every task in the batch {names} "
                "to zero, so they cannot be renormalised: lower lr"
            )
        self.task_weights[rows] = (moved * (w.sum() / moved.sum())).to(self.task_weights)
        return g, w
