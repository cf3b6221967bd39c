"""Shared checks of the properties a gradient method may claim, and the matrices to check them on.

A `GradientBalancer` lists what it claims in its class attribute `properties` (an instance
may narrow or widen it for its options, e.g. CAGrad with c ≥ 1). The names:

- ``expected_structure``: the update has one finite entry per column of J, for any J
  (zero, rank-deficient, tiny or huge entries).
- ``non_conflicting``: g_t · d ≥ 0 for every task gradient g_t (no task made worse to first order).
- ``permutation_invariant``: reordering the rows of J leaves d unchanged.
- ``linear_under_scaling``: for positive row scalings c1, c2 and α, β ≥ 0,
  d(diag(αc1 + βc2) J) = α d(diag(c1) J) + β d(diag(c2) J).
- ``strongly_stationary``: d = 0 only if some w > 0 has wᵀJ = 0; checked on matrices
  without such a w, where d must not vanish.

The matrices are drawn with a prescribed rank and stationarity: J = U S Vᵀ from random
orthonormal U, V and positive singular values S, with U's columns chosen to make J
orthogonal to (or aligned with) a positive vector. This is the construction of Quinton &
Rey (2024)'s test suite (TorchJD), written afresh here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

PROPERTIES = (
    "expected_structure",
    "non_conflicting",
    "permutation_invariant",
    "linear_under_scaling",
    "strongly_stationary",
)

DTYPE = torch.float64


def update(make: Callable[[int], object], J: Tensor) -> Tensor:
    """The update a fresh balancer (`make(T)`) computes from J, through `combine` as in training."""
    T = J.shape[0]
    balancer = make(T)
    losses = torch.ones(T, dtype=J.dtype)
    g, _ = balancer.combine(J, losses, torch.arange(T))
    return g


def _orthonormal_completion(Q: Tensor, generator: torch.Generator) -> Tensor:
    """An m×(m−k) matrix of random orthonormal columns orthogonal to Q's k orthonormal columns."""
    m, k = Q.shape
    A = torch.randn(m, m - k, generator=generator, dtype=DTYPE)
    A = A - Q @ (Q.T @ A)
    return torch.linalg.qr(A).Q


def _compose(U: Tensor, P: int, rank: int, generator: torch.Generator) -> Tensor:
    """U[:, :rank] · diag(s) · Vᵀ[:rank] with random s > 0 and a random orthonormal V (P×P)."""
    V = _orthonormal_completion(torch.zeros(P, 0, dtype=DTYPE), generator)
    s = torch.rand(rank, generator=generator, dtype=DTYPE) + 0.1
    return U[:, :rank] @ torch.diag(s) @ V[:, :rank].T


def random_matrix(T: int, P: int, rank: int, generator: torch.Generator) -> Tensor:
    """A T×P matrix of the given rank, uniformly oriented."""
    U = _orthonormal_completion(torch.zeros(T, 0, dtype=DTYPE), generator)
    return _compose(U, P, rank, generator)


def strongly_stationary_matrix(T: int, P: int, rank: int, generator: torch.Generator) -> Tensor:
    """vᵀJ = 0 for a random v > 0 (rank ≤ T − 1)."""
    v = torch.rand(T, 1, generator=generator, dtype=DTYPE) + 0.1
    return _compose(_orthonormal_completion(v / v.norm(), generator), P, rank, generator)


def non_weakly_stationary_matrix(T: int, P: int, rank: int, generator: torch.Generator) -> Tensor:
    """A positive left singular vector u with a positive singular value: vᵀJ ≠ 0 for every v ≥ 0, v ≠ 0.

    (vᵀJ = 0 would give 0 = vᵀJJᵀu = s² vᵀu > 0.)
    """
    u = torch.rand(T, 1, generator=generator, dtype=DTYPE) + 0.1
    u = u / u.norm()
    return _compose(torch.cat([u, _orthonormal_completion(u, generator)], dim=1), P, rank, generator)


def strictly_weakly_stationary_matrix(T: int, P: int, rank: int, generator: torch.Generator) -> Tensor:
    """vᵀJ = 0 for some v ≥ 0 (v ≠ 0), but for no v > 0.

    v and v' are non-negative with disjoint supports covering every row; J is orthogonal
    to v and has v' as a left singular vector with a positive singular value, so any
    w > 0 with wᵀJ = 0 would give 0 = wᵀJJᵀv' = s² wᵀv' > 0. Needs rank ≤ T − 1.
    """
    order = torch.randperm(T, generator=generator)
    split = int(torch.randint(1, T, (1,), generator=generator))
    positive = torch.rand(T, generator=generator, dtype=DTYPE) + 0.1
    v, v_prime = torch.zeros(T, dtype=DTYPE), torch.zeros(T, dtype=DTYPE)
    v[order[:split]] = positive[order[:split]]
    v_prime[order[split:]] = positive[order[split:]]
    pair = torch.stack([v / v.norm(), v_prime / v_prime.norm()], dim=1)
    U = torch.cat([pair[:, 1:], _orthonormal_completion(pair, generator)], dim=1)
    return _compose(U, P, rank, generator)


_GEN = torch.Generator().manual_seed(0)
_SHAPES = [(1, 1, 1), (2, 3, 2), (4, 3, 1), (4, 3, 2), (4, 3, 3), (9, 11, 5), (9, 11, 9)]
_STATIONARY_SHAPES = [(12, 8, 8), (12, 8, 4), (12, 8, 1), (12, 40, 11)]

NORMAL = [random_matrix(T, P, r, _GEN) for T, P, r in _SHAPES]
ZERO = [torch.zeros(T, P, dtype=DTYPE) for T, P in [(1, 1), (4, 3), (9, 11)]]
STRONG = [strongly_stationary_matrix(T, P, r, _GEN) for T, P, r in _STATIONARY_SHAPES]
NON_STRONG = [strictly_weakly_stationary_matrix(T, P, r, _GEN) for T, P, r in _STATIONARY_SHAPES] + [
    non_weakly_stationary_matrix(T, P, r, _GEN) for T, P, r in _STATIONARY_SHAPES
]
TYPICAL = ZERO + NORMAL + STRONG + NON_STRONG
# Entries from 1e-10 to 1e15 (and 0), in float32 as gradients often are.
SCALED = [(scale * J).float() for scale in (0.0, 1e-10, 1e3, 1e15) for J in NORMAL]


def _scale(d: Tensor, J: Tensor) -> float:
    """A magnitude to measure errors against: ‖d‖ + the largest row norm of J (never 0)."""
    return float(d.norm()) + float(J.norm(dim=1).max()) + 1e-300


def check_expected_structure(make: Callable[[int], object], J: Tensor) -> None:
    d = update(make, J)
    assert d.shape == J.shape[1:], f"update of shape {tuple(d.shape)} for a {tuple(J.shape)} Jacobian"
    assert bool(torch.isfinite(d).all()), f"non-finite update {d}"


def check_non_conflicting(make: Callable[[int], object], J: Tensor, rtol: float = 1e-6) -> None:
    d = update(make, J)
    products = J @ d
    floor = -rtol * J.norm(dim=1) * _scale(d, J)  # rounding when d is (nearly) 0
    assert bool((products >= floor).all()), f"conflicts with task(s) {(products < floor).nonzero().flatten().tolist()}"


def check_permutation_invariant(make: Callable[[int], object], J: Tensor, runs: int = 3, rtol: float = 1e-6) -> None:
    d = update(make, J)
    generator = torch.Generator().manual_seed(1)
    for _ in range(runs):
        permuted = update(make, J[torch.randperm(J.shape[0], generator=generator)])
        error = float((permuted - d).norm())
        assert error <= rtol * _scale(d, J), f"permuting rows moved the update by {error:.3g}"


def check_linear_under_scaling(make: Callable[[int], object], J: Tensor, runs: int = 3, rtol: float = 1e-6) -> None:
    generator = torch.Generator().manual_seed(2)
    T = J.shape[0]
    for _ in range(runs):
        c1 = torch.rand(T, generator=generator, dtype=J.dtype) + 0.05
        c2 = torch.rand(T, generator=generator, dtype=J.dtype) + 0.05
        alpha, beta = torch.rand(2, generator=generator, dtype=J.dtype).tolist()
        expected = alpha * update(make, c1[:, None] * J) + beta * update(make, c2[:, None] * J)
        d = update(make, (alpha * c1 + beta * c2)[:, None] * J)
        error = float((d - expected).norm())
        assert error <= rtol * _scale(expected, J), f"not linear under scaling: off by {error:.3g}"


def check_strongly_stationary(make: Callable[[int], object], J: Tensor, threshold: float = 1e-3) -> None:
    """J is not strongly stationary, so the update must not vanish (relative to J's largest row)."""
    d = update(make, J)
    ratio = float(d.norm()) / float(J.norm(dim=1).max())
    assert ratio > threshold, f"the update vanishes (‖d‖/max‖g_t‖ = {ratio:.3g}) on a non-stationary J"


CHECKS = {
    "expected_structure": (check_expected_structure, TYPICAL + SCALED),
    "non_conflicting": (check_non_conflicting, TYPICAL),
    "permutation_invariant": (check_permutation_invariant, TYPICAL),
    "linear_under_scaling": (check_linear_under_scaling, TYPICAL),
    "strongly_stationary": (check_strongly_stationary, NON_STRONG),
}
