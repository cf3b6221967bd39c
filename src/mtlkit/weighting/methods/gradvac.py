"""Gradient vaccine (Wang et al., ICLR 2021)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtlkit.weighting._qp import host
from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.methods.pcgrad import random_orders
from mtlkit.weighting.registry import register


def gradvac_weights(G: Tensor, targets: Tensor, orders: Sequence[Sequence[int]], beta: float) -> tuple[Tensor, Tensor]:
    """One GradVac step: (weights w with Σ_t w_t g_t = Σ_i g_i', updated targets φ̂).

    For each task i and each j in `orders[i]`: φ = cos(g_i', g_j); if φ < φ̂_ij, add
    ‖g_i'‖(φ̂√(1−φ²) − φ√(1−φ̂²)) / (‖g_j‖√(1−φ̂²)) · g_j to g_i', which makes
    cos(g_i', g_j) = φ̂_ij; then φ̂_ij ← (1−β)φ̂_ij + βφ. Computed on the Gramian
    (coefficients, inner products and norm of g_i' updated together). A pair with a
    zero gradient has no cosine and is skipped (no change, no EMA update); so is a
    correction towards a target with |φ̂| = 1, which would be unbounded.
    """
    Gl = host(G).tolist()
    phi_hat = host(targets).tolist()
    T = len(Gl)
    total = [0.0] * T
    for i in range(T):
        coefficients = [0.0] * T
        coefficients[i] = 1.0
        dots = list(Gl[i])  # g_i' · g_k for every k
        sq_norm = Gl[i][i]  # ‖g_i'‖²
        for j in orders[i]:
            if sq_norm <= 0 or Gl[j][j] <= 0:
                continue
            norm_i, norm_j = sq_norm**0.5, Gl[j][j] ** 0.5
            phi = max(-1.0, min(1.0, dots[j] / (norm_i * norm_j)))
            target = phi_hat[i][j]
            room = max(1.0 - target * target, 0.0) ** 0.5
            if phi < target and room > 0:
                shift = norm_i * (target * (1.0 - phi * phi) ** 0.5 - phi * room) / (norm_j * room)
                coefficients[j] += shift
                sq_norm += 2.0 * shift * dots[j] + shift * shift * Gl[j][j]
                dots = [d + shift * g for d, g in zip(dots, Gl[j])]
            phi_hat[i][j] = (1.0 - beta) * target + beta * phi
        total = [t + c for t, c in zip(total, coefficients)]
    weights = torch.tensor(total, dtype=G.dtype, device=G.device)
    return weights, torch.tensor(phi_hat, dtype=targets.dtype, device=targets.device)


@register("gradvac")
class GradVac(GradientBalancer):
    """GradVac: raise each pair's gradient similarity to an EMA target, then sum.

    `Gradient Vaccine: Investigating and Improving Multi-task Optimization in Massively
    Multilingual Models <https://arxiv.org/abs/2010.05874>`_ (Wang et al., ICLR 2021),
    Algorithm 1 (see `gradvac_weights`); the update is Σ_i g_i' as in LibMTL. With
    beta = 0 the targets stay at their initial 0 and GradVac is PCGrad.

    Defaults: beta = 0.01 (the EMA rate of the paper's experiments; LibMTL and TorchJD
    default to 0.5), targets φ̂ initialised to 0. Departure: the paper can apply the
    rule per layer; here it acts on the whole shared gradient (LibMTL's default
    granularity) or on the representation gradient given as `shared_reps`.
    State: `targets` (T×T buffer) and the task-order generator (seeded by `seed`),
    both in `state_dict()`. Needs `tasks` at construction.
    """

    targets: Tensor

    properties = frozenset({"expected_structure"})

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        beta: float = 0.01,
        seed: int = 0,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(tasks, chunk_size=chunk_size)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"GradVac beta must be in [0, 1], got {beta}")
        self.beta = beta
        self.generator = torch.Generator().manual_seed(seed)
        self.register_buffer("targets", torch.zeros(self.num_tasks, self.num_tasks))

    def weights(self, G: Tensor) -> Tensor:
        """One step on the Gramian of all tasks (it updates the targets)."""
        return self._step(G, torch.arange(G.shape[0]))

    def _gramian_weights(self, G: Tensor, losses: Tensor, index: Tensor) -> Tensor:
        return self._step(G, index)

    def _step(self, G: Tensor, index: Tensor) -> Tensor:
        rows = index.to(self.targets.device)
        block = self.targets[rows][:, rows]
        w, block = gradvac_weights(G, block, random_orders(len(rows), self.generator), self.beta)
        self.targets[rows.unsqueeze(1), rows.unsqueeze(0)] = block
        return w

    def get_extra_state(self) -> Any:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: Any) -> None:
        self.generator.set_state(state["generator"])
