"""The global task Jacobian on shared parameters, all-reduced while the backward still runs.

In a data-parallel run a gradient method on shared parameters needs J summed over the
processes. `summed_blocks` runs the T task rows through the shared part in one vmapped
backward (as `jacobian` does); a hook on each parameter copies its T×|p| block into one
buffer as soon as the backward produces it, and the all-reduce of each stretch of the
buffer that is ready and large enough (`BUCKET_ELEMENTS`) starts at once
(`start_all_reduce_sum`): the communication of the last layers overlaps the backward of
the first ones. The buffer holds the blocks in a fixed order (the reverse of `params`,
the order in which a backward usually produces them; a block that comes early waits for
its predecessors), after the per-parameter 'reached' flags, and a parameter this process
does not reach holds zeros: every process starts the same collectives in the same order
whatever its batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor
from torch._C import _functorch

from mtlkit.weighting.jacobian import _as_vector, _edge_rows, _frontier, _is_vmap_failure

BUCKET_ELEMENTS = 1 << 18  # the smallest stretch of the buffer an all-reduce starts on, but for the last


class StartsAllReduce(Protocol):
    def start_all_reduce_sum(self, tensor: Tensor, kind: str) -> Callable[[], None]: ...


def summed_blocks(
    losses: Sequence[Tensor], params: Sequence[Tensor], reached: Sequence[bool], collectives: StartsAllReduce
) -> tuple[list[Tensor], list[bool]] | None:
    """(per parameter, its T×|p| block of J summed over processes; per parameter, whether some process reached it).

    None, before any collective, when the parameters have several dtypes or the backward
    cannot be vmapped (the caller then takes J another way). Each process's rows are its
    own: the sum is not divided by the number of processes.
    """
    params = list(params)
    if len({p.dtype for p in params}) != 1:
        return None
    edges = _frontier(losses, params)
    if edges is None:
        vec = _as_vector(losses)
        outputs: list = [vec]
        seeds = [torch.eye(len(losses), dtype=vec.dtype, device=vec.device)]
    else:
        outputs = list(edges)
        seeds, _ = _edge_rows(losses, edges, [])
    T = seeds[0].shape[0]
    order = list(reversed(range(len(params))))
    offsets, end = {}, len(params)
    for i in order:
        offsets[i] = end
        end += T * params[i].numel()
    buffer = torch.empty(end, dtype=params[0].dtype, device=params[0].device)
    buffer[: len(params)] = torch.tensor(reached, dtype=buffer.dtype)
    blocks = [buffer[offsets[i] : offsets[i] + T * p.numel()].view(T, -1) for i, p in enumerate(params)]
    filled = [False] * len(params)
    waits: list[Callable[[], None]] = []
    ready = 0  # blocks order[:ready] are in the buffer
    sent = 0  # buffer[:sent] has been handed to an all-reduce

    def send(last: bool) -> None:
        nonlocal ready, sent
        while ready < len(order) and filled[order[ready]]:
            ready += 1
        upto = offsets[order[ready]] if ready < len(order) else end
        if upto - sent >= BUCKET_ELEMENTS or (last and upto > sent):
            waits.append(collectives.start_all_reduce_sum(buffer[sent:upto], "jacobian"))
            sent = upto

    def take(i: int, grad: Tensor) -> Tensor:
        if _functorch.is_batchedtensor(grad):
            blocks[i].copy_(_functorch.get_unwrapped(grad).movedim(_functorch.maybe_get_bdim(grad), 0).reshape(T, -1))
        else:  # the same gradient for every row
            blocks[i].copy_(grad.detach().reshape(1, -1))
        filled[i] = True
        send(last=False)
        return grad.new_zeros(()).expand(grad.shape)  # nothing of size |p| is kept by the backward

    handles = [p.register_hook(lambda grad, i=i: take(i, grad)) for i, p in enumerate(params)]
    try:
        torch.func.vmap(functools.partial(_rows, outputs, params))(*seeds)
    except RuntimeError as error:
        if not _is_vmap_failure(error) or sent > 0:
            raise
        return None
    finally:
        for handle in handles:
            handle.remove()
    for i, done in enumerate(filled):
        if not done:  # not reached here: zeros, so that every process sends the same layout
            blocks[i].zero_()
            filled[i] = True
    send(last=True)
    for wait in waits:
        wait()
    return blocks, (buffer[: len(params)] > 0).tolist()


def _rows(outputs: list, params: list[Tensor], *seeds: Tensor) -> tuple[Tensor, ...]:
    """The backward of one row (vmapped); the hooks take the blocks, the results are stand-ins."""
    grads = torch.autograd.grad(outputs, params, seeds, retain_graph=True, allow_unused=True)
    return tuple(g for g in grads if g is not None)  # vmap returns tensors only
