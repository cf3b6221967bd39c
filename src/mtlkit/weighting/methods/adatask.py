"""Task-aware adaptive learning rates (Yang et al., AAAI 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting._state import resize_buffers, sized_like
from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.registry import register


@register("adatask")
class AdaTask(GradientBalancer):
    """AdaTask: Adam's moments kept per task on the shared parameters, so no task dominates them.

    `AdaTask: A Task-Aware Adaptive Learning Rate Approach to Multi-Task Learning
    <https://arxiv.org/abs/2211.15055>`_ (Yang, Li, Chen, Wei, Wang, AAAI 2023). With one
    Adam over the summed gradient, a task with large gradients dominates the shared
    second moment and so every task's effective learning rate. AdaTask keeps m_t, v_t
    per task (β₁, β₂, bias-corrected with the task's own step count) and updates the
    shared parameters with Σ_t m̂_t / (√v̂_t + ε).

    That sum is what this balancer writes into the shared parameters' `.grad`: train
    with plain SGD (no momentum) so that the optimizer applies it as is — an Adam
    optimizer would normalise it a second time. Task heads get their own raw gradient
    (the paper runs Adam on them; with SGD they get SGD). Defaults: Adam's β = (0.9,
    0.999), ε = 1e-8. The moments (2 × T × P) and step counts are buffers. Every step
    must reach the same shared parameters (else a ValueError).

    Acts on the shared parameters only: `shared_reps` raises a ValueError. AdaTask is an
    optimizer rule, one adaptive learning rate per task and per shared parameter entry;
    its update is not a weighted sum of task gradients, so there is nothing that a
    representation's gradient could carry back to the trunk's parameters (moments at
    the representation would adapt a rate for each feature, not for each parameter).
    For the same reason it reports no task weights and cannot be wrapped by every/ema.
    """

    exp_avg: Tensor
    exp_avg_sq: Tensor
    task_steps: Tensor

    properties = frozenset({"expected_structure"})

    supports_shared_reps = False  # per-parameter-entry moments: no representation form (see above)

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(tasks, chunk_size=chunk_size)
        self.betas, self.eps = betas, eps
        T = self.num_tasks
        self.register_buffer("exp_avg", torch.zeros(T, 0))  # sized at the first step
        self.register_buffer("exp_avg_sq", torch.zeros(T, 0))
        self.register_buffer("task_steps", torch.zeros(T, dtype=torch.long))

    def combine(self, J: Tensor, losses: Tensor, index: Tensor) -> tuple[Tensor, None]:
        sized_like(self, "exp_avg", J)
        sized_like(self, "exp_avg_sq", J)
        beta1, beta2 = self.betas
        m = beta1 * self.exp_avg[index] + (1 - beta1) * J
        v = beta2 * self.exp_avg_sq[index] + (1 - beta2) * J**2
        self.exp_avg[index], self.exp_avg_sq[index] = m, v
        self.task_steps[index] += 1
        k = self.task_steps[index].to(J).unsqueeze(1)
        m_hat, v_hat = m / (1 - beta1**k), v / (1 - beta2**k)
        return (m_hat / (v_hat.sqrt() + self.eps)).sum(dim=0), None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        resize_buffers(self, state_dict, prefix, ["exp_avg", "exp_avg_sq"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
