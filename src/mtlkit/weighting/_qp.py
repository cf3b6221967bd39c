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
    walks back to the simplex boundary when that point leaves it, and adds the vertex
    with the most negative KKT gap until none is left. Finite in exact arithmetic; against
    rounding (nearly affinely dependent gradients), it stops when a new support's
    minimiser no longer improves on the best one, and after `10·T + 10` moves. The
    bookkeeping is in Python floats: with T this small, tensor calls cost more than the
    arithmetic.
    """
    if c <= 0:
        raise ValueError(f"simplex_min needs c > 0, got {c}")
    T = G.shape[0]
    K = torch.ones(T + 1, T + 1, dtype=G.dtype)  # the KKT matrix [[G, 1], [1ᵀ, 0]]
    K[:T, :T] = G
    K[T, T] = 0.0
    R = torch.zeros(T + 1, 2, dtype=G.dtype)  # right-hand sides for w0 and z
    R[T, 0] = 1.0
    if a is None:
        a_list = [0.0] * T
    else:
        R[:T, 1] = -a
        a_list = a.tolist()
    top = None  # G's largest diagonal entry, for the tolerances: read when first needed
    # Start from the centre with every vertex in the support: in multi-task problems the
    # optimum usually keeps most tasks, so few vertices have to be dropped (or added).
    support = list(range(T))
    w = [1.0 / T] * T
    entering = None
    best, best_value = w, float("inf")
    for _ in range(10 * T + 10):
        point, bounded = _affine_minimiser(K, R, a_list, c, eps, support)
        if bounded and all(point[i] > 0 for i in support):
            if len(support) == T and best_value == float("inf"):
                best = point  # inside on the first support, every vertex: none can enter, the optimum
                break
            w = point
            Gw = (G @ torch.tensor(w, dtype=G.dtype)).tolist()
            q = sum(x * y for x, y in zip(w, Gw)) + eps
            value = sum(x * y for x, y in zip(a_list, w)) + c * max(q, 0.0) ** 0.5
            if value >= best_value - 1e-12 * (1.0 + abs(best_value)):
                break  # no progress: nearly affinely dependent gradients make rounding cycle
            best, best_value = w, value
            top = float(G.diagonal().max()) if top is None else top
            entering = _entering_vertex(top, a_list, c, w, Gw, q, support)
            if entering is None:
                break
            support.append(entering)
            continue
        # The support's minimiser lies outside the simplex (or at infinity): walk
        # towards it and stop where the first coordinate reaches zero.
        if not bounded:
            step = point  # the direction along which the objective is unbounded below
            blocking = {i: w[i] / -step[i] for i in support if step[i] < 0}
        else:
            step = [t - x for t, x in zip(point, w)]
            blocking = {i: w[i] / (w[i] - point[i]) if w[i] > 0 else 0.0 for i in support if point[i] <= 0}
        k = min(blocking, key=blocking.__getitem__)
        theta = blocking[k]
        if theta <= 0 and entering is not None:
            # Only the vertex that just entered has zero weight; the walk would drop it
            # at once, so move towards it instead (its KKT gap makes that a descent).
            w = _line_search_to_vertex(G, a_list, c, eps, w, entering)
        else:
            w = [max(x + theta * s, 0.0) for x, s in zip(w, step)]
            w[k] = 0.0
            total = sum(w)
            w = [x / total for x in w]
        support = [i for i in support if w[i] > 0]
    return torch.tensor(best, dtype=G.dtype)


def _affine_minimiser(
    K: Tensor, R: Tensor, a: list[float], c: float, eps: float, support: list[int]
) -> tuple[list[float], bool]:
    """Minimiser of aᵀw + c·sqrt(wᵀGw + eps) on {w: Σw = 1, w zero off `support`}.

    Write w = w0 + v with w0 the affine min-norm point (G w0 = m² 1, from the KKT
    system) and 1ᵀv = 0; the objective is aᵀw0 + aᵀv + c·sqrt(m² + eps + vᵀGv),
    minimised along z, the minimiser of aᵀz + ½zᵀGz on 1ᵀz = 0 (for which
    aᵀz = −zᵀGz = −ζ): w = w0 + t z with t = sqrt(m² + eps) / sqrt(c² − ζ). When
    ζ ≥ c² the objective is unbounded below along z: returns (z, False), the direction;
    otherwise (w, True).
    """
    n, T = len(support), K.shape[0] - 1
    if support == list(range(T)):  # every vertex, in order: the whole system
        K_s, R_s = K, R
    else:
        rows = torch.tensor([*support, T])
        K_s, R_s = K[rows][:, rows], R[rows]
    sol, info = torch.linalg.solve_ex(K_s, R_s)
    if info.item() != 0:
        # Singular: rounding let affinely dependent gradients into the support; SVD copes.
        sol = torch.linalg.lstsq(K_s, R_s, driver="gelsd").solution
    values = sol.tolist()
    m2 = max(-values[n][0], 0.0)  # the multiplier of Σw = 1 is −m²
    z = [row[1] for row in values[:n]]
    zeta = -sum(a[i] * zi for i, zi in zip(support, z))
    full = [0.0] * T
    if zeta >= c * c * (1 - 1e-12):
        for i, zi in zip(support, z):
            full[i] = zi
        return full, False
    t = (m2 + eps) ** 0.5 / (c * c - zeta) ** 0.5
    for i, row in zip(support, values):
        full[i] = row[0] + t * row[1]
    return full, True


def _entering_vertex(
    top: float, a: list[float], c: float, w: list[float], Gw: list[float], q: float, support: list[int]
) -> int | None:
    """The vertex off the support whose KKT gap is most negative, or None at the optimum.

    `top` is G's largest diagonal entry, `Gw` is G·w and `q` = wᵀGw + eps, the smoothed squared norm.
    """
    if q <= 1e-24 * top:  # zero is in the hull (to rounding): the min-norm point is reached
        return None
    scale = c / q**0.5
    grad = [ai + scale * gi for ai, gi in zip(a, Gw)]
    level = sum(grad[i] for i in support) / len(support)
    outside = [j for j in range(len(w)) if j not in support]
    if not outside:
        return None
    j = min(outside, key=grad.__getitem__)
    # Gw carries rounding of order eps·T·max G; divided by sqrt(q) it dominates when q is small.
    tolerance = 1e-10 * (1.0 + abs(level)) + scale * 1e-14 * len(w) * top
    return j if grad[j] - level < -tolerance else None


def _line_search_to_vertex(G: Tensor, a: list[float], c: float, eps: float, w: list[float], j: int) -> list[float]:
    """w + θ(e_j − w) with the θ in [0, 1] minimising the objective (convex: bisection on the slope)."""
    Gw = (G @ torch.tensor(w, dtype=G.dtype)).tolist()
    Gj = G[:, j].tolist()
    d = [-x for x in w]
    d[j] += 1.0
    Gd = [gj - gw for gj, gw in zip(Gj, Gw)]
    A = sum(x * y for x, y in zip(w, Gw)) + eps
    B = sum(x * y for x, y in zip(w, Gd))
    C = sum(x * y for x, y in zip(d, Gd))
    p = sum(x * y for x, y in zip(a, d))

    def slope(theta: float) -> float:
        return p + c * (B + C * theta) / max(A + 2 * B * theta + C * theta * theta, 1e-300) ** 0.5

    lo, hi = 0.0, 1.0
    if slope(hi) > 0:
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return [x + hi * y for x, y in zip(w, d)]


def dual_cone_weights(G: Tensor, U: Tensor) -> Tensor:
    """For each row u of U: the w ≥ u minimising wᵀGw (G positive definite).

    Jᵀw is then the projection of Jᵀu onto the dual cone {x: Jx ≥ 0} of the rows of J
    (UPGrad's building block, Quinton & Rey 2024, Prop. 1). Solved as the non-negative
    quadratic program min_{v ≥ 0} ½(u+v)ᵀG(u+v) by Lawson–Hanson's active-set method,
    run on all rows at once: each row keeps its own passive set, and the equality-
    constrained subproblems of the rows still moving are one batched Cholesky solve.
    """
    T = U.shape[1]
    rhs = -(U @ G)  # G_PP v_P = rhs_P on the passive set P
    tol = 1e-12 * float(G.diagonal().max())
    passive, V = _warm_start(G, rhs, tol)
    for _ in range(3 * T + 10):
        W = U + V
        grad = W @ G
        candidates = ~passive & (grad < -tol)
        if not bool(candidates.any()):
            return W
        moving = candidates.any(dim=1).nonzero().flatten()
        entering = torch.where(candidates, grad, torch.full_like(grad, float("inf"))).argmin(dim=1)
        passive[moving, entering[moving]] = True
        for _ in range(3 * T + 10):
            S = _passive_solve(G, rhs[moving], passive[moving])
            bad = passive[moving] & (S <= 0)
            bad_rows = bad.any(dim=1)
            done = moving[~bad_rows]
            V[done] = S[~bad_rows]
            if not bool(bad_rows.any()):
                break
            # Rows whose solution left the orthant: step towards it until a coordinate hits 0.
            moving, bad, S = moving[bad_rows], bad[bad_rows], S[bad_rows]
            Vm = V[moving]
            ratios = torch.where(bad, Vm / (Vm - S).clamp(min=1e-300), torch.full_like(Vm, float("inf")))
            Vm = Vm + ratios.min(dim=1, keepdim=True).values.clamp(max=1.0) * (S - Vm)
            kept = passive[moving] & (Vm > tol)
            passive[moving] = kept
            V[moving] = torch.where(kept, Vm, torch.zeros_like(Vm))
    return U + V


def _warm_start(G: Tensor, rhs: Tensor, tol: float) -> tuple[Tensor, Tensor]:
    """Passive sets and iterates to start Lawson–Hanson from, instead of the empty set.

    Guess each row's passive set as the coordinates where uᵀG < 0 (for u = e_i, the
    tasks that conflict with task i) and drop those whose subproblem solution is not
    positive until all are: the result is a valid Lawson–Hanson iterate (the minimiser
    on its passive set, positive there), usually close to the answer. After the first
    solve, only the rows that dropped a coordinate are solved again.
    """
    passive = rhs > tol
    if not bool(passive.any()):
        return passive, torch.zeros_like(rhs)
    V = _passive_solve(G, rhs, passive)  # zero off the passive sets
    bad = passive & (V <= 0)
    if not bool(bad.any()):
        return passive, V
    rows = bad.any(dim=1).nonzero().flatten()
    while rows.numel():  # each pass drops a coordinate from each of these rows: at most T passes
        kept = passive[rows] & ~bad[rows]
        passive[rows] = kept
        S = _passive_solve(G, rhs[rows], kept)
        V[rows] = S
        bad_rows = (kept & (S <= 0)).any(dim=1)
        bad[rows] = kept & (S <= 0)
        rows = rows[bad_rows]
    return passive, V


def _passive_solve(G: Tensor, rhs: Tensor, passive: Tensor) -> Tensor:
    """Row b: G[P,P] s_P = rhs_b[P] on its passive set P, zero elsewhere (one batched solve).

    Each row's system is G's principal block on P, padded with the identity to a common
    size: T, or for many tasks (T ≥ `_COMPACT_FROM`) the largest |P| with each row's
    passive coordinates gathered first, which for passive sets of about half the tasks
    costs a fraction of the T×T factorisations.
    """
    T = G.shape[0]
    width = int(passive.sum(dim=1).max()) if T >= _COMPACT_FROM else T
    if width == T:
        index, kept = None, passive
    else:  # each row's passive coordinates first (in order), then the others
        index = torch.argsort((~passive).to(torch.int8), dim=1, stable=True)[:, :width]
        kept = passive.gather(1, index)
    m = kept.to(G.dtype)
    block = G if index is None else G.take(index.unsqueeze(2) * T + index.unsqueeze(1))  # (take: faster than G[i, j])
    A = block * (m.unsqueeze(2) * m.unsqueeze(1))  # the principal block, zero elsewhere
    A.diagonal(dim1=1, dim2=2).add_(1.0 - m)  # and the identity off the block
    b = torch.where(kept, rhs if index is None else rhs.gather(1, index), 0.0).unsqueeze(2)
    L, info = torch.linalg.cholesky_ex(A)
    # (where rounding left a block indefinite, LU still solves it)
    s = torch.linalg.solve(A, b) if bool(info.any()) else torch.cholesky_solve(b, L)
    return s.squeeze(2) if index is None else torch.zeros_like(rhs).scatter_(1, index, s.squeeze(2))


_COMPACT_FROM = 24  # tasks from which the passive systems are gathered to their largest passive set
