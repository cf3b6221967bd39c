"""Dual-balancing multi-task learning (Lin et al., 2023)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.registry import register

# Inside the log, as LibMTL: a loss of exactly 0 keeps a finite log-gradient.
_LOG_EPS = 1e-8


def magnitude_balance(grads: Tensor) -> Tensor:
    """Σ_t (max_s ‖ĝ_s‖ / ‖ĝ_t‖) ĝ_t: every row of `grads` scaled to the largest norm.

    A zero row keeps scale 0 (it adds nothing whatever its scale).
    """
    norms = grads.norm(dim=1)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    scale = torch.where(norms > 0, norms.max() / safe, torch.zeros_like(norms))
    return scale @ grads


@register("db_mtl", "dbmtl")
class DBMTL(GradientBalancer):
    """DB-MTL: balance loss scales by a log transform and gradient magnitudes to the largest.

    `Dual-Balancing for Multi-Task Learning <https://arxiv.org/abs/2308.12029>`_
    (Lin et al., 2023). Per task, ĝ_t ← β_k ĝ_t + (1 − β_k) ∇log(L_t + 1e-8) with
    β_k = beta / k^beta_sigma at the task's k-th step (ĝ starts at 0); the update is
    Σ_t (max_s ‖ĝ_s‖ / ‖ĝ_t‖) ĝ_t (`magnitude_balance`). ∇log L_t = ∇L_t / L_t, so the
    Jacobian of the raw losses and their values suffice: no second backward.

    Defaults as LibMTL (by the paper's authors): beta = 0.9, beta_sigma = 0. Works with
    shared parameters and, unlike LibMTL, with `shared_reps` (then ĝ_t lives at the
    representation, whose size must not change between steps). State in `state_dict()`:
    `grad_ema` (T × P, allocated at the first step) and `steps` (per task). The update
    is not a combination of this step's task gradients, so no weights are reported.
    Losses must be >= 0. Needs `tasks` at construction.
    """

    grad_ema: Tensor
    steps: Tensor

    properties = frozenset({"expected_structure"})

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        beta: float = 0.9,
        beta_sigma: float = 0.0,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(tasks, chunk_size=chunk_size)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"DB-MTL beta must be in [0, 1), got {beta}")
        if beta_sigma < 0:
            raise ValueError(f"DB-MTL beta_sigma must be >= 0, got {beta_sigma}")
        self.beta = beta
        self.beta_sigma = beta_sigma
        self.register_buffer("grad_ema", torch.zeros(self.num_tasks, 0))
        self.register_buffer("steps", torch.zeros(self.num_tasks, dtype=torch.long))

    def combine(self, J: Tensor, losses: Tensor, index: Tensor) -> tuple[Tensor, None]:
        if bool((losses < 0).any()):
            bad = [self.task_names[i] if self.task_names else i for i in index[losses < 0].tolist()]
            raise ValueError(f"DB-MTL takes the log of the losses; task(s) {bad} have a negative loss")
        if self.grad_ema.shape[1] == 0:
            self.grad_ema = torch.zeros(self.num_tasks, J.shape[1], dtype=J.dtype, device=J.device)
        if self.grad_ema.shape[1] != J.shape[1]:
            raise ValueError(
                f"DB-MTL keeps an average of {self.grad_ema.shape[1]}-dim task gradients but got "
                f"{J.shape[1]}-dim ones: the shared representation changed size, or (shared_params "
                "mode) this batch's losses reach a different set of shared parameters"
            )
        rows = index.to(self.steps.device)
        self.steps[rows] += 1
        beta = (self.beta / self.steps[rows].to(J.dtype) ** self.beta_sigma).to(J.device).unsqueeze(1)
        log_grads = J / (losses.to(J) + _LOG_EPS).unsqueeze(1)
        ema_rows = index.to(self.grad_ema.device)
        ema = self.grad_ema[ema_rows].to(J).lerp_(log_grads, 1 - beta)  # β ĝ + (1 − β) ∇log L
        self.grad_ema[ema_rows] = ema.to(self.grad_ema)
        return magnitude_balance(ema), None

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # grad_ema is sized at the first step; take the checkpoint's size before loading it.
        saved = state_dict.get(prefix + "grad_ema")
        if saved is not None:
            self.grad_ema = torch.zeros_like(saved, device=self.grad_ema.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
