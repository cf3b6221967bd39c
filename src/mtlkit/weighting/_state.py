"""Helpers for balancers whose state lives in the space of the shared parameters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn


def resize_buffers(module: nn.Module, state_dict: Mapping[str, Any], prefix: str, names: Sequence[str]) -> None:
    """Give buffers sized at the first step the checkpoint's shapes, before `load_state_dict` copies into them."""
    for name in names:
        key = prefix + name
        if key in state_dict:
            current = getattr(module, name)
            setattr(module, name, torch.empty_like(state_dict[key], device=current.device, dtype=current.dtype))


def refuse_shared_reps(module: nn.Module, state: str) -> ValueError:
    """The error for a method whose `state` follows the shared parameters' coordinates across steps."""
    name = type(module).__name__
    return ValueError(
        f"{name} keeps {state} across steps, which needs the task gradients on the shared parameters: at a "
        f"shared representation the coordinates are per-sample and change with every batch. Call "
        f"backward(losses, shared_params=...) (architectures: rep_grad=False)"
    )
