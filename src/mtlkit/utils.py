"""Snorkel's helper functions: padding ragged batches, collecting flow outputs, and
turning probabilities into predictions (with Snorkel's tie-break policies) and back.

`snorkel.classification.utils` and `snorkel.utils` users import these from here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = ["collect_flow_outputs_by_suffix", "list_to_tensor", "pad_batch", "preds_to_probs", "probs_to_preds"]

TIE_BREAK_POLICIES = ("random", "true-random", "abstain")
V = TypeVar("V")


def pad_batch(
    batch: Sequence[Tensor], max_len: int = 0, pad_value: float = 0, left_padded: bool = False
) -> tuple[Tensor, Tensor]:
    """Stack 1-D tensors of different lengths into a ``[len(batch), L]`` tensor and its padding mask.

    L is the longest length, or `max_len` when it is positive and shorter (longer items
    are cut: their head kept when right-padded, their tail when left-padded). The mask
    (same dtype as the batch) is 1 where the padded tensor equals `pad_value`, as in
    Snorkel, so a real value equal to `pad_value` is marked too.
    """
    if not batch:
        raise ValueError("pad_batch: the batch is empty; give at least one tensor")
    length = max(len(item) for item in batch)
    if 0 < max_len < length:
        length = max_len
    padded = batch[0].new_full((len(batch), length), pad_value)
    for row, item in enumerate(batch):
        n = min(len(item), length)
        if n == 0:
            continue
        if left_padded:
            padded[row, length - n :] = item[len(item) - n :]
        else:
            padded[row, :n] = item[:n]
    return padded, torch.eq(padded, pad_value).to(padded.dtype)


def list_to_tensor(items: Sequence[Tensor]) -> Tensor:
    """One tensor from a list: stacked when the items are scalars or share a shape of 2+
    dimensions, else each item flattened and the rows right-padded with 0."""
    if all(item.dim() == 0 for item in items):
        return torch.stack(list(items))
    if all(item.dim() != 1 and item.shape == items[0].shape for item in items):
        return torch.stack(list(items))
    return pad_batch([item.reshape(-1) for item in items])[0]


def collect_flow_outputs_by_suffix(output_dict: Mapping[str, V], suffix: str) -> list[V]:
    """The values of the operations whose names end in `suffix`, in sorted name order."""
    return [output_dict[name] for name in sorted(output_dict) if name.endswith(suffix)]


def _tie_hash(row: int) -> int:
    # Snorkel's deterministic tie-break: SHA-1 of the row number's decimal string
    return int(hashlib.sha1(str(row).encode("utf-8")).hexdigest(), 16)


def probs_to_preds(probs: Any, tie_break_policy: str = "random", tol: float = 1e-5) -> Any:
    """Class predictions from ``[n, num_classes]`` probabilities, ties broken as Snorkel does.

    Classes within `tol` of a row's maximum tie. Policies: ``"random"`` picks among the
    tied classes by a hash of the row number (deterministic: the same rows always get
    the same choice), ``"true-random"`` draws with torch's global generator,
    ``"abstain"`` predicts -1. Returns a tensor for a tensor, else a NumPy int array.
    """
    if tie_break_policy not in TIE_BREAK_POLICIES:
        raise ValueError(f"tie_break_policy={tie_break_policy!r} is not one of {list(TIE_BREAK_POLICIES)}")
    as_tensor = isinstance(probs, Tensor)
    values = probs.detach() if as_tensor else torch.as_tensor(np.asarray(probs))
    if values.dim() != 2 or values.shape[1] < 2:
        raise ValueError(f"probs must have shape [n, num_classes] with at least 2 classes, got {tuple(values.shape)}")
    tied = (values.max(dim=1, keepdim=True).values - values).abs() < tol
    preds = tied.to(torch.int8).argmax(dim=1).long()  # the first class within tol of the maximum
    for row in torch.nonzero(tied.sum(dim=1) > 1).flatten().tolist():
        choices = torch.nonzero(tied[row]).flatten()
        if tie_break_policy == "random":
            preds[row] = choices[_tie_hash(row) % len(choices)]
        elif tie_break_policy == "true-random":
            preds[row] = choices[torch.randint(len(choices), ())]
        else:
            preds[row] = -1
    return preds if as_tensor else preds.numpy()


def preds_to_probs(preds: Any, num_classes: int) -> Any:
    """One-hot ``[n, num_classes]`` probabilities of integer predictions (a tensor for a tensor, else NumPy)."""
    as_tensor = isinstance(preds, Tensor)
    values = torch.as_tensor(preds if as_tensor else np.asarray(preds)).reshape(-1).long()
    if bool((values < 0).any()):
        raise ValueError("preds_to_probs: predictions hold -1 (abstain), which has no probability row; drop them first")
    if bool((values >= num_classes).any()):
        raise ValueError(f"preds_to_probs: predictions hold {int(values.max())}, outside the {num_classes} classes")
    probs = torch.nn.functional.one_hot(values, num_classes)
    return probs.to(torch.get_default_dtype()) if as_tensor else probs.to(torch.float64).numpy()
