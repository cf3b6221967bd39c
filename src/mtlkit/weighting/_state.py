"""Helpers for balancers whose state lives in the space of the shared parameters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def resize_buffers(module: nn.Module, state_dict: Mapping[str, Any], prefix: str, names: Sequence[str]) -> None:
    """Give buffers sized at the first step the checkpoint's shapes and dtypes (they follow the gradients'
    dtype when sized), before `load_state_dict` copies into them."""
    for name in names:
        key = prefix + name
        if key in state_dict:
            current = getattr(module, name)
            setattr(module, name, torch.empty_like(state_dict[key], device=current.device))


def sized_like(module: nn.Module, name: str, J: Tensor) -> Tensor:
    """The buffer `name` (T × P state), allocated as zeros at the first step with J's P columns.

    Raises if a later step's gradients have another width: the state's coordinates would
    no longer be the same parameters.
    """
    buffer = getattr(module, name)
    if buffer.shape[1] == 0:
        setattr(module, name, J.new_zeros(buffer.shape[0], J.shape[1]))
    elif buffer.shape[1] != J.shape[1]:
        raise ValueError(
            f"{type(module).__name__} keeps per-coordinate state for {buffer.shape[1]} gradient coordinates (shared "
            "parameter entries, or a representation's features), but "
            f"this step's task gradients have {J.shape[1]}: the losses reached another set of shared parameters "
            "(a batch labelling only some tasks?). This method needs every step to reach the same shared parameters"
        )
    return getattr(module, name)
