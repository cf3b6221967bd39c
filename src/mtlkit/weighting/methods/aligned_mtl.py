"""Aligned-MTL (Senushkin et al., CVPR 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting._qp import host
from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.registry import register

_SCALES = ("min", "median", "rmse")
_REDUCTIONS = ("sum", "mean")


def alignment_matrix(G: Tensor, scale_mode: str = "min") -> Tensor:
    """B (T×T) such that the aligned gradients B J have Gramian σ²·(projector on range G).

    With G = V Λ Vᵀ (eigenvalues above the rank tolerance kept): B = σ V Λ^{-1/2} Vᵀ,
    so B G Bᵀ = σ² V Vᵀ — the identity times σ² when the gradients are linearly
    independent (condition number 1). σ² is the smallest kept eigenvalue ('min', the
    paper), their median ('median') or mean ('rmse'), as the official code. Eigenvalues
    at or below max(λ)·T·eps(dtype of G) count as zero (the official rank rule).
    """
    if scale_mode not in _SCALES:
        raise ValueError(f"Aligned-MTL scale_mode must be one of {_SCALES}, got {scale_mode!r}")
    G64 = host(G)
    T = G64.shape[0]
    eigenvalues, V = torch.linalg.eigh(G64)
    tolerance = float(eigenvalues.max()) * T * torch.finfo(G.dtype).eps
    kept = eigenvalues > max(tolerance, 0.0)
    if not bool(kept.any()):  # every gradient is zero: nothing to align
        return torch.zeros(T, T, dtype=G.dtype, device=G.device)
    lam, V = eigenvalues[kept], V[:, kept]
    sigma_sq = {"min": lam.min(), "median": lam.median(), "rmse": lam.mean()}[scale_mode]
    B = sigma_sq.sqrt() * (V / lam.sqrt()) @ V.T
    return B.to(dtype=G.dtype, device=G.device)


@register("aligned_mtl", "alignedmtl")
class AlignedMTL(GradientBalancer):
    """Aligned-MTL: make the task gradients orthogonal with equal norms, then sum them.

    `Independent Component Alignment for Multi-Task Learning
    <https://arxiv.org/abs/2305.19000>`_ (Senushkin et al., CVPR 2023). The Jacobian
    J = U Σ Vᵀ is replaced by σ U Vᵀ (all singular values set to σ, the smallest one by
    default), i.e. J ↦ B J with B from `alignment_matrix`; the update is the sum of the
    aligned gradients, Σ_t (B J)_t = (Bᵀ1)ᵀ J, as the paper, the official code and LibMTL
    (which weight the tasks equally with ones). Options: `scale_mode` 'min' (default, the
    paper), 'median' or 'rmse' (the official code's alternatives); `reduction` 'sum'
    (default) or 'mean', TorchJD's scale: its `AlignedMTL` averages the aligned gradients
    (preference 1/T), an update T times smaller. With `shared_reps` this is the paper's
    Aligned-MTL-UB. Stateless.
    """

    properties = frozenset({"expected_structure", "permutation_invariant"})

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        scale_mode: str = "min",
        reduction: str = "sum",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(tasks, chunk_size=chunk_size)
        if scale_mode not in _SCALES:
            raise ValueError(f"Aligned-MTL scale_mode must be one of {_SCALES}, got {scale_mode!r}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"Aligned-MTL reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.scale_mode = scale_mode
        self.reduction = reduction

    def weights(self, G: Tensor) -> Tensor:
        B = alignment_matrix(G, self.scale_mode)
        return B.sum(dim=0) if self.reduction == "sum" else B.mean(dim=0)
