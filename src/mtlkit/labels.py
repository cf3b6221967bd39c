"""The label convention every front door shares: which rows of a target carry no label.

A class label of ``-1`` and a regression target of ``NaN`` mean "no label". Such rows are
left out of the task's loss (`mtlkit.protocol.task_loss`), of the per-task counts that
balancers and distributed weighting see (`StepOutput.counts`), and of the metrics
(`Scorer`). The marker of a task is its Scorer's `abstain_label` where the task has a
Scorer; ``"auto"`` (the default) picks ``-1`` for integer labels and ``NaN`` for
floating-point targets, so a real target of ``-1.0`` is a value, not a missing label.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

NO_CLASS = -1  # an integer class label meaning "no label"
NO_VALUE = float("nan")  # a floating-point target meaning "no label"
AUTO = "auto"  # NO_CLASS for integer labels, NO_VALUE for floating-point ones

Marker = int | float | str | None  # None: every row is labelled


def marker_of(scorer: Any) -> Marker:
    """The missing-label marker of a task scored by `scorer` (its `abstain_label`; the convention without one)."""
    return getattr(scorer, "abstain_label", AUTO)


def resolve(values: Tensor, marker: Marker = AUTO) -> int | float | None:
    """The value that marks a missing label in `values` (``"auto"`` resolved by dtype)."""
    if isinstance(marker, str):
        if marker != AUTO:
            raise ValueError(f"missing-label marker {marker!r}: give a number, float('nan'), None or {AUTO!r}")
        return NO_VALUE if values.is_floating_point() else NO_CLASS
    return marker


def missing(values: Tensor, marker: Marker = AUTO) -> Tensor:
    """Elementwise: True where `values` holds the missing-label marker."""
    marker = resolve(values, marker)
    if marker is None:
        return torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    if isinstance(marker, float) and math.isnan(marker):
        return torch.isnan(values) if values.is_floating_point() else torch.zeros_like(values, dtype=torch.bool)
    return values == marker


def unlabelled_rows(values: Tensor, marker: Marker = AUTO) -> Tensor:
    """Per row (first dimension): True when the row has no label; a row of a 2-D or larger
    target is unlabelled only when every one of its entries is the marker."""
    absent = missing(values, marker)
    return absent if values.dim() <= 1 else absent.flatten(1).all(dim=1)


def labelled_rows(values: Tensor, marker: Marker = AUTO) -> Tensor:
    """Per row: True when the row has a label (the complement of `unlabelled_rows`)."""
    return ~unlabelled_rows(values, marker)
