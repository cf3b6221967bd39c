"""Equal weighting."""

from __future__ import annotations

from torch import Tensor

from mtlkit.weighting.base import LossBalancer
from mtlkit.weighting.registry import register


@register("ew", "equal", "sum")
class EW(LossBalancer):
    """Equal weighting: backpropagate Σ_t L_t (every weight is 1).

    The baseline of every MTL comparison (e.g. LibMTL's `EW`, which also sums rather
    than averages; TorchJD's `Sum`, hence also registered as "sum"). Stateless; `tasks`
    is optional.
    """

    unit_weights = True

    def combine(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        return losses.sum(), losses.new_ones(losses.shape)
