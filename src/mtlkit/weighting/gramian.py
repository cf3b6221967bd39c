"""Gramian blocks of linear and conv layers from their inputs and output gradients.

A matrix product Y = X·Wᵀ + b (`nn.Linear`: autograd's `AddmmBackward0` or `MmBackward0`
with the weight, or its transpose, as second factor) with input X (B×Din) and task t's
gradient Δ_t (B×Dout) at Y gives task t the weight gradient Δ_tᵀX and the bias gradient
1ᵀΔ_t. Their block of G = JJᵀ is

    G[s, t] = ⟨Δ_sᵀX, Δ_tᵀX⟩ + ⟨1ᵀΔ_s, 1ᵀΔ_t⟩ = Σ_ij (XXᵀ)_ij (Δ_s Δ_tᵀ)_ij + ⟨1ᵀΔ_s, 1ᵀΔ_t⟩,

taken either through the B×B matrix XXᵀ (about B²·(Din + T·Dout) + T²·B·Dout
multiplications) or through the T weight gradients (T·B·Din·Dout + T²·Din·Dout),
whichever costs fewer (TorchJD's autogram engine makes the same choice). A backward
batched over the T tasks that asks for the gradients at the layers' outputs (not at their
weights) yields every Δ_t and computes no weight gradient of these layers: autograd only
computes what the requested inputs need. The weighted update of such a layer then needs no
other backward through it: Σ_t w_t (Δ_tᵀX) from the T weight gradients where the block
was taken through them, else (Σ_t w_t Δ_t)ᵀX.

A 2-D convolution (`Conv2dLayer`) takes its T weight gradients from Δ_t and its
unfolded input in one matrix product. A layer qualifies when its weight (and bias, if
any) is among the parameters and feeds this one node only (no weight tying, no second
use), and the product is plain (alpha = beta = 1; a convolution with groups 1, not
transposed). Everything else (normalisation layers, grouped or 1-D/3-D convolutions, a
weight used twice) keeps the generic path: its block comes from its batched gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge, Node

_PRODUCTS = {"AddmmBackward0": (1, 2), "MmBackward0": (0, 1)}  # node name: (input, weight) positions in next_functions


@dataclass
class _RuledLayer:
    """A layer's autograd node (its output is where Δ is taken) and its parameters."""

    node: Node
    weight: Tensor
    bias: Tensor | None

    @property
    def output(self) -> GradientEdge:
        return GradientEdge(self.node, 0)

    @property
    def output_numel(self) -> int:
        """Entries of one task's gradient at the output."""
        return math.prod(self.node._input_metadata[0].shape)  # type: ignore[attr-defined]


@dataclass
class LinearLayer(_RuledLayer):
    """A matrix product whose Gramian block comes from its input and output gradient."""

    transposed: bool  # the product reads weight.T (nn.Linear), else the weight itself

    def input(self) -> Tensor:
        """X (B×Din), as autograd saved it for the weight's gradient."""
        name = "_saved_mat1" if type(self.node).__name__ == "AddmmBackward0" else "_saved_self"
        return getattr(self.node, name).detach()

    def fold(self, delta: Tensor) -> tuple[Tensor, Callable[[Tensor], tuple[Tensor, Tensor | None]]]:
        """This layer's T×T block of G from the T×B×Dout output gradients, and its `update`.

        `update(w)` gives the (weight, bias) gradients of Σ_t w_t L_t. It keeps the T weight
        gradients where the block was taken through them (they are then about as small as
        the output gradients, or smaller), else the output gradients.
        """
        x = self.input()
        T, B, d_out = delta.shape
        d_in = x.shape[1]
        sums = delta.sum(dim=1) if self.bias is not None else None

        def bias_grad(w: Tensor) -> Tensor | None:
            return None if sums is None else w @ sums

        if B * B * (d_in + T * d_out) + T * T * B * d_out < T * B * d_in * d_out + T * T * d_in * d_out:
            flat = delta.reshape(T, -1)
            G = flat @ torch.matmul(x @ x.T, delta).reshape(T, -1).T

            def update(w: Tensor) -> tuple[Tensor, Tensor | None]:
                combined = torch.tensordot(w, delta, dims=1)
                return (combined.T @ x if self.transposed else x.T @ combined), bias_grad(w)

        else:
            rows = torch.matmul(delta.transpose(1, 2), x) if self.transposed else torch.matmul(x.T, delta)
            flat = rows.reshape(T, -1)
            G = flat @ flat.T

            def update(w: Tensor) -> tuple[Tensor, Tensor | None]:
                return torch.tensordot(w, rows, dims=1), bias_grad(w)

        if sums is not None:
            G.addmm_(sums, sums.T)
        return G, update


@dataclass
class Conv2dLayer(_RuledLayer):
    """A 2-D convolution (groups 1, not transposed) whose T weight gradients come from its input and Δ_t.

    Task t's weight gradient is Σ over samples and positions of Δ_t ⊗ (the input patch),
    one matrix product of Δ (T·Cout × B·L) with the unfolded input (B·L × Cin·k²), where
    L is the number of output positions; the engine's batched convolution backward would
    compute the same gradients more slowly, and a second backward would compute them again
    for the update.
    """

    def fold(self, delta: Tensor) -> tuple[Tensor, Callable[[Tensor], tuple[Tensor, Tensor | None]]]:
        """This layer's T×T block of G from the T×B×Cout×H×W output gradients, and its `update`."""
        node = self.node
        x = node._saved_input.detach()  # type: ignore[attr-defined]
        patches = torch.nn.functional.unfold(
            x,
            self.weight.shape[2:],
            dilation=node._saved_dilation,  # type: ignore[attr-defined]
            padding=node._saved_padding,  # type: ignore[attr-defined]
            stride=node._saved_stride,  # type: ignore[attr-defined]
        )  # B×(Cin·k²)×L
        T, B, c_out = delta.shape[:3]
        grads = delta.reshape(T, B, c_out, -1).transpose(1, 2).reshape(T * c_out, -1)  # (T·Cout)×(B·L)
        rows = (grads @ patches.transpose(1, 2).reshape(-1, patches.shape[1])).reshape(T, -1)
        G = rows @ rows.T
        sums = delta.sum(dim=(1, 3, 4)) if self.bias is not None else None
        if sums is not None:
            G.addmm_(sums, sums.T)

        def update(w: Tensor) -> tuple[Tensor, Tensor | None]:
            return (w @ rows).view_as(self.weight), (None if sums is None else w @ sums)

        return G, update


Layer = LinearLayer | Conv2dLayer


def layers_with_rules(
    roots: Iterable[Node | None], starts: Iterable[Node | None], params: Sequence[Tensor]
) -> list[Layer]:
    """The qualifying linear and conv layers (see the module docstring) at or below the nodes `starts`.

    `roots` are the losses' nodes: a parameter read anywhere else in their graph does not qualify.
    """
    parents = _parent_counts(roots)
    wanted = {id(p): p for p in params}
    layers: list[Layer] = []
    seen: set[Node] = set()
    stack = list(starts)
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        layer = (
            _as_layer(node, wanted, parents)
            if name in _PRODUCTS
            else _as_conv2d(node, wanted, parents)
            if name == "ConvolutionBackward0"
            else None
        )
        if layer is not None:
            layers.append(layer)
        stack.extend(child for child, _ in node.next_functions)
    return layers


def _parent_counts(roots: Iterable[Node | None]) -> dict[Node, int]:
    """How many input edges of the graph's nodes point at each node."""
    parents: dict[Node, int] = {}
    seen: set[Node] = set()
    stack = [root for root in roots if root is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                parents[child] = parents.get(child, 0) + 1
                stack.append(child)
    return parents


def _as_layer(node: Node, wanted: dict[int, Tensor], parents: dict[Node, int]) -> LinearLayer | None:
    name = type(node).__name__
    _, weight_at = _PRODUCTS[name]
    if name == "AddmmBackward0" and (node._saved_alpha != 1 or node._saved_beta != 1):  # type: ignore[attr-defined]
        return None
    weight_node = node.next_functions[weight_at][0]
    transposed = type(weight_node).__name__ == "TBackward0"
    if weight_node is not None and transposed:
        if parents.get(weight_node) != 1:
            return None
        weight_node = weight_node.next_functions[0][0]
    weight = _leaf(weight_node, wanted, parents)
    if weight is None or weight.dim() != 2:
        return None
    bias = None
    if name == "AddmmBackward0":
        bias_node = node.next_functions[0][0]
        if bias_node is not None:
            bias = _leaf(bias_node, wanted, parents)
            out_features = weight.shape[0] if transposed else weight.shape[1]
            if bias is None or bias.shape != (out_features,):  # outside `params`, computed, broadcast: generic path
                return None
    return LinearLayer(node, weight, bias, transposed)


def _as_conv2d(node: Node, wanted: dict[int, Tensor], parents: dict[Node, int]) -> Conv2dLayer | None:
    weight = _leaf(node.next_functions[1][0], wanted, parents)
    if weight is None or weight.dim() != 4 or node._saved_groups != 1 or node._saved_transposed:  # type: ignore[attr-defined]
        return None
    bias = None
    if node.next_functions[2][0] is not None:
        bias = _leaf(node.next_functions[2][0], wanted, parents)
        if bias is None:
            return None
    return Conv2dLayer(node, weight, bias)


def _leaf(node: Node | None, wanted: dict[int, Tensor], parents: dict[Node, int]) -> Tensor | None:
    """The parameter this AccumulateGrad node writes, if it is wanted and read by one node only."""
    variable = getattr(node, "variable", None)
    if variable is None or id(variable) not in wanted or parents.get(node) != 1:  # type: ignore[arg-type]
        return None
    return wanted[id(variable)]
