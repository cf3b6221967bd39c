"""Multiple-gradient descent (Sener & Koltun, NeurIPS 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting._qp import host, simplex_min
from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.registry import register

_NORMALIZATIONS = ("none", "l2", "loss", "loss+")
_APPLY_TO = ("raw", "normalized")


def mgda_weights(G: Tensor, scales: Tensor | None = None) -> Tensor:
    """The simplex weights of the min-norm point of the hull of the gradients g_t / scales_t.

    `scales` (default: ones) are the gradient normalisers; a zero scale counts as 1
    (its gradient, or its loss, is zero: there is nothing to normalise).
    """
    G64 = host(G)
    if scales is not None:
        s = host(scales)
        s = torch.where(s > 0, s, torch.ones_like(s))
        G64 = G64 / (s.unsqueeze(0) * s.unsqueeze(1))
    # Scale-free problem: dividing by the largest squared norm keeps the solver's tolerances relative.
    top = float(G64.diagonal().max())
    if top <= 0:  # every gradient is zero: any point of the simplex is the min-norm one
        return torch.full((G.shape[0],), 1.0 / G.shape[0], dtype=G.dtype, device=G.device)
    w = simplex_min(G64 / top)
    return w if w.dtype == G.dtype and w.device == G.device else w.to(dtype=G.dtype, device=G.device)


@register("mgda", "mgda_ub")
class MGDA(GradientBalancer):
    """MGDA: the minimum-norm element of the convex hull of the task gradients.

    `Multi-Task Learning as Multi-Objective Optimization
    <https://arxiv.org/abs/1810.04650>`_ (Sener & Koltun, NeurIPS 2018). Solves
    min_{w ∈ simplex} ‖Σ_t w_t g_t / n_t‖² exactly (active-set method on the Gramian,
    `mtlkit.weighting._qp.simplex_min`) instead of the paper's Frank–Wolfe iterations.

    `normalization` picks the paper code's gradient normalisers n_t: 'none' (default, the
    paper's algorithm; LibMTL's default too), 'l2' (‖g_t‖), 'loss' (L_t), 'loss+'
    (L_t·‖g_t‖; the official configs' choice). `apply_to` says where the weights w found
    on the normalised gradients go: 'raw' (default, the official implementation):
    Σ_t w_t g_t; 'normalized' (LibMTL without rep_grad): Σ_t w_t g_t / n_t, the min-norm
    point itself, reported as the weights w_t / n_t. With normalization 'none' both agree.
    The update conflicts with no task and does not depend on the task order when
    normalization is 'none' or apply_to is 'normalized' (see `properties`).

    MGDA-UB (the paper's upper bound) is the same balancer given the shared
    representation: `backward(losses, shared_reps=z)` takes the task gradients
    ∂L_t/∂z, solves for w on them, and backpropagates Σ_t w_t ∂L_t/∂z through the
    trunk once — so the trunk receives Σ_t w_t ∇_θ L_t with one batched backward at z
    instead of T through the trunk. Registered as "mgda" and "mgda_ub".
    Task heads get their own unweighted gradient (the library's convention; the paper
    scales them by w_t too).
    """

    properties = frozenset({"expected_structure", "non_conflicting", "permutation_invariant"})

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        normalization: str = "none",
        apply_to: str = "raw",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(tasks, chunk_size=chunk_size)
        if normalization not in _NORMALIZATIONS:
            raise ValueError(f"MGDA normalization must be one of {_NORMALIZATIONS}, got {normalization!r}")
        if apply_to not in _APPLY_TO:
            raise ValueError(f"MGDA apply_to must be one of {_APPLY_TO}, got {apply_to!r}")
        self.normalization = normalization
        self.apply_to = apply_to
        if normalization != "none" and apply_to == "raw":
            # The min-norm point is of other vectors, and its weights are not unique when those
            # are affinely dependent: the raw update may then depend on the task order too.
            self.properties = frozenset({"expected_structure"})

    def weights(self, G: Tensor) -> Tensor:
        if self.normalization in ("loss", "loss+"):
            raise ValueError(
                f"MGDA normalization={self.normalization!r} needs the losses: call combine(J, losses, index) "
                "or backward(...), not weights(G)"
            )
        return self._weights(G, G.diagonal().clamp(min=0).sqrt() if self.normalization == "l2" else None)

    def _gramian_weights(self, G: Tensor, losses: Tensor, index: Tensor) -> Tensor:
        if self.normalization in ("loss", "loss+") and bool((losses < 0).any()):
            bad = [self.task_names[i] if self.task_names else i for i in index[losses < 0].tolist()]
            raise ValueError(
                f"MGDA normalization={self.normalization!r} divides by the loss, but task(s) {bad} have "
                "a negative loss: use normalization='l2' or 'none'"
            )
        if self.normalization == "none":
            return self._weights(G, None)
        norms = G.diagonal().clamp(min=0).sqrt()
        scales = {"l2": norms, "loss": losses, "loss+": losses * norms}[self.normalization]
        return self._weights(G, scales)

    def _weights(self, G: Tensor, scales: Tensor | None) -> Tensor:
        w = mgda_weights(G, scales)
        if self.apply_to == "raw" or scales is None:
            return w
        return w / torch.where(scales > 0, scales, torch.ones_like(scales)).to(w)  # a zero scale counts as 1
