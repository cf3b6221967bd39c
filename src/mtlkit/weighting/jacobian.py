"""Per-task gradients in one batched backward pass, and the T×T Gramian."""

from __future__ import annotations

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

    The T backward passes run as one batched pass (`is_grads_batched`); `chunk_size`
    bounds how many rows are computed at once. Inputs a loss does not reach get zeros.
    """
    T = losses.numel()
    eye = torch.eye(T, dtype=losses.dtype, device=losses.device)
    step = chunk_size or T
    rows = []
    for start in range(0, T, step):
        grads = torch.autograd.grad(
            losses,
            list(inputs),
            grad_outputs=eye[start : start + step],
            retain_graph=True if start + step < T else retain_graph,
            is_grads_batched=True,
            allow_unused=True,
            materialize_grads=True,
        )
        rows.append(torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1))
    return torch.cat(rows, dim=0)


def gramian(J: Tensor) -> Tensor:
    """The T×T matrix of inner products between task gradients."""
    return J @ J.T


def task_specific_leaves(losses: Tensor, exclude: Sequence[Tensor]) -> list[Tensor]:
    """Leaf tensors requiring grad that `losses` depends on, other than `exclude`."""
    excluded = {id(t) for t in exclude}
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
            if id(variable) not in excluded:
                leaves.append(variable)
            continue
        stack.extend(next_fn for next_fn, _ in node.next_functions if next_fn is not None)
    return leaves
