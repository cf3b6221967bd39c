"""Small exact solvers on the T×T Gramian, shared by the gradient balancers.

Every solver takes a float64 CPU matrix (`host(G)` makes one): T is small, the
algorithms branch on every iteration, and on an accelerator each branch would be a
device synchronisation. Callers move the result back to the Jacobian's device.
"""

from __future__ import annotations

import torch
from torch import Tensor


def host(G: Tensor) -> Tensor:
    """A detached float64 copy of the Gramian on the CPU, where the small solvers run."""
    return G.detach().to(device="cpu", dtype=torch.float64)


def simplex_min(G: Tensor, a: Tensor | None = None, c: float = 1.0, eps: float = 0.0) -> Tensor:
    """argmin over the simplex {w ≥ 0, Σw = 1} of aᵀw + c·sqrt(wᵀGw + eps), c > 0.

    With a = 0 this is the min-norm point of the convex hull of the task gradients
    (MGDA); with a = G·1/T it is CAGrad's dual problem. A primal active-set method in
    the spirit of Wolfe's min-norm-point algorithm: on the current support it jumps to
    the minimiser over the support's affine hull (closed form, see `_affine_minimiser`),
    steps back to the simplex boundary when that point leaves it, and adds the vertex
    with the most negative KKT gap until none is left. Finite in exact arithmetic;
    `10·T + 10` moves bound it against rounding-induced cycling.
    """
    if c <= 0:
        raise ValueError(f"simplex_min needs c > 0, got {c}")
    T = G.shape[0]
    a = torch.zeros(T, dtype=G.dtype) if a is None else a
    start = int(torch.argmin(a + c * (G.diagonal().clamp(min=0) + eps).sqrt()))
    support = [start]
    w = torch.zeros(T, dtype=G.dtype)
    w[start] = 1.0
    entering = start
    for _ in range(10 * T + 10):
        target, direction = _affine_minimiser(G, a, c, eps, support)
        if target is not None and bool((target[support] > 0).all()):
            w = target
            entering = _entering_vertex(G, a, c, eps, w, support)
            if entering is None:
                return w
            support.append(entering)
            continue
        # The support's minimiser lies outside the simplex (or at infinity): walk
        # towards it and stop where the first coordinate reaches zero.
        idx = torch.tensor(support)
        if target is None:
            step = direction
            blocking = idx[step[idx] < 0]
        else:
            step = target - w
            blocking = idx[target[idx] <= 0]
        ratios = w[blocking] / (-step[blocking])
        k = int(torch.argmin(ratios))
        if float(ratios[k]) <= 0:
            # Only the vertex that just entered has zero weight; the walk would drop it
            # at once, so move towards it instead (its KKT gap makes that a descent).
            w = _line_search_to_vertex(G, a, c, eps, w, entering)
        else:
            w = (w + ratios[k] * step).clamp(min=0)
            w[blocking[k]] = 0.0
            w = w / w.sum()
        support = [i for i in support if w[i] > 0]
    return w


def _line_search_to_vertex(G: Tensor, a: Tensor, c: float, eps: float, w: Tensor, j: int) -> Tensor:
    """w + θ(e_j − w) for the θ in [0, 1] minimising the objective (convex in θ: bisection on its slope)."""
    d = -w.clone()
    d[j] += 1.0
    A, B, C = float(w @ G @ w) + eps, float(w @ G @ d), float(d @ G @ d)
    p = float(a @ d)

    def slope(theta: float) -> float:
        return p + c * (B + C * theta) / max(A + 2 * B * theta + C * theta * theta, 1e-300) ** 0.5

    lo, hi = 0.0, 1.0
    if slope(hi) > 0:
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return w + hi * d


def _affine_minimiser(
    G: Tensor, a: Tensor, c: float, eps: float, support: list[int]
) -> tuple[Tensor | None, Tensor | None]:
    """Minimiser of aᵀw + c·sqrt(wᵀGw + eps) on {w: Σw = 1, w zero off `support`}.

    Write w = w0 + v with w0 the affine min-norm point (G w0 = m² 1) and 1ᵀv = 0; then
    the objective is aᵀw0 + aᵀv + c·sqrt(m² + eps + vᵀGv), minimised along z, the
    minimiser of aᵀz + ½zᵀGz on 1ᵀz = 0 (for which aᵀz = −zᵀGz = −ζ): w = w0 + t z,
    t = sqrt(m² + eps) / sqrt(c² − ζ). When ζ ≥ c² the objective is unbounded below
    along z; the point is then None and z is returned as a direction.
    """
    n = len(support)
    idx = torch.tensor(support)
    K = torch.zeros(n + 1, n + 1, dtype=G.dtype)
    K[:n, :n] = G[idx][:, idx]
    K[:n, n] = 1.0
    K[n, :n] = 1.0
    rhs = torch.zeros(n + 1, 2, dtype=G.dtype)
    rhs[n, 0] = 1.0
    rhs[:n, 1] = -a[idx]
    # gelsd (SVD) rather than solve: rounding can let affinely dependent gradients into the support.
    sol = torch.linalg.lstsq(K, rhs, driver="gelsd").solution
    w0, z = sol[:n, 0], sol[:n, 1]
    m2 = float(w0 @ K[:n, :n] @ w0)
    zeta = float(z @ K[:n, :n] @ z)
    full_z = torch.zeros_like(a)
    full_z[idx] = z
    if zeta >= c * c * (1 - 1e-12):
        return None, full_z
    t = (max(m2, 0.0) + eps) ** 0.5 / (c * c - zeta) ** 0.5
    target = torch.zeros_like(a)
    target[idx] = w0 + t * z
    return target, None


def _entering_vertex(G: Tensor, a: Tensor, c: float, eps: float, w: Tensor, support: list[int]) -> int | None:
    """The vertex off the support whose KKT gap is most negative, or None at the optimum."""
    q = float(w @ G @ w) + eps
    if q <= 0:  # zero is in the hull: the min-norm point is reached (a = 0 here).
        return None
    grad = a + c * (G @ w) / q**0.5
    level = float(grad[support].mean())
    outside = torch.ones_like(grad, dtype=torch.bool)
    outside[support] = False
    if not bool(outside.any()):
        return None
    gaps = torch.where(outside, grad - level, torch.full_like(grad, float("inf")))
    j = int(torch.argmin(gaps))
    return j if float(gaps[j]) < -1e-10 * (1.0 + abs(level)) else None


def dual_cone_weights(G: Tensor, U: Tensor) -> Tensor:
    """For each row u of U: the w ≥ u minimising wᵀGw (G positive definite).

    Jᵀw is then the projection of Jᵀu onto the dual cone {x: Jx ≥ 0} of the rows of J
    (UPGrad's building block, Quinton & Rey 2024, Prop. 1). Solved as the non-negative
    quadratic program min_{v ≥ 0} ½(u+v)ᵀG(u+v) by Lawson–Hanson's active-set method,
    run on all rows at once: each row keeps its own passive set, and the equality-
    constrained subproblems are one batched solve with identity rows off the set.
    """
    B, T = U.shape
    V = torch.zeros_like(U)
    passive = torch.zeros(B, T, dtype=torch.bool)
    rhs_full = -(U @ G)
    tol = 1e-12 * float(G.diagonal().max())
    for _ in range(3 * T + 10):
        grad = (U + V) @ G
        candidates = ~passive & (grad < -tol)
        rows = candidates.any(dim=1)
        if not bool(rows.any()):
            break
        entering = torch.where(candidates, grad, torch.full_like(grad, float("inf"))).argmin(dim=1)
        passive[rows, entering[rows]] = True
        for _ in range(3 * T + 10):
            S = _passive_solve(G, rhs_full, passive)
            bad = passive & (S <= 0)
            bad_rows = bad.any(dim=1)
            if not bool(bad_rows.any()):
                V = S
                break
            ratios = torch.where(bad, V / (V - S).clamp(min=1e-300), torch.full_like(V, float("inf")))
            theta = ratios.min(dim=1).values.clamp(max=1.0).where(bad_rows, torch.ones(B, dtype=G.dtype))
            V = V + theta.unsqueeze(1) * (S - V)
            passive &= V > tol
            V = torch.where(passive, V, torch.zeros_like(V))
    return U + V


def _passive_solve(G: Tensor, rhs: Tensor, passive: Tensor) -> Tensor:
    """Row b: G[P,P] s_P = rhs_b[P] on its passive set P, zero elsewhere (one batched solve)."""
    both = passive.unsqueeze(2) & passive.unsqueeze(1)
    A = torch.where(both, G.unsqueeze(0), torch.zeros((), dtype=G.dtype))
    A = A + torch.diag_embed((~passive).to(G.dtype))
    return torch.linalg.solve(A, torch.where(passive, rhs, torch.zeros_like(rhs)))
