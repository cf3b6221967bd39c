"""Per-task gradients (the T×N task Jacobian) and the T×T Gramian.

- `jacobian(losses, inputs)`: the T backward passes run as one batched pass
  (`torch.autograd.grad(..., is_grads_batched=True)`, which vmaps the backward graph),
  `chunk_size` rows at a time. Used on shared parameters, where every row traverses the
  trunk and batching turns T matrix products into one. `chunk_size=1` runs T plain
  `autograd.grad` calls instead, for graphs whose backward cannot be vmapped (a custom
  `autograd.Function` that leaves PyTorch in its backward, `.item()` in a hook). When the
  batched pass hits such an operation, the engine says so in a `RuntimeWarning` and
  computes the rows one by one; other errors propagate unchanged.
- `rep_jacobian(losses, reps, also=head_params)`: rows at a shared representation from
  ONE backward pass over the heads (per-task hooks on the nodes that read the
  representation), which also yields the heads' own gradients. A batched pass would
  push T rows, T−1 of them zero, through every head (T² head passes).
- `task_jacobian(losses, inputs)`: one plain backward per loss, on its own graph.
- `params_gramian(losses, params)`: the T×T Gramian JJᵀ on shared parameters without
  ever holding J. One batched backward runs the T rows together; a hook on each
  parameter folds that parameter's T×|p| block into G as soon as the backward produces
  it, and hands the engine a zero-stride stand-in instead, so at most one parameter's
  block (plus the batched activation gradients of the backward itself) is alive at a
  time. `weighted_backward` then applies weights w in one backward of Σ_t w_t L_t.
  This is how methods that see J only through G (MGDA, UPGrad, IMTL-G, CAGrad,
  Aligned-MTL, Nash-MTL, PCGrad, ...) run on shared parameters: peak memory near a
  plain backward's plus one block, for the price of one more backward through the trunk.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor
from torch._C import _functorch


def jacobian(
    losses: Tensor | Sequence[Tensor],
    inputs: Sequence[Tensor],
    *,
    chunk_size: int | None = None,
    retain_graph: bool = True,
) -> Tensor:
    """T×N matrix whose row t is ∂losses[t]/∂inputs, flattened and concatenated.

    `losses` holds T scalar losses (a sequence, or a 1-D tensor). `chunk_size` bounds
    how many rows one batched backward computes (None: all T); 1 means one plain
    backward per loss (`task_jacobian`). Inputs a loss does not reach get zeros.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")
    inputs = list(inputs)
    if chunk_size == 1:
        return task_jacobian(_as_list(losses), inputs, retain_graph=retain_graph)
    try:
        return _batched(_as_vector(losses), inputs, chunk_size)
    except RuntimeError as error:
        if not _is_vmap_failure(error):
            raise
        warnings.warn(
            f"the task backward passes could not be batched ({error}); computing the "
            f"{len(_as_list(losses))} task gradients one at a time. Pass chunk_size=1 to do so directly.",
            RuntimeWarning,
            stacklevel=2,
        )
        return task_jacobian(_as_list(losses), inputs, retain_graph=retain_graph)


def task_jacobian(losses: Sequence[Tensor], inputs: Sequence[Tensor], *, retain_graph: bool = True) -> Tensor:
    """T×N Jacobian from one `autograd.grad` call per scalar loss, on the losses' own graphs.

    For inputs that each task reaches through its own sub-graph (a shared
    representation feeding separate heads) this does T head-sized passes, where one
    batched pass over the stacked losses does T² (every head sees all T rows).
    """
    inputs = list(inputs)
    rows = []
    for t, loss in enumerate(losses):
        keep = retain_graph or t < len(losses) - 1
        grads = torch.autograd.grad(loss, inputs, retain_graph=keep, allow_unused=True)
        rows.append(_flatten_rows([_zeros_if_none(g, x, None) for g, x in zip(grads, inputs)]))
    return torch.cat(rows, dim=0)


def rep_jacobian(
    losses: Sequence[Tensor], reps: Sequence[Tensor], *, also: Sequence[Tensor] = ()
) -> tuple[Tensor, tuple[Tensor | None, ...]]:
    """T×N Jacobian at shared representations from one backward pass, and ∂Σ_t L_t/∂`also`.

    Each task reads a representation through autograd nodes of its own (its head's
    first operations). Hooks on those nodes record each task's share of one backward
    of Σ_t L_t, which is exactly ∂L_t/∂rep; the same pass gives the gradients of `also`
    (the heads' parameters; None where unreached). When a node reading a representation
    is reached from several tasks (a layer shared after the representation), the shares
    cannot be told apart and the rows come from `task_jacobian` instead.
    """
    reps, also = list(reps), list(also)
    total = torch.stack(list(losses)).sum()
    targets = [(r.grad_fn, r.output_nr) for r in reps]
    owner = _reader_owners(losses, targets)
    if owner is None:
        J = task_jacobian(losses, reps)
        return J, torch.autograd.grad(total, also, retain_graph=True, allow_unused=True) if also else ()
    rows: list[list[Tensor | None]] = [[None] * len(reps) for _ in losses]
    handles = []
    for node, t in owner.items():
        edges = [(i, targets.index(edge)) for i, edge in enumerate(node.next_functions) if edge in targets]
        handles.append(node.register_hook(functools.partial(_record, rows[t], edges)))
    try:
        grads = torch.autograd.grad(total, [*reps, *also], retain_graph=True, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    blocks = [
        torch.stack([row[k] if row[k] is not None else torch.zeros_like(r) for row in rows]).reshape(len(rows), -1)
        for k, r in enumerate(reps)
    ]
    if not blocks:  # no representation given: a Jacobian without columns
        return total.new_zeros(len(rows), 0), grads
    return (blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)), grads[len(reps) :]


def batch_rows(J: Tensor, reps: Sequence[Tensor]) -> Tensor:
    """Rows of a `rep_jacobian` summed over each representation's leading (batch) dimension.

    T×(B·D) per-sample rows become T×D rows, the gradient of each task with respect to
    a representation shared by the whole batch; LibMTL's `rep_grad` takes its weights
    from these.
    """
    blocks, offset = [], 0
    for r in reps:
        n = r.numel()
        blocks.append(J[:, offset : offset + n].reshape(J.shape[0], r.shape[0] if r.dim() else 1, -1).sum(dim=1))
        offset += n
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)


def leaves_above(losses: Sequence[Tensor], reps: Sequence[Tensor]) -> list[Tensor]:
    """Leaf tensors requiring grad that the losses reach without going through `reps`."""
    stops = {r.grad_fn for r in reps if r.grad_fn is not None}
    stop_leaves = {id(r) for r in reps if r.grad_fn is None}
    leaves, seen = [], set()
    stack = [loss.grad_fn for loss in losses]
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in stops:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            if id(variable) not in stop_leaves:
                leaves.append(variable)
            continue
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return leaves


def gramian(J: Tensor) -> Tensor:
    """The T×T matrix of inner products between task gradients."""
    return J @ J.T


def params_gramian(losses: Sequence[Tensor], params: Sequence[Tensor]) -> Tensor:
    """G = JJᵀ for the T×P Jacobian of `losses` on `params`, accumulated block by block.

    The graph is kept (a `weighted_backward` follows). When the backward cannot be
    vmapped, a `RuntimeWarning` says so and G comes from the rows of one plain backward
    per task (J is then held, as with `chunk_size=1`).
    """
    vec = _as_vector(losses)
    T = vec.numel()
    G = vec.new_zeros(T, T)

    def fold(grad: Tensor) -> Tensor:
        # `grad` is the batched gradient (one row per task) of one parameter, seen per row inside vmap.
        if _functorch.is_batchedtensor(grad):
            block = _functorch.get_unwrapped(grad).movedim(_functorch.maybe_get_bdim(grad), 0).reshape(T, -1)
            G.addmm_(block, block.T)
        else:  # the same gradient for every row
            G.add_(grad.detach().pow(2).sum())
        return grad.new_zeros(()).expand(grad.shape)  # nothing of size |p| is kept

    handles = [p.register_hook(fold) for p in params]
    try:
        torch.func.vmap(lambda seed: torch.autograd.grad(vec, params, seed, retain_graph=True, allow_unused=True))(
            torch.eye(T, dtype=vec.dtype, device=vec.device)
        )
    except RuntimeError as error:
        if not _is_vmap_failure(error):
            raise
        warnings.warn(
            f"the task backward passes could not be batched ({error}); computing the {T} task "
            "gradients one at a time for their Gramian. Pass chunk_size=1 to do so directly.",
            RuntimeWarning,
            stacklevel=2,
        )
        for handle in handles:
            handle.remove()
        return gramian(task_jacobian(_as_list(losses), params))
    finally:
        for handle in handles:
            handle.remove()
    return G


def gramian_root(G: Tensor) -> Tensor:
    """A T×T matrix R with R Rᵀ = G (G symmetric PSD): stands in for J in a method that sees only JJᵀ."""
    eigenvalues, vectors = torch.linalg.eigh(G.double())
    return (vectors * eigenvalues.clamp(min=0).sqrt()).to(G.dtype)


def weighted_backward(
    losses: Sequence[Tensor], weights: Tensor, params: Sequence[Tensor], specific: Sequence[Tensor] = ()
) -> Tensor:
    """Add ∂Σ_t w_t L_t/∂params to the params' `.grad` (and ∂Σ_t L_t/∂`specific` to theirs).

    Returns the flat update written to `params` (length P). Frees the graph.
    """
    vec = _as_vector(losses)
    if specific:
        torch.autograd.backward(vec.sum(), inputs=list(specific), retain_graph=True)
    grads = torch.autograd.grad((weights.detach().to(vec) * vec).sum(), list(params), allow_unused=True)
    flat = []
    for p, grad in zip(params, grads):
        update = torch.zeros_like(p) if grad is None else grad
        p.grad = update if p.grad is None else p.grad + update
        flat.append(update.reshape(-1))
    return torch.cat(flat)


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


def _reader_owners(losses: Sequence[Tensor], targets: list[tuple]) -> dict | None:
    """{node reading a target: its task}, or None if a reader serves several tasks (or a target is a leaf)."""
    if any(fn is None for fn, _ in targets):  # a leaf representation has no node to find
        return None
    owner: dict = {}
    for t, loss in enumerate(losses):
        for node in _readers(loss, targets):
            if owner.setdefault(node, t) != t:
                return None
    return owner


def _readers(loss: Tensor, targets: list[tuple]) -> set:
    """Autograd nodes on `loss`'s graph with an input edge to one of `targets` (not below them)."""
    found, seen = set(), set()
    stack = [loss.grad_fn]
    target_nodes = {fn for fn, _ in targets}
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in target_nodes:
            continue
        seen.add(node)
        for edge in node.next_functions:
            if edge in targets:
                found.add(node)
            else:
                stack.append(edge[0])
    return found


def _record(row: list, edges: list[tuple[int, int]], grad_inputs: tuple, grad_outputs: tuple) -> None:
    for i, k in edges:
        if grad_inputs[i] is not None:
            row[k] = grad_inputs[i] if row[k] is None else row[k] + grad_inputs[i]


def _as_list(losses: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return list(losses.reshape(-1).unbind()) if isinstance(losses, Tensor) else list(losses)


def _as_vector(losses: Tensor | Sequence[Tensor]) -> Tensor:
    return losses.reshape(-1) if isinstance(losses, Tensor) else torch.stack([loss.reshape(()) for loss in losses])


def _zeros_if_none(grad: Tensor | None, x: Tensor, rows: int | None) -> Tensor:
    """The gradient with a leading row dimension; zeros for an input the losses do not reach."""
    if grad is None:
        return x.new_zeros((rows or 1, *x.shape))
    return grad if rows is not None else grad.unsqueeze(0)


def _flatten_rows(grads: Sequence[Tensor]) -> Tensor:
    return torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1)


def _is_vmap_failure(error: RuntimeError) -> bool:
    # The message families PyTorch raises for operations vmap cannot batch (the last one: data
    # read outside PyTorch, e.g. `.numpy()`, from a batched tensor of torch.func.vmap).
    message = str(error)
    return (
        message.startswith("Batching rule not implemented")
        or "vmap" in message.lower()
        or "that doesn't have storage" in message
    )
