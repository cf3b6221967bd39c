"""Per-task gradients in one batched backward pass, and the T×T Gramian.

`jacobian(losses, inputs)` returns the T×N matrix of per-task gradients. The T
backward passes run as one batched pass (`torch.autograd.grad(..., is_grads_batched=True)`,
which vmaps the backward graph), `chunk_size` rows at a time. `chunk_size=1` runs T
plain `autograd.grad` calls instead: use it for graphs whose backward cannot be vmapped
(a custom `autograd.Function` that leaves PyTorch in its backward, `.item()` in a hook).
When the batched pass hits such an operation, the engine says so in a `RuntimeWarning`
and computes the rows one by one; other errors propagate unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor


def jacobian(
    losses: Tensor,
    inputs: Sequence[Tensor],
    *,
    chunk_size: int | None = None,
    retain_graph: bool = True,
) -> Tensor:
    """T×N matrix whose row t is ∂losses[t]/∂inputs, flattened and concatenated.

    `chunk_size` bounds how many rows one batched backward computes (None: all T);
    1 means T sequential backward passes. Inputs a loss does not reach get zeros.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")
    inputs = list(inputs)
    if chunk_size == 1:
        return _sequential(losses, inputs, retain_graph)
    try:
        return _batched(losses, inputs, chunk_size)
    except RuntimeError as error:
        if not _is_vmap_failure(error):
            raise
        warnings.warn(
            f"the task backward passes could not be batched ({error}); computing the "
            f"{losses.numel()} task gradients one at a time. Pass chunk_size=1 to do so directly.",
            RuntimeWarning,
            stacklevel=2,
        )
        return _sequential(losses, inputs, retain_graph)


def gramian(J: Tensor) -> Tensor:
    """The T×T matrix of inner products between task gradients."""
    return J @ J.T


def reachable_leaves(losses: Tensor) -> list[Tensor]:
    """Leaf tensors requiring grad that `losses` depends on, in graph order."""
    leaves: list[Tensor] = []
    seen_nodes: set = set()
    stack = [losses.grad_fn] if losses.grad_fn is not None else []
    while stack:
        node = stack.pop()
        if node in seen_nodes:
            continue
        seen_nodes.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves.append(variable)
            continue
        stack.extend(next_fn for next_fn, _ in node.next_functions if next_fn is not None)
    return leaves


def task_specific_leaves(losses: Tensor, exclude: Sequence[Tensor]) -> list[Tensor]:
    """Leaf tensors requiring grad that `losses` depends on, other than `exclude`."""
    excluded = {id(t) for t in exclude}
    return [leaf for leaf in reachable_leaves(losses) if id(leaf) not in excluded]


def _batched(losses: Tensor, inputs: list[Tensor], chunk_size: int | None) -> Tensor:
    T = losses.numel()
    eye = torch.eye(T, dtype=losses.dtype, device=losses.device)
    step = chunk_size or T
    rows = []
    for start in range(0, T, step):
        # The graph is kept even on the last chunk so that, if vmap fails part-way,
        # the sequential path can still run on it; it is freed with `losses`.
        seeds = eye[start : start + step]
        grads = torch.autograd.grad(
            losses, inputs, grad_outputs=seeds, retain_graph=True, is_grads_batched=True, allow_unused=True
        )
        # Not materialize_grads: with batched grads it returns unused inputs' zeros without the batch dim.
        rows.append(_flatten_rows([_zeros_if_none(g, x, len(seeds)) for g, x in zip(grads, inputs)]))
    return rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)


def _sequential(losses: Tensor, inputs: list[Tensor], retain_graph: bool) -> Tensor:
    T = losses.numel()
    flat = losses.reshape(-1)
    rows = []
    for t in range(T):
        grads = torch.autograd.grad(flat[t], inputs, retain_graph=retain_graph or t < T - 1, allow_unused=True)
        rows.append(_flatten_rows([_zeros_if_none(g, x, None) for g, x in zip(grads, inputs)]))
    return torch.cat(rows, dim=0)


def _zeros_if_none(grad: Tensor | None, x: Tensor, rows: int | None) -> Tensor:
    """The gradient with a leading row dimension; zeros for an input the losses do not reach."""
    if grad is None:
        return x.new_zeros((rows or 1, *x.shape))
    return grad if rows is not None else grad.unsqueeze(0)


def _flatten_rows(grads: Sequence[Tensor]) -> Tensor:
    return torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1)


def _is_vmap_failure(error: RuntimeError) -> bool:
    # The two message families PyTorch raises for operations vmap cannot batch.
    message = str(error)
    return message.startswith("Batching rule not implemented") or "vmap" in message.lower()
