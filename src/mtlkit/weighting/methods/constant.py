"""Constant (static) task weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlkit.weighting.base import LossBalancer
from mtlkit.weighting.registry import register


@register("constant", "static")
class Constant(LossBalancer):
    """Constant: backpropagate Σ_t c_t L_t with fixed, user-chosen weights c_t.

    TorchJD's `Constant` aggregator and scalarizer; the "static weights" baseline that
    tuned comparisons need. `weights` is one value per task in task order, or a mapping
    {task name: weight} (tasks left out weigh 1); default: 1 for every task (= `ew`).
    Weights must be finite and ≥ 0; needs `tasks`. Stateless apart from the weights (a buffer).
    """

    weight: Tensor

    def __init__(
        self, tasks: int | Sequence[str] | None = None, weights: Sequence[float] | Mapping[str, float] | None = None
    ) -> None:
        super().__init__(tasks)
        values = torch.ones(self.num_tasks, dtype=torch.float64)  # raises without tasks
        names = list(self.task_names or ())
        if isinstance(weights, Mapping):
            unknown = sorted(set(weights) - set(names))
            if unknown:
                raise ValueError(f"Constant weights name unknown task(s) {unknown}; the tasks are {names}")
            weights = [float(weights.get(name, 1.0)) for name in names]
        if weights is not None:
            values = torch.as_tensor([float(w) for w in weights], dtype=torch.float64)
            if values.numel() != self.num_tasks:
                raise ValueError(
                    f"Constant got {values.numel()} weights for the {self.num_tasks} tasks {self.task_names}"
                )
            if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
                raise ValueError(f"Constant weights must be finite and >= 0, got {list(weights)}")
        self.register_buffer("weight", values)

    def combine(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        w = self.weight[index].to(losses.dtype)
        return (w * losses).sum(), w
