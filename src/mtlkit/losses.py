"""Losses the Snorkel front door offers by name."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["cross_entropy_with_probs"]

REDUCTIONS = ("none", "mean", "sum")


def cross_entropy_with_probs(
    input: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    r"""Cross-entropy of ``[n, C]`` logits against ``[n, C]`` probabilistic targets (Snorkel's name).

    Row i's loss is :math:`-\sum_c w_c \, y_{ic} \log \mathrm{softmax}(x_i)_c`; with one-hot
    targets it equals `F.cross_entropy` on class indices with ``reduction="none"``.
    `reduction` ``"mean"`` averages the rows (the class weights do not renormalise it),
    ``"sum"`` adds them, ``"none"`` returns them. This is `F.cross_entropy` with
    probability targets, checked for shape.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"Keyword 'reduction' must be one of {list(REDUCTIONS)}, got {reduction!r}")
    if input.dim() != 2 or target.shape != input.shape:
        raise ValueError(
            f"cross_entropy_with_probs needs logits and target probabilities of the same shape [n, num_classes], "
            f"got {tuple(input.shape)} and {tuple(target.shape)}; for class indices use F.cross_entropy"
        )
    return F.cross_entropy(input, target.to(input.dtype), weight=weight, reduction=reduction)
