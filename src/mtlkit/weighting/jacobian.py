"""Per-task gradients (the T×N task Jacobian) and the T×T Gramian.

- The frontier: where the losses' graphs meet (in a shared-trunk model, the edges from
  the heads into the representation). Each task's gradient there comes from ONE
  backward over the heads (per-task hooks on the nodes reading the edges, which keep
  each task's share and stop it there, so the T shares are never summed); the T rows
  then go through the shared part. A batched pass from the losses would push T rows,
  T−1 of them zero, through every head (T² head passes).
- `jacobian(losses, inputs)`: J from the frontier rows (or from the losses when there is
  no frontier), either as one batched backward (`is_grads_batched`, which vmaps the
  backward graph; `chunk_size` rows at a time) or as one plain backward per row; with
  `chunk_size=None` a fixed rule on the workload picks the way (`_rows_batched`: no
  timing, so the same run takes the same way, and rounds the same, every time). `chunk_size=1` always runs T plain `autograd.grad` calls, for
  graphs whose backward cannot be vmapped (a custom `autograd.Function` that leaves
  PyTorch in its backward, `.item()` in a hook); when the batched pass hits such an
  operation the engine says so in a `RuntimeWarning` and computes the rows one by one.
- `params_gramian(losses, params)`: G = JJᵀ on shared parameters without holding J, and
  an `apply(w)` that writes the weighted update. One vmapped backward runs the T rows
  together. Linear and conv layers (`mtlkit.weighting.gramian`) give their blocks from
  their inputs and the T output gradients, with no weight gradient computed; every other
  parameter folds its T×|p| block into G as the backward produces it (a hook hands the
  engine a zero-stride stand-in). While all of these hold at most `_HELD_ELEMENTS`
  numbers, they are kept and `apply` takes the update from them; beyond, each layer folds
  its block when its output gradients arrive (a hook on its node), so memory does not
  grow with depth, and `apply` runs one more backward of Σ_t w_t L_t. On CPU, where the
  backward passes through a 2-D convolution (vmap runs a convolution's input gradient
  sample by sample and copies the results together), one plain backward per task takes the
  rows instead while they can be kept, convolutions' weights being plain parameters there
  (the engine's own weight gradients, T×|W| kept, beat the unfolded input). Methods that see J
  only through G (MGDA, UPGrad, IMTL-G, CAGrad, Aligned-MTL, Nash-MTL, PCGrad, ...) run on
  shared parameters this way.
- `rep_jacobian(losses, reps, also=head_params)`: rows at a shared representation from
  the one pass over the heads, which also yields the heads' own gradients.
- `rep_gramian(losses, reps, also=head_params)`: for heads whose first operation on the
  representation is a matrix product (`nn.Linear`), G of those rows (or of their batch
  sums) and w ↦ wᵀJ from the heads' output gradients and weights, without the rows (where
  that is cheaper). Both take the readers that `heads_above` found in its one walk of the
  heads, which also gives the heads' parameters.
- `task_jacobian(losses, inputs)`: one plain backward per loss, on its own graph.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal, cast

import torch
from torch import Tensor
from torch._C import _functorch
from torch.autograd.graph import GradientEdge, Node

from mtlkit.weighting.gramian import Conv2dLayer, Layer, layers_with_rules


def jacobian(
    losses: Tensor | Sequence[Tensor],
    inputs: Sequence[Tensor],
    *,
    chunk_size: int | None = None,
    retain_graph: bool = True,
) -> Tensor:
    """T×N matrix whose row t is ∂losses[t]/∂inputs, flattened and concatenated.

    `losses` holds T scalar losses (a sequence, or a 1-D tensor). `chunk_size` bounds
    how many rows one batched backward computes; 1 means one plain backward per loss
    (`task_jacobian`). With None, `_rows_batched` picks one batched backward or one
    backward per task from the workload alone (never from timings), so a seeded run is
    reproducible bit for bit. Where the losses' graphs meet at a frontier (`_frontier`), the rows
    start there, so the heads are traversed once. Inputs a loss does not reach get zeros.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")
    inputs = list(inputs)
    if chunk_size == 1:
        return task_jacobian(_as_list(losses), inputs, retain_graph=retain_graph)
    outputs: list[Tensor] | list[GradientEdge]
    if isinstance(losses, Tensor) or (edges := _frontier(losses, inputs)) is None:
        vec = _as_vector(losses)
        outputs, seeds = [vec], [torch.eye(vec.numel(), dtype=vec.dtype, device=vec.device)]
    else:
        outputs, (seeds, _) = edges, _edge_rows(losses, edges, [])
    try:
        if chunk_size is not None or _rows_batched(len(seeds[0]), seeds, inputs):
            return _batched(outputs, seeds, inputs, chunk_size)
        return _one_by_one(outputs, seeds, inputs)
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


def _rows_batched(T: int, seeds: list[Tensor], inputs: list[Tensor]) -> bool:
    """Whether one batched backward (rather than T plain ones) takes the rows: a fixed rule on the workload.

    Batched, except on CPU for a convolution (an input of 3 or more dimensions) at T = 2 or
    with rows of `_LARGE_ROW` elements or more: there the batched pass's input-gradient
    convolution runs T·B samples at once, which CPU kernels do at a superlinear cost, and T
    passes of B were faster in `benchmarks/jacobian_ways.py`; elsewhere the batched pass
    won or tied. Shapes, T and the device decide, never a timing, so a run takes the same
    way (and rounds the same) every time.
    """
    if seeds[0].device.type != "cpu" or all(x.dim() < 3 for x in inputs):
        return True
    return T > 2 and sum(s[0].numel() for s in seeds) < _LARGE_ROW


_LARGE_ROW = 2**20  # elements of one task's row at the frontier (e.g. 256 samples × 4096 features)


def _one_by_one(outputs: list, seeds: list[Tensor], inputs: list[Tensor]) -> Tensor:
    rows = []
    for t in range(seeds[0].shape[0]):
        grads = torch.autograd.grad(outputs, inputs, [s[t] for s in seeds], retain_graph=True, allow_unused=True)
        rows.append(_flatten_rows([_zeros_if_none(g, x, None) for g, x in zip(grads, inputs)]))
    return torch.cat(rows, dim=0)


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
    losses: Sequence[Tensor],
    reps: Sequence[Tensor],
    *,
    also: Sequence[Tensor] = (),
    retain_graph: bool = True,
    readers: dict | Literal["find"] | None = "find",
) -> tuple[Tensor, tuple[Tensor | None, ...]]:
    """T×N Jacobian at shared representations from one backward pass, and ∂Σ_t L_t/∂`also`.

    Each task reads a representation through autograd nodes of its own (its head's
    first operations). Hooks on those nodes copy each task's share of one backward of
    Σ_t L_t, which is exactly ∂L_t/∂rep, into its row of J as the pass produces it (so
    at most one head's gradient at the representation is alive besides J); the same pass
    gives the gradients of `also` (the heads' parameters; None where unreached). The pass
    stops at the representations unless some of `also` lies below them. When a node
    reading a representation is reached from several tasks (a layer shared after the
    representation), the shares cannot be told apart and the rows come from
    `task_jacobian` instead. `retain_graph=False` frees the part of the graph the pass
    traverses (the heads) as it goes; the graph below the representations is kept.
    `readers`: the first of `heads_above(losses, reps)`, when the caller has it.
    """
    reps, also = list(reps), list(also)
    total = torch.stack(list(losses)).sum()
    targets = [(r.grad_fn, r.output_nr) for r in reps]
    owner = heads_above(losses, reps)[0] if readers == "find" else readers
    if owner is None:
        J = task_jacobian(losses, reps)
        return J, torch.autograd.grad(total, also, retain_graph=True, allow_unused=True) if also else ()
    if not reps:  # no representation given: a Jacobian without columns
        grads = torch.autograd.grad(total, also, retain_graph=retain_graph, allow_unused=True) if also else ()
        return total.new_zeros(len(losses), 0), grads
    dtype = functools.reduce(torch.promote_types, [r.dtype for r in reps])
    J = torch.empty(len(losses), sum(r.numel() for r in reps), dtype=dtype, device=reps[0].device)
    blocks = [list(row.split([r.numel() for r in reps])) for row in J]  # blocks[t][k]: task t's row at reps[k]
    written = [[False] * len(reps) for _ in losses]
    below = {id(v) for v in reachable_leaves_from(fn for fn, _ in targets)} if also else set()
    stop = not any(id(x) in below for x in also)
    handles = []
    for node, t in owner.items():
        edges = [(i, targets.index(edge)) for i, edge in enumerate(node.next_functions) if edge in targets]
        hook = functools.partial(_write_row, blocks[t], written[t], edges, stop)
        handles.append(node.register_hook(hook))
    try:
        grads = torch.autograd.grad(total, [*reps, *also], retain_graph=retain_graph or not stop, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    for row, done in zip(blocks, written):
        for block, ok in zip(row, done):
            if not ok:  # this task does not reach this representation
                block.zero_()
    return J, grads[len(reps) :]


def _write_row(
    row: list[Tensor], written: list[bool], edges: list[tuple[int, int]], stop: bool, grad_inputs: tuple, _: tuple
) -> tuple | None:
    """Add this task's gradients along `edges` into its row of J (blocks `row`); with `stop`, end them there.

    `stop` only where nothing below the edges is differentiated in the same pass, so the
    engine need not add up the T tasks' gradients at the edges.
    """
    for i, k in edges:
        grad = grad_inputs[i]
        if grad is not None:
            block = row[k].view(grad.shape)
            if written[k]:
                block.add_(grad)
            else:
                block.copy_(grad)
                written[k] = True
    if not stop:
        return None
    passed = list(grad_inputs)
    for i, _k in edges:
        passed[i] = None
    return tuple(passed)


# Autograd nodes of a matrix product x @ m (F.linear on a 2-D input): {node type: index of
# the input edge of x}. Their gradient at x is alpha·δ·mᵀ, δ the gradient at their output.
_PRODUCT_READERS = {"AddmmBackward0": 1, "MmBackward0": 0}


def rep_gramian(
    losses: Sequence[Tensor],
    reps: Sequence[Tensor],
    *,
    also: Sequence[Tensor] = (),
    readers: dict | Literal["find"] | None = "find",
    reduce: Literal["sample", "batch"] = "sample",
) -> tuple[Tensor, Callable[[Tensor], Tensor], tuple[Tensor | None, ...]] | None:
    """G = JJᵀ of the per-sample rows at 2-D representations without forming J, `times(w)` = wᵀJ, ∂Σ_t L_t/∂`also`.

    Applies when every task reads the representations through matrix products of its own
    (heads starting with `nn.Linear`): task t's row at z (B×D) is then Σ_r δ_r m_rᵀ over its
    readers r (δ_r: B×k_r, the gradient at the product's output; m_r: D×k_r, the weight it
    saved), so with Δ = [δ_r] and M = [m_r] side by side, G is (ΔᵀΔ) ⊙ (MᵀM) with the rows
    and columns of each task's readers added up, and wᵀJ = (Δ diag(w_task(column))) Mᵀ. The one backward pass stops at the products'
    outputs (and the heads' parameters): the T gradients at z are never computed. Costs
    K²(B + D) against T²·B·D for JJᵀ (K = Σ k_r), so it is taken only when not costlier. None
    (nothing run) where it does not apply: another reader, a representation that is not
    2-D, a parameter in `also` below the representations, or no parameter in `also`.
    The pass frees the part of the graph it traverses (the heads). `readers`: as in `rep_jacobian`.
    `reduce="batch"`: G of the rows summed over the batch (`batch_rows`), from 1ᵀΔ in place of
    Δ; `times` still applies w to the per-sample rows.
    """
    reps, also = list(reps), list(also)
    if not reps or not also or any(r.dim() != 2 or r.is_complex() for r in reps):
        return None
    targets = [(r.grad_fn, r.output_nr) for r in reps]
    owner = heads_above(losses, reps)[0] if readers == "find" else readers
    if owner is None:
        return None
    wanted, stops = {id(x) for x in also}, {fn for fn, _ in targets}
    products: list[tuple[int, int, Node, Tensor]] = []  # (task, rep, node, alpha·m)
    for node, t in owner.items():
        index = _PRODUCT_READERS.get(type(node).__name__)
        nexts = node.next_functions
        if index is None or [i for i, edge in enumerate(nexts) if edge in targets] != [index]:
            return None
        # The pass runs a reader (and its pre-hook, which sees δ after any tensor hooks) only
        # when a parameter in `also` lies behind it (a head's own weight or bias).
        if not _reaches(nexts, wanted, stops):
            return None
        m = node._saved_mat2.detach()  # the head weight saved for the product: values only, no graph
        alpha = getattr(node, "_saved_alpha", 1)
        products.append((t, targets.index(nexts[index]), node, m if alpha == 1 else alpha * m))
    widths = [sum(m.shape[1] for _, k, _, m in products if k == j) for j in range(len(reps))]
    T = len(losses)
    if not _factors_are_cheaper(widths, reps, T):
        return None
    if any(id(v) in wanted for v in reachable_leaves_from(stops)):
        return None
    deltas: list[Tensor | None] = [None] * len(products)
    handles = [
        node.register_prehook(functools.partial(_keep_output_grad, deltas, i))
        for i, (_, _, node, _) in enumerate(products)
    ]
    try:
        grads = torch.autograd.grad(torch.stack(list(losses)).sum(), also, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    dtype = functools.reduce(torch.promote_types, [r.dtype for r in reps])
    G: Tensor | None = None
    # Per representation (None where no task reads it): Δ, M, and the task of each column of Δ
    # (None when column t belongs to task t).
    factors: list[tuple[Tensor, Tensor, Tensor | None] | None] = []
    for j, r in enumerate(reps):
        mine = [(t, m, d) for (t, k, _, m), d in zip(products, deltas) if k == j]
        if not mine:
            factors.append(None)
            continue
        delta = torch.cat([r.new_zeros(r.shape[0], m.shape[1]) if d is None else d for _, m, d in mine], 1).to(dtype)
        M = torch.cat([m for _, m, _ in mine], dim=1).to(dtype)
        left = delta if reduce == "sample" else delta.sum(dim=0, keepdim=True)
        C = (left.T @ left) * (M.T @ M)
        tasks = [t for t, m, _ in mine for _ in range(m.shape[1])]
        column_task = None
        if tasks != list(range(T)):  # add up the rows and columns of each task's readers (no 0·inf)
            column_task = torch.tensor(tasks, device=C.device)
            C = C.new_zeros(T, T).index_add_(0, column_task, C.new_zeros(len(tasks), T).index_add_(1, column_task, C))
        G = C if G is None else G + C
        factors.append((delta, M, column_task))
    if G is None:
        G = torch.zeros(T, T, dtype=dtype, device=reps[0].device)

    def times(w: Tensor) -> Tensor:
        blocks = []
        for r, found in zip(reps, factors):
            if found is None:
                blocks.append(torch.zeros(r.numel(), dtype=dtype, device=r.device))
                continue
            delta, M, column_task = found
            w = w.to(dtype)
            blocks.append(((delta * (w if column_task is None else w[column_task])) @ M.T).reshape(-1))
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)

    return G, times, grads


def _keep_output_grad(deltas: list, i: int, grad_outputs: tuple) -> None:
    deltas[i] = grad_outputs[0]


def _reaches(edges: tuple, wanted: set[int], stops: set) -> bool:
    """Whether a leaf whose id is in `wanted` lies at or below the nodes of `edges`, not passing through `stops`."""
    nodes = [fn for fn, _ in edges]
    if any(type(fn) is _AccumulateGrad and id(fn.variable) in wanted for fn in nodes):  # a bias, say: no walk
        return True
    return any(id(leaf) in wanted for leaf in _leaves_below(nodes, stops))


def _factors_are_cheaper(widths: list[int], reps: list[Tensor], T: int) -> bool:
    """Whether G from the factors, Σ K²(B + D) multiply-adds (K: the readers' total width), costs at most JJᵀ's T²·B·D."""
    return sum(K * K * (r.shape[0] + r.shape[1]) for K, r in zip(widths, reps)) <= T * T * sum(r.numel() for r in reps)


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
    return heads_above(losses, reps)[1]


def heads_above(losses: Sequence[Tensor], reps: Sequence[Tensor]) -> tuple[dict | None, list[Tensor]]:
    """One walk above the representations: {node reading one: its task} (None if a node serves several tasks, or
    a representation is a leaf), and `leaves_above`. `rep_jacobian` and `rep_gramian` take the first as `readers`."""
    return _above(losses, [(r.grad_fn, r.output_nr) for r in reps], {id(r) for r in reps if r.grad_fn is None})


def gramian(J: Tensor) -> Tensor:
    """The T×T matrix of inner products between task gradients."""
    return J @ J.T


def params_gramian(
    losses: Sequence[Tensor], params: Sequence[Tensor], specific: Sequence[Tensor] = ()
) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """G = JJᵀ for the T×P Jacobian of `losses` on `params`, accumulated layer by layer, and `apply`.

    `apply(w)` adds ∂Σ_t w_t L_t/∂params to the params' `.grad` and ∂Σ_t L_t/∂`specific`
    to theirs (nothing is written before), and returns the flat update written to
    `params`. Where the losses' graphs meet at a frontier (`_frontier`), the rows start
    there (one pass over the heads). One backward batched over the T rows then gives G:
    linear layers contribute their blocks from their inputs and output gradients, with no
    weight gradient computed (`mtlkit.weighting.gramian`), and `apply` writes their update
    from the same output gradients; every other parameter folds its T×|p| block into G as
    the backward produces it, and `apply` takes their update from those blocks, kept while
    they hold at most `_HELD_ELEMENTS` numbers in all, else from one more backward for
    those parameters only.
    When the backward cannot be vmapped, a `RuntimeWarning` says so and G comes from the
    rows of one plain backward per task (J is then held, as with `chunk_size=1`).
    """
    params = list(params)
    edges = _frontier(losses, params)
    outputs: list[Tensor] | list[GradientEdge]
    if edges is None:
        vec = _as_vector(losses)
        outputs, rows = [vec], [torch.eye(len(losses), dtype=vec.dtype, device=vec.device)]
        specific_grads = None  # taken in `apply`, by a backward of Σ_t L_t
    else:
        below = {id(v) for v in reachable_leaves_from(edge.node for edge in edges)}
        stop = not any(id(x) in below for x in specific)
        rows, specific_grads = _edge_rows(losses, edges, list(specific), stop=stop)
        outputs = edges
    starts = [edge.node for edge in edges] if edges is not None else [outputs[0].grad_fn]  # type: ignore[union-attr]
    layers = layers_with_rules((loss.grad_fn for loss in losses), starts, params)
    covered = {id(p) for layer in layers for p in (layer.weight, layer.bias) if p is not None}
    rest = [p for p in params if id(p) not in covered]
    T = len(rows[0])
    ruled, others = layers, rest
    convs = [layer for layer in ruled if isinstance(layer, Conv2dLayer)]
    passed = _passed_through(ruled, others) if convs else None  # otherwise walked only when nothing is kept
    per_task = passed is not None and _convolutions_on_cpu(passed, rows[0])
    # One backward per task; convolutions' weights are plain parameters there (the engine's gradients are fastest).
    if per_task:
        layers = [layer for layer in ruled if not isinstance(layer, Conv2dLayer)]
        rest = others + [p for conv in convs for p in (conv.weight, conv.bias) if p is not None]
    keep = T * (sum(layer.output_numel for layer in layers) + sum(p.numel() for p in rest)) <= _HELD_ELEMENTS
    if per_task and not keep:  # too large to keep: the batched backward, folding as it goes
        layers, rest, per_task = ruled, others, False
    try:
        if keep and per_task:
            G, updates, held = _one_by_one_gramian(outputs, rows, layers, rest)
        elif keep:
            G, updates, held = _layered_gramian(outputs, rows, layers, rest, None)
        else:
            passed = _passed_through(layers, rest) if passed is None else passed
            G, updates, held = _layered_gramian(outputs, rows, layers, rest, passed)
    except RuntimeError as error:
        if not _is_vmap_failure(error):
            raise
        warnings.warn(
            f"the task backward passes could not be batched ({error}); computing the {len(losses)} task "
            "gradients one at a time for their Gramian. Pass chunk_size=1 to do so directly.",
            RuntimeWarning,
            stacklevel=3,
        )
        G, updates, held = gramian(task_jacobian(_as_list(losses), params)), [], {}
        keep = False
    if not keep:  # the update from one more backward
        layers, updates, rest = [], [], params

    def apply(weights: Tensor) -> Tensor:
        w = weights.detach()
        if specific_grads is None:
            if specific:
                torch.autograd.backward(_as_vector(losses).sum(), inputs=list(specific), retain_graph=True)
        else:
            _add_grads(specific, specific_grads)
        grads: dict[int, Tensor | None] = {}
        for layer, update in zip(layers, updates):
            weight_grad, bias_grad = update(w.to(layer.weight)) if update is not None else (None, None)
            grads[id(layer.weight)] = weight_grad
            if layer.bias is not None:
                grads[id(layer.bias)] = bias_grad
        grads.update((id(p), (w.to(held[id(p)]) @ held[id(p)]).view_as(p)) for p in rest if id(p) in held)
        unheld = [p for p in rest if id(p) not in held]
        if unheld:
            seeds = [torch.tensordot(w.to(r), r, dims=1) for r in rows]
            grads.update(zip(map(id, unheld), torch.autograd.grad(outputs, unheld, seeds, allow_unused=True)))
        return _add_grads(params, [grads[id(p)] for p in params])

    return G, apply


_HELD_ELEMENTS = 2**22  # what `params_gramian` keeps for the update, at most (numbers)


def _layered_gramian(
    outputs: list, seeds: list[Tensor], layers: list[Layer], rest: list[Tensor], passed: set[Node] | None
) -> tuple[Tensor, list[Callable | None], dict[int, Tensor]]:
    """G from one backward of the T `seeds` rows vmapped, each layer's `update` (`Layer.fold`; None
    where no gradient reaches the layer), held blocks.

    The parameters `rest` (outside `layers`) fold block·blockᵀ into G as the backward
    produces their batched gradient, and hand the engine a zero-stride stand-in. With
    `passed` None, their T×|p| blocks ({id(p): block}) and the layers' output gradients
    are kept for the update. Else nothing is kept: the layers the backward must pass through
    (`passed`: something asked for lies below them) fold their blocks as their output
    gradients arrive, so that at most one layer's T output gradients are alive at a time
    (plus those of the lowest layers, taken at the end), and the update needs one more backward.
    """
    keep = passed is None
    folded = passed or set()
    T = seeds[0].shape[0]
    G = seeds[0].new_zeros(T, T)
    held: dict[int, Tensor] = {}

    def fold(p: Tensor, grad: Tensor) -> Tensor:
        block = _task_rows(grad, T).reshape(T, -1)
        G.addmm_(block, block.T)
        if keep:
            held[id(p)] = block
        return grad.new_zeros(()).expand(grad.shape)  # the engine keeps nothing of size |p|

    def fold_layer(layer: Layer, grad_outputs: tuple) -> None:
        if grad_outputs[0] is not None:
            G.add_(layer.fold(_task_rows(grad_outputs[0], T))[0])

    taken = [layer for layer in layers if layer.node not in folded]

    def vjp(*rows: Tensor) -> tuple[Tensor, ...]:
        inputs = [layer.output for layer in taken] + rest
        # torch takes edges and tensors together here; its annotation allows one kind at a time
        grads = torch.autograd.grad(outputs, inputs, rows, retain_graph=True, allow_unused=True)  # type: ignore[arg-type]
        # vmap returns tensors only: an unbatched 0-d zero stands for a layer no gradient reaches
        # (a backward that returns None for it); the first one keeps the result non-empty.
        unreached = rows[0].new_zeros(())
        return (unreached, *(unreached if g is None else g for g in grads[: len(taken)]))

    handles = [p.register_hook(functools.partial(fold, p)) for p in rest]
    handles += [
        layer.node.register_prehook(functools.partial(fold_layer, layer)) for layer in layers if layer.node in folded
    ]
    try:
        deltas = list(torch.func.vmap(vjp)(*seeds)[1:])
    finally:
        for handle in handles:
            handle.remove()
    updates = _fold_layers(G, taken, [None if delta.dim() == 1 else delta for delta in deltas])
    return (G + G.T) / 2, updates, held


def _fold_layers(G: Tensor, layers: list[Layer], deltas: list[Tensor | None]) -> list[Callable | None]:
    """Add each layer's block (`Layer.fold` of its T output gradients) to G; their updates (None: unreached)."""
    updates: list[Callable | None] = []
    for layer, delta in zip(layers, deltas):
        if delta is None:  # unreached: no block, a zero update
            updates.append(None)
            continue
        block, update = layer.fold(delta)
        G += block
        updates.append(update)
    return updates


def _convolutions_on_cpu(passed: set[Node], seed: Tensor) -> bool:
    """Whether the backward computes a convolution's input gradient on CPU: batched there, vmap runs the
    convolution sample by sample and copies the results together, slower than one backward per task."""
    return seed.device.type == "cpu" and any(type(node).__name__ == "ConvolutionBackward0" for node in passed)


def _one_by_one_gramian(
    outputs: list, seeds: list[Tensor], layers: list[Layer], rest: list[Tensor]
) -> tuple[Tensor, list[Callable | None], dict[int, Tensor]]:
    """`_layered_gramian`'s result, everything kept, from one plain backward per task."""
    T = seeds[0].shape[0]
    inputs = [layer.output for layer in layers] + rest
    per_task = [
        # torch takes edges and tensors together here; its annotation allows one kind at a time
        torch.autograd.grad(outputs, inputs, [s[t] for s in seeds], retain_graph=True, allow_unused=True)  # type: ignore[arg-type]
        for t in range(T)
    ]
    columns = list(zip(*per_task))
    G = seeds[0].new_zeros(T, T)
    updates = _fold_layers(G, layers, [_stacked(column) for column in columns[: len(layers)]])
    held: dict[int, Tensor] = {}
    for p, column in zip(rest, columns[len(layers) :]):
        stacked = _stacked(column)
        if stacked is not None:
            held[id(p)] = stacked.reshape(T, -1)
            G.addmm_(held[id(p)], held[id(p)].T)
    return (G + G.T) / 2, updates, held


def _stacked(grads: Sequence[Tensor | None]) -> Tensor | None:
    """The T tasks' gradients stacked (zeros for a task that does not reach); None if none reaches."""
    example = next((g for g in grads if g is not None), None)
    return None if example is None else torch.stack([torch.zeros_like(example) if g is None else g for g in grads])


def _task_rows(grad: Tensor, T: int) -> Tensor:
    """The T rows (one per task, stacked on dim 0) of a gradient seen inside the vmapped backward."""
    if _functorch.is_batchedtensor(grad):
        return _functorch.get_unwrapped(grad).movedim(_functorch.maybe_get_bdim(grad), 0)
    return grad.detach().unsqueeze(0).expand(T, *grad.shape)  # the same gradient for every row


def _passed_through(layers: list[Layer], rest: list[Tensor]) -> set[Node]:
    """The nodes of `layers` below which lies another of them or a leaf of `rest` (one walk)."""
    wanted = {id(p) for p in rest}
    targets = {layer.node for layer in layers}
    below: dict[Node, bool] = {}  # node: whether a target or a wanted leaf lies strictly below it
    for start in targets:
        stack: list[tuple[Node, bool]] = [(start, False)]
        while stack:
            node, done = stack.pop()
            children = [child for child, _ in node.next_functions if child is not None]
            if done:
                below[node] = any(
                    child in targets or id(getattr(child, "variable", None)) in wanted or below[child]
                    for child in children
                )
            elif node not in below:
                below[node] = False  # visited; set for good once its children are done
                stack.append((node, True))
                stack.extend((child, False) for child in children if child not in below)
    return {node for node in targets if below[node]}


def gramian_root(G: Tensor) -> Tensor:
    """A T×T matrix R with R Rᵀ = G (G symmetric PSD): stands in for J in a method that sees only JJᵀ."""
    eigenvalues, vectors = torch.linalg.eigh(G.double())
    return (vectors * eigenvalues.clamp(min=0).sqrt()).to(G.dtype)


def _add_grads(params: Sequence[Tensor], grads: Sequence[Tensor | None], reshape: bool = False) -> Tensor:
    """Add `grads` to the params' `.grad` (zeros where None); return them flattened into one vector."""
    flat = []
    for p, grad in zip(params, grads):
        update = torch.zeros_like(p) if grad is None else (grad.view_as(p) if reshape else grad)
        p.grad = update if p.grad is None else p.grad + update
        flat.append(update.reshape(-1))
    return torch.cat(flat) if flat else torch.zeros(0)


def reachable_leaves_from(nodes: Iterable[Node | None]) -> list[Tensor]:
    """Leaf tensors requiring grad at or below these autograd nodes."""
    return list(_leaves_below(nodes))


def reachable_leaves(losses: Tensor) -> list[Tensor]:
    """Leaf tensors requiring grad that `losses` depends on, in graph order."""
    return list(_leaves_below([losses.grad_fn]))


def _leaves_below(nodes: Iterable[Node | None], stops: set | frozenset = frozenset()) -> Iterator[Tensor]:
    """The leaf tensors at or below `nodes` (depth first, each once), not passing through the nodes in `stops`."""
    seen: set = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in stops:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            yield variable
            continue
        stack.extend(next_fn for next_fn, _ in node.next_functions)


def _frontier(losses: Sequence[Tensor], params: Sequence[Tensor]) -> list[GradientEdge] | None:
    """The edges where the losses' graphs meet: from a node of one task into a node of several.

    Every path from a loss to a parameter reached by several losses crosses one of these
    edges, so each task's gradient at the edges, pushed through the shared part, is that
    task's row of J; heads are traversed once, not T times. None when there is no such
    cut usable here: nothing shared, a loss that is itself shared, a parameter in `params`
    that only one loss reaches, or a leaf read directly by a task's own node.
    """
    counts: dict = {}
    graphs = []
    for loss in losses:
        seen: set = set()
        stack = [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            stack.extend(next_fn for next_fn, _ in node.next_functions)
        graphs.append(seen)
        for node in seen:
            counts[node] = counts.get(node, 0) + 1
    shared = {node for node, count in counts.items() if count > 1}
    if not shared or any(loss.grad_fn in shared for loss in losses):
        return None
    reached = {id(node.variable) for node in shared if hasattr(node, "variable")}
    if any(id(p) not in reached for p in params):
        return None
    edges: dict = {}
    for nodes in graphs:
        for node in nodes - shared:
            for edge in node.next_functions:
                if edge[0] in shared:
                    if hasattr(edge[0], "variable"):
                        return None
                    edges[edge] = None
    return [GradientEdge(node, nr) for node, nr in edges]


def _edge_rows(
    losses: Sequence[Tensor], edges: list[GradientEdge], also: list[Tensor], stop: bool = True
) -> tuple[list[Tensor], tuple[Tensor | None, ...]]:
    """Per edge, the T×(edge's shape) gradients of each loss there, and ∂Σ_t L_t/∂`also`, from one backward.

    `stop=False` when some of `also` lies below the edges (their gradients must flow on).
    """
    targets = [(edge.node, edge.output_nr) for edge in edges]
    owner = _reader_owners(losses, targets)
    if owner is None:  # `_frontier`'s edges enter the shared part from nodes of one task each
        raise RuntimeError("a frontier edge is read by several tasks; this is a bug in mtlkit, please report it")
    rows: list[list[Tensor | None]] = [[None] * len(edges) for _ in losses]
    handles = []
    for node, t in owner.items():
        indices = [(i, targets.index(edge)) for i, edge in enumerate(node.next_functions) if edge in targets]
        handles.append(node.register_hook(functools.partial(_record if stop else _keep, rows[t], indices)))
    try:
        grads = torch.autograd.grad(
            # torch takes edges and tensors together here; its annotation allows one kind at a time
            torch.stack(list(losses)).sum(),
            [*edges, *also],  # type: ignore[arg-type]
            retain_graph=True,
            allow_unused=True,
        )
    finally:
        for handle in handles:
            handle.remove()
    stacked = [_stacked([row[k] for row in rows]) for k in range(len(edges))]
    if any(column is None for column in stacked):  # every edge is read by some task (`_frontier`)
        raise RuntimeError("no task's gradient reached a frontier edge; this is a bug in mtlkit, please report it")
    return cast(list[Tensor], stacked), grads[len(edges) :]


def _batched(outputs: list, seeds: list[Tensor], inputs: list[Tensor], chunk_size: int | None) -> Tensor:
    T = seeds[0].shape[0]
    step = chunk_size or T
    rows = []
    for start in range(0, T, step):
        # The graph is kept even on the last chunk so that, if vmap fails part-way,
        # the sequential path can still run on it; it is freed with the losses.
        chunk = [s[start : start + step] for s in seeds]
        grads = torch.autograd.grad(
            outputs, inputs, grad_outputs=chunk, retain_graph=True, is_grads_batched=True, allow_unused=True
        )
        # Not materialize_grads: with batched grads it returns unused inputs' zeros without the batch dim.
        rows.append(_flatten_rows([_zeros_if_none(g, x, len(chunk[0])) for g, x in zip(grads, inputs)]))
    return rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)


def _reader_owners(losses: Sequence[Tensor], targets: list[tuple]) -> dict | None:
    """{node reading a target: its task}, or None if a reader serves several tasks (or a target is a leaf)."""
    return _above(losses, targets)[0]


_AccumulateGrad = torch._C._functions.AccumulateGrad  # type: ignore[attr-defined]  # a leaf's node


def _above(
    losses: Sequence[Tensor], targets: list[tuple], skip: set[int] | frozenset[int] = frozenset()
) -> tuple[dict | None, list[Tensor]]:
    """One walk of each loss's graph down to the edges `targets` (not below their nodes): the readers and the leaves.

    Returns {node with an input edge in `targets`: its task} (None when such a node is on
    several losses' graphs, or a target is a leaf's, which has no node), and the leaf
    tensors requiring grad on the way, each once, those whose id is in `skip` left out.
    """
    edges = set(targets)
    stops = {fn for fn, _ in edges}
    owner: dict | None = None if None in stops else {}
    leaves: dict[int, Tensor] = {}
    for t, loss in enumerate(losses):
        seen = set()
        stack = [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen or node in stops:
                continue
            seen.add(node)
            if type(node) is _AccumulateGrad:
                variable = node.variable  # type: ignore[attr-defined]
                if id(variable) not in skip:
                    leaves.setdefault(id(variable), variable)
                continue
            for edge in node.next_functions:
                if edge not in edges:
                    stack.append(edge[0])
                elif owner is not None and owner.setdefault(node, t) != t:
                    owner = None
    return owner, list(leaves.values())


def _record(row: list, edges: list[tuple[int, int]], grad_inputs: tuple, grad_outputs: tuple) -> tuple:
    """Keep this task's gradients along `edges`, and stop them there.

    Only used where nothing below the edges is differentiated in the same pass, so the
    engine need not add up the T tasks' gradients at the edges.
    """
    passed = list(grad_inputs)
    for i, k in edges:
        if grad_inputs[i] is not None:
            row[k] = grad_inputs[i] if row[k] is None else row[k] + grad_inputs[i]
            passed[i] = None
    return tuple(passed)


def _keep(row: list, edges: list[tuple[int, int]], grad_inputs: tuple, grad_outputs: tuple) -> None:
    """Keep this task's gradients along `edges` and let them flow on."""
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
