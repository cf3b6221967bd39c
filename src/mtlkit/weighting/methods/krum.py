"""(Multi-)Krum robust aggregation (Blanchard et al., NeurIPS 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting._qp import host
from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.registry import register


def krum_weights(G: Tensor, n_byzantine: int = 0, n_selected: int = 1) -> Tensor:
    """Weight 1/m on each of the m rows with the lowest Krum score, 0 elsewhere.

    Score of row i: the sum of its squared distances to its T − f − 2 nearest other rows,
    ‖g_i − g_j‖² = G_ii + G_jj − 2 G_ij (f = `n_byzantine`, m = `n_selected`). Rows tied
    (to 1e-9 relative) with the m-th lowest score share the slots left equally, so that the
    result does not depend on the task order (with T − f − 2 = 1, the two mutually closest
    rows always tie; TorchJD breaks ties by row index).
    """
    T = G.shape[0]
    if T < 2 * n_byzantine + 3:  # noqa: SIM300 (T is the task count, not a constant)
        raise ValueError(
            f"Krum with n_byzantine={n_byzantine} needs at least 2·n_byzantine + 3 = {2 * n_byzantine + 3} task "
            f"gradients, got {T}: lower n_byzantine or use another method for this few tasks"
        )
    if n_selected > T:
        raise ValueError(f"Krum n_selected={n_selected} exceeds the {T} task gradients")
    G64 = host(G)
    norms = G64.diagonal()
    distances = (norms.unsqueeze(0) + norms.unsqueeze(1) - 2 * G64).clamp(min=0)
    distances.fill_diagonal_(float("inf"))  # a row is not its own neighbour
    scores = distances.sort(dim=1).values[:, : T - n_byzantine - 2].sum(dim=1)
    cutoff = float(scores.sort().values[n_selected - 1])
    scale = max(abs(cutoff), float(torch.where(distances.isfinite(), distances, 0.0).max()))
    tied = (scores - cutoff).abs() <= 1e-9 * scale
    below = (scores < cutoff) & ~tied
    w = below.to(torch.float64) / n_selected
    w[tied] = (n_selected - int(below.sum())) / (n_selected * int(tied.sum()))
    return w.to(dtype=G.dtype, device=G.device)


@register("krum", "multi_krum")
class Krum(GradientBalancer):
    """Krum: apply the task gradient closest to its T − f − 2 nearest neighbours.

    `Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent
    <https://papers.nips.cc/paper/6617>`_ (Blanchard, El Mhamdi, Guerraoui, Stainer,
    NeurIPS 2017), a robust aggregator of federated learning that TorchJD offers as an
    MTL baseline. With `n_selected` m > 1 it is Multi-Krum: the mean of the m best rows.
    Defaults: f = `n_byzantine` = 0, m = 1. Needs T ≥ 2f + 3 task gradients (the
    paper's condition n > 2f + 2) in every step, so a batch labelling fewer tasks raises.
    Scores use squared distances, as in the paper (TorchJD sums plain distances); rows
    tied at the cut-off share its weight.
    Stateless.
    """

    # On J with at least `min_tasks` rows (fewer raise, by the method's definition).
    properties = frozenset({"expected_structure", "permutation_invariant"})

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        n_byzantine: int = 0,
        n_selected: int = 1,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(tasks, chunk_size=chunk_size)
        if n_byzantine < 0 or n_selected < 1:
            raise ValueError(f"Krum needs n_byzantine >= 0 and n_selected >= 1, got {n_byzantine} and {n_selected}")
        self.n_byzantine, self.n_selected = n_byzantine, n_selected
        self.min_tasks = max(2 * n_byzantine + 3, n_selected)

    def weights(self, G: Tensor) -> Tensor:
        return krum_weights(G, self.n_byzantine, self.n_selected)
