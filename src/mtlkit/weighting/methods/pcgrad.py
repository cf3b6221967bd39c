"""Gradient surgery (Yu et al., NeurIPS 2020)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtlkit.weighting._qp import host
from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.registry import register


def pcgrad_weights(G: Tensor, orders: Sequence[Sequence[int]]) -> Tensor:
    """Weights w with Σ_t w_t g_t = Σ_i g_i^PC.

    g_i^PC starts as g_i and, for each j in `orders[i]`, loses its component along g_j
    when it conflicts with g_j (g_i^PC · g_j < 0): g_i^PC −= (g_i^PC · g_j / ‖g_j‖²) g_j.
    Every g_i^PC is a combination of the rows, so only the Gramian is needed: the
    coefficients of g_i^PC and its inner products with the g_j are updated together.
    A zero g_j never conflicts (its inner products are 0), so nothing divides by zero.
    """
    Gl = host(G).tolist()
    T = len(Gl)
    total = [0.0] * T
    for i in range(T):
        coefficients = [0.0] * T
        coefficients[i] = 1.0
        dots = list(Gl[i])  # g_i^PC · g_k for every k
        for j in orders[i]:
            if dots[j] < 0:
                shift = dots[j] / Gl[j][j]
                coefficients[j] -= shift
                dots = [d - shift * g for d, g in zip(dots, Gl[j])]
        total = [t + c for t, c in zip(total, coefficients)]
    return torch.tensor(total, dtype=G.dtype, device=G.device)


def random_orders(T: int, generator: torch.Generator) -> list[list[int]]:
    """For each task i, the other tasks in a uniformly random order."""
    keys = torch.rand(T, T, generator=generator)
    keys.fill_diagonal_(2.0)  # i itself sorts last and is dropped
    return [row[:-1] for row in keys.argsort(dim=1).tolist()]


@register("pcgrad")
class PCGrad(GradientBalancer):
    """PCGrad: project each task gradient off the gradients it conflicts with, then sum.

    `Gradient Surgery for Multi-Task Learning <https://arxiv.org/abs/2001.06782>`_
    (Yu et al., NeurIPS 2020), Algorithm 1: for each task i, the other tasks j are
    visited in a random order and g_i is projected onto the normal plane of g_j
    (the original g_j) whenever they conflict; the update is Σ_i g_i^PC (the sum, as in
    the paper and LibMTL). Computed on the Gramian (`pcgrad_weights`), so the weights
    are reported too.

    The task orders come from a CPU `torch.Generator` seeded with `seed` (default 0);
    its state is part of `state_dict()`, so a resumed run draws the same orders.
    """

    properties = frozenset({"expected_structure"})

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        seed: int = 0,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(tasks, chunk_size=chunk_size)
        self.generator = torch.Generator().manual_seed(seed)

    def weights(self, G: Tensor) -> Tensor:
        return pcgrad_weights(G, random_orders(G.shape[0], self.generator))

    def get_extra_state(self) -> Any:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: Any) -> None:
        self.generator.set_state(state["generator"])
