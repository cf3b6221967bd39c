"""Wrapping layers that combine or pick node outputs in a task graph.

`Concat`, `SimpleSelect` and `SliceSelect` keep torchMTL's names, arguments and
semantics (`torchmtl.wrapping_layers`); unlike there, all are `nn.Module`s, so
they show up in `print(model)` and move with `model.to(...)`. A node with
several anchors calls its layer with one positional argument per anchor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Concat", "Lambda", "Mean", "SimpleSelect", "SliceSelect", "Stack", "Sum"]


class Concat(nn.Module):
    """``torch.cat(inputs, dim)`` over the positional inputs."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *inputs: Tensor) -> Tensor:
        return torch.cat(inputs, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class SimpleSelect(nn.Module):
    """``X[selection_axis]``: picks one element of the input (torchMTL semantics).

    Despite its name, `selection_axis` is the index taken along the first axis,
    e.g. ``SimpleSelect(0)`` returns ``X_1`` from an input ``X = [X_1, X_2]``.
    """

    def __init__(self, selection_axis: Any) -> None:
        super().__init__()
        self.selection_axis = selection_axis

    def forward(self, x: Any) -> Any:
        return x[self.selection_axis]

    def extra_repr(self) -> str:
        return f"selection_axis={self.selection_axis!r}"


class SliceSelect(nn.Module):
    """``X[sel_slice]``: indexes the input with a slice (torchMTL semantics)."""

    def __init__(self, sel_slice: slice) -> None:
        super().__init__()
        self.sel_slice = sel_slice

    def forward(self, x: Any) -> Any:
        return x[self.sel_slice]

    def extra_repr(self) -> str:
        return f"sel_slice={self.sel_slice!r}"


class Sum(nn.Module):
    """Element-wise sum of the positional inputs (broadcasting as ``+`` does)."""

    def forward(self, first: Tensor, *rest: Tensor) -> Tensor:
        out = first
        for x in rest:
            out = out + x
        return out


class Mean(nn.Module):
    """Element-wise mean of the positional inputs."""

    def forward(self, first: Tensor, *rest: Tensor) -> Tensor:
        out = first
        for x in rest:
            out = out + x
        return out / (1 + len(rest))


class Stack(nn.Module):
    """``torch.stack(inputs, dim)``: a new axis holding the positional inputs."""

    def __init__(self, dim: int = 0) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *inputs: Tensor) -> Tensor:
        return torch.stack(inputs, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Lambda(nn.Module):
    """Wraps a plain callable ``fn(*inputs)`` as a module (it holds no parameters)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        if not callable(fn):
            raise TypeError(f"Lambda needs a callable, got {type(fn).__name__}")
        self.fn = fn

    def forward(self, *inputs: Any) -> Any:
        return self.fn(*inputs)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))
