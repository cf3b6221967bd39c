"""UPGrad: unconflicting projection of gradients (Quinton & Rey, 2024)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting._qp import dual_cone_weights, host
from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.registry import register

# Ridge on the correlation matrix (unit diagonal): makes it positive definite so the
# active-set solver terminates (TorchJD regularises likewise, with 1e-4). Raised to the
# rounding level of the Gramian's dtype (T·eps), below which its eigenvalues are noise.
_RIDGE = 1e-9


def upgrad_weights(
    G: Tensor, preference: Tensor | None = None, norm_eps: float | None = None, reg_eps: float | None = None
) -> Tensor:
    """Weights w with Σ_t w_t g_t = Σ_i π(p_i g_i), π the projection onto the dual cone.

    The dual cone is {x: g_t·x ≥ 0 for every t}; π(p_i g_i) = Jᵀw^(i) with w^(i) the
    minimiser of wᵀGw over w ≥ p_i e_i (`dual_cone_weights`). `preference` p defaults to
    1/T for every task (the paper's mean).

    Default: solved in the scaled variables y = n ⊙ w (n_t = ‖g_t‖), i.e. on the
    correlation matrix G/(n nᵀ) plus a `_RIDGE` (1e-9) identity, so that gradients of
    very different norms are treated alike; zero gradients constrain nothing and keep
    their own weight p_t. With `norm_eps` or `reg_eps` given (None counts as 0), TorchJD's
    regularised problem instead: G/trace(G) + reg_eps·I, with G taken as 0 when
    trace(G) < norm_eps (TorchJD's defaults: both 1e-4).
    """
    T = G.shape[0]
    p = torch.full((T,), 1.0 / T, dtype=torch.float64) if preference is None else host(preference)
    G64 = host(G)
    if norm_eps is not None or reg_eps is not None:
        trace = float(G64.diagonal().sum())
        normalised = G64 / trace if trace >= (norm_eps or 0.0) and trace > 0 else torch.zeros_like(G64)
        regularised = normalised + (reg_eps or 0.0) * torch.eye(T, dtype=torch.float64)
        weights = dual_cone_weights(regularised, torch.diag(p)).sum(dim=0)
        return weights.to(dtype=G.dtype, device=G.device)
    norms = G64.diagonal().clamp(min=0).sqrt()
    values = norms.tolist()  # on the host at once: the checks below are on T numbers
    top = max(values)
    if top <= 0:
        return p.to(dtype=G.dtype, device=G.device)
    live = norms > 1e-12 * top
    every = all(x > 1e-12 * top for x in values)  # the usual case: no boolean indexing
    n = norms if every else norms[live]
    ridge = max(_RIDGE, n.numel() * torch.finfo(G.dtype).eps)
    C = (G64 if every else G64[live][:, live]) / (n.unsqueeze(0) * n.unsqueeze(1))
    C.diagonal().add_(ridge)  # (C is a new tensor)
    Y = dual_cone_weights(C, torch.diag((p if every else p[live]) * n))
    if every:
        weights = Y.sum(dim=0) / n
    else:
        weights = p.clone()
        weights[live] = Y.sum(dim=0) / n
    return weights.to(dtype=G.dtype, device=G.device)


@register("upgrad")
class UPGrad(GradientBalancer):
    """UPGrad: average of the task gradients, each projected onto the dual cone of all of them.

    `Jacobian Descent for Multi-Objective Optimization <https://arxiv.org/abs/2406.16232>`_
    (Quinton & Rey, 2024), the aggregator of TorchJD. The update has a non-negative
    inner product with every task gradient (no task is made worse to first order) and
    equals the mean gradient when no two tasks conflict. Each projection is a small
    non-negative quadratic program on the Gramian, solved exactly by an active-set method
    for all tasks at once (`mtlkit.weighting._qp.dual_cone_weights`); TorchJD calls
    quadprog. `preference` (default: equal, 1/T) weights the projected gradients.

    Departure: by default a 1e-9 ridge on the correlation matrix (see `_RIDGE`), close
    to the exact projections. TorchJD regularises more (G/trace(G) + 1e-4·I): pass
    `norm_eps=1e-4, reg_eps=1e-4` to reproduce its values (see `upgrad_weights`).
    Stateless.
    """

    properties = frozenset(
        {
            "expected_structure",
            "non_conflicting",
            "permutation_invariant",
            "linear_under_scaling",
            "strongly_stationary",
        }
    )

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        preference: Sequence[float] | None = None,
        norm_eps: float | None = None,
        reg_eps: float | None = None,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(tasks, chunk_size=chunk_size)
        for name, value in (("norm_eps", norm_eps), ("reg_eps", reg_eps)):
            if value is not None and value < 0:
                raise ValueError(f"UPGrad {name} must be >= 0, got {value}")
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps
        if norm_eps is not None or reg_eps is not None:
            # TorchJD's ridge shifts the projections by O(reg_eps): no longer exactly
            # non-conflicting nor linear under scaling (TorchJD checks these at 4e-4 and 6e-2).
            self.properties = frozenset({"expected_structure", "permutation_invariant", "strongly_stationary"})
        self.preference = None if preference is None else torch.as_tensor(preference, dtype=torch.float64)
        if self.preference is not None and bool((self.preference < 0).any()):
            raise ValueError(f"UPGrad preference values must be >= 0, got {self.preference.tolist()}")

    def weights(self, G: Tensor) -> Tensor:
        if self.preference is not None and self.preference.numel() != G.shape[0]:
            raise ValueError(
                f"UPGrad has {self.preference.numel()} preference values but got {G.shape[0]} task gradients"
            )
        return upgrad_weights(G, self.preference, self.norm_eps, self.reg_eps)

    def _gramian_weights(self, G: Tensor, losses: Tensor, index: Tensor) -> Tensor:
        preference = None if self.preference is None else self.preference[index.cpu()]
        return upgrad_weights(G, preference, self.norm_eps, self.reg_eps)
