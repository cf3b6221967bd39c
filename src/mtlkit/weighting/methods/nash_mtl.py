"""Nash-MTL: multi-task learning as a bargaining game (Navon et al., ICML 2022)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.weighting._qp import host
from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.registry import register

# Ridge on the correlation matrix (unit diagonal): keeps the problem bounded when 0 lies
# in the cone of the gradients (e.g. g_1 = −g_2), where no exact solution exists.
_RIDGE = 1e-8


def nash_weights(G: Tensor, max_iter: int = 100) -> Tensor:
    """The α > 0 with (G α)_t = 1/α_t, i.e. the minimiser of ½αᵀGα − Σ_t log α_t.

    The condition is scale-covariant: with n_t = ‖g_t‖ and C = G/(n nᵀ), β = n ⊙ α
    solves C β = 1/β. Solved by damped Newton (strictly convex, self-concordant
    objective; see `_newton`) on C + 1e-8·I, then α = β / n. Tasks with a zero gradient (‖g_t‖ below
    1e-12 of the largest) have no solution (α_t → ∞ contributes nothing) and get
    α_t = 0; so do all tasks when every gradient is zero.
    """
    G64 = host(G)
    T = G64.shape[0]
    norms = G64.diagonal().clamp(min=0).sqrt()
    live = norms > 1e-12 * float(norms.max())
    alpha = torch.zeros(T, dtype=torch.float64)
    if float(norms.max()) > 0:
        n = norms[live]
        C = G64[live][:, live] / (n.unsqueeze(0) * n.unsqueeze(1))
        alpha[live] = _newton(C + _RIDGE * torch.eye(n.numel(), dtype=torch.float64), max_iter) / n
    return alpha.to(dtype=G.dtype, device=G.device)


def _newton(G: Tensor, max_iter: int) -> Tensor:
    """Minimise ½xᵀGx − Σ log x by Newton's method, damped as for self-concordant functions.

    With λ² = gradᵀH⁻¹grad, the step is scaled by 1/(1 + λ) while λ > 1/4: such a step
    stays in x > 0 and decreases the objective by at least λ − log(1 + λ), so no line
    search is needed; closer in, full steps converge quadratically (λ² at least
    quarters each step), so a λ² that stops shrinking marks the rounding floor.
    """
    n = G.shape[0]
    ones = torch.ones(n, dtype=G.dtype)
    x = ones * (n / float(ones @ G @ ones)) ** 0.5  # the best multiple of 1
    previous = float("inf")
    for _ in range(max_iter):
        grad = G @ x - 1 / x
        step = torch.linalg.solve(G + torch.diag(x**-2), grad)
        decrement = float(grad @ step)
        if decrement <= 1e-18 * n or (decrement <= 1 / 16 and decrement > previous / 4):
            break
        previous = decrement
        lam = decrement**0.5
        x = x - step / (1 + lam) if lam > 0.25 else x - step
    return x


def _clip(weights: Tensor, G: Tensor, max_norm: float) -> Tensor:
    """Scale the weights so that ‖Σ w_t g_t‖ ≤ max_norm (0 disables)."""
    if max_norm <= 0:
        return weights
    norm = max(float(weights @ G @ weights), 0.0) ** 0.5
    return weights * (max_norm / norm) if norm > max_norm else weights


@register("nash_mtl", "nashmtl")
class NashMTL(GradientBalancer):
    """Nash-MTL: the Nash bargaining solution, α with (JJᵀ α) = 1/α, update Σ_t α_t g_t.

    `Multi-Task Learning as a Bargaining Game <https://arxiv.org/abs/2202.01017>`_
    (Navon et al., ICML 2022). The official code approximates α with a sequence of
    convex programs (CCP, cvxpy); here `nash_weights` solves the optimality condition
    directly by damped Newton in float64 on the T×T Gramian. Defaults as the official
    code: `max_norm` = 1.0 (the update Σ α_t g_t is scaled down to this norm; 0
    disables; with `shared_reps` the clip applies to the representation gradient),
    `update_weights_every` = 1 (solve every step; k > 1 reuses the last α for k − 1
    steps — the Jacobian is still computed on those steps, only the solve is saved).

    Scale: the paper's update Σ α_t g_t has norm exactly √T (αᵀGα = Σ_t α_t (Gα)_t = T);
    `max_norm` = 1.0, the default of the official code, LibMTL and TorchJD alike, scales
    it down by √T (by √2 for two tasks). `max_norm=0` keeps the paper's scale. Where no
    exact solution exists (0 in the cone of the gradients, e.g. T > rank), the ridge gives
    a near-zero update; TorchJD's and LibMTL's cvxpy iterations stop elsewhere.

    State: `alpha` (last solved weights, NaN until solved) and `step`, in `state_dict()`.
    Needs `tasks` at construction. Zero gradients get α_t = 0 (see `nash_weights`).
    """

    alpha: Tensor
    step: Tensor

    properties = frozenset({"expected_structure", "permutation_invariant"})

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        update_weights_every: int = 1,
        max_norm: float = 1.0,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(tasks, chunk_size=chunk_size)
        if update_weights_every < 1:
            raise ValueError(f"NashMTL update_weights_every must be >= 1, got {update_weights_every}")
        if max_norm < 0:
            raise ValueError(f"NashMTL max_norm must be >= 0 (0 disables clipping), got {max_norm}")
        self.update_weights_every = update_weights_every
        self.max_norm = max_norm
        self.register_buffer("alpha", torch.full((self.num_tasks,), float("nan")))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def weights(self, G: Tensor) -> Tensor:
        return _clip(nash_weights(G), G, self.max_norm)

    def _gramian_weights(self, G: Tensor, losses: Tensor, index: Tensor) -> Tensor:
        rows = index.to(self.alpha.device)
        stored = self.alpha[rows]
        if int(self.step) % self.update_weights_every == 0 or bool(torch.isnan(stored).any()):
            alpha = nash_weights(G)
            self.alpha[rows] = alpha.to(self.alpha)
        else:
            alpha = stored.to(G)
        self.step += 1
        return _clip(alpha, G, self.max_norm)
