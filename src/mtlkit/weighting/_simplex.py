"""Euclidean projection onto the probability simplex (MoCo, MoDo and SDMGrad step on it)."""

from __future__ import annotations

import torch
from torch import Tensor


def project_to_simplex(v: Tensor) -> Tensor:
    """argmin_{w ≥ 0, Σw = 1} ‖w − v‖ for a 1-D `v` (the sort-and-threshold rule, Held et al. 1974).

    The projection is v − θ clamped at zero, where θ makes the kept entries sum to one:
    with u the entries sorted in decreasing order, the kept ones are the longest prefix
    whose every element stays above the running threshold.
    """
    u, _ = torch.sort(v, descending=True)
    thresholds = (u.cumsum(0) - 1) / torch.arange(1, v.numel() + 1, dtype=v.dtype, device=v.device)
    kept = int((u > thresholds).nonzero().max())  # u[0] > u[0] − 1 always holds: never empty
    return (v - thresholds[kept]).clamp(min=0)


def restrict(weights: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """The simplex weights of the tasks `index`, renormalised to sum to one, and the share they held.

    Methods that keep simplex weights over all tasks step on the tasks of the batch only;
    storing `new * share` back leaves the other tasks' weights unchanged.
    """
    share = weights[index].sum()
    if float(share) > 0:
        return weights[index] / share, share
    return torch.full_like(weights[index], 1.0 / index.numel()), share
