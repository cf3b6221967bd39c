"""Coordinate-wise trimmed mean (Yin et al., ICML 2018)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.registry import register


def trimmed_mean(J: Tensor, trim: int) -> Tensor:
    """Per column of J: drop the `trim` largest and `trim` smallest entries, average the rest."""
    T = J.shape[0]
    if T < 2 * trim + 1:  # noqa: SIM300 (T is the task count, not a constant)
        raise ValueError(
            f"TrimmedMean with trim={trim} needs at least 2·trim + 1 = {2 * trim + 1} task gradients, got {T}: "
            "lower trim or use another method for this few tasks"
        )
    return J.sort(dim=0).values[trim : T - trim].mean(dim=0)


@register("trimmed_mean", "trimmedmean")
class TrimmedMean(GradientBalancer):
    """Trimmed mean: per parameter coordinate, the mean of the task gradients without the extremes.

    `Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates
    <https://arxiv.org/abs/1803.01498>`_ (Yin, Chen, Ramchandran, Bartlett, ICML 2018),
    a robust aggregator that TorchJD offers as an MTL baseline. `trim` (default 1; the
    paper's β·m) values are dropped from each end of every coordinate, so every step needs
    T ≥ 2·trim + 1 task gradients (a batch labelling fewer tasks raises). It acts per
    coordinate, so it is no combination of the rows: it reports no task weights and
    needs the task gradients themselves (no `weights(G)`). Stateless.
    """

    # On J with at least `min_tasks` rows (fewer raise, by the method's definition).
    properties = frozenset({"expected_structure", "permutation_invariant"})

    def __init__(self, tasks: int | Sequence[str] | None = None, trim: int = 1, chunk_size: int | None = None) -> None:
        super().__init__(tasks, chunk_size=chunk_size)
        if trim < 0:
            raise ValueError(f"TrimmedMean trim must be >= 0, got {trim}")
        self.trim = trim
        self.min_tasks = 2 * trim + 1

    def aggregate(self, J: Tensor) -> Tensor:
        return trimmed_mean(J, self.trim)
