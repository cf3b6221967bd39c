"""Mean of the task losses."""

from __future__ import annotations

from torch import Tensor

from mtlkit.weighting.base import LossBalancer
from mtlkit.weighting.registry import register


@register("mean")
class Mean(LossBalancer):
    """Mean: backpropagate (1/T) Σ_t L_t, every weight 1/T.

    TorchJD's `Mean` aggregator and scalarizer (the baseline beside `Sum`, which is
    mtlkit's `ew`, registered as "ew", "equal" and "sum"). T counts the tasks labelled in
    the batch, so the weights always sum to 1. Stateless; `tasks` is optional.
    """

    def combine(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        return losses.mean(), losses.new_full(losses.shape, 1.0 / losses.numel())
