"""Toy data sets of the Snorkel multi-task tutorial: points labelled by a circle or a square.

Points are drawn uniformly from the square [-1, 1]² around the origin. Each maker returns
`(train, valid, test)`, each an `(X, Y)` pair with `X` float32 of shape (n_split, 2) and
`Y` int64 of shape (n_split,), split 80/10/10 by default, as the tutorial's
`make_circle_dataset(N, R)` / `make_square_dataset(N, R)` / `make_inv_circle_dataset(N, R)`.

Randomness: with `seed=None` the makers draw from torch's global generator (the tutorial
seeds it once with `set_seed`); with an int `seed` they use a private generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Split = tuple[Tensor, Tensor]


def make_circle_dataset(
    n: int = 1000, r: float = 1.0, splits: Sequence[float] = (0.8, 0.1, 0.1), seed: int | None = None
) -> tuple[Split, Split, Split]:
    """Label 1 for points strictly inside the circle of radius `r` around the origin, else 0.

    Departure from the tutorial: it tests x² + y² < R, which is the radius-`r` circle only
    for R = 1 (the tutorial's value); here the test is x² + y² < r².
    """
    return _make(n, splits, seed, lambda X: X.pow(2).sum(dim=1) < r**2)


def make_inv_circle_dataset(
    n: int = 1000, r: float = 1.0, splits: Sequence[float] = (0.8, 0.1, 0.1), seed: int | None = None
) -> tuple[Split, Split, Split]:
    """The circle task with flipped labels: 1 for points strictly outside the circle of radius `r`."""
    return _make(n, splits, seed, lambda X: X.pow(2).sum(dim=1) > r**2)


def make_square_dataset(
    n: int = 1000, r: float = 1.0, splits: Sequence[float] = (0.8, 0.1, 0.1), seed: int | None = None
) -> tuple[Split, Split, Split]:
    """Label 1 for points strictly inside the axis-aligned square of side `r` centred on the origin."""
    return _make(n, splits, seed, lambda X: (X.abs() < r / 2).all(dim=1))


def _make(
    n: int, splits: Sequence[float], seed: int | None, inside: Callable[[Tensor], Tensor]
) -> tuple[Split, Split, Split]:
    _check_splits(n, splits)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    X = torch.rand(n, 2, generator=generator) * 2 - 1
    Y = inside(X).long()
    order = torch.randperm(n, generator=generator)
    n_valid = round(n * splits[1])
    n_test = round(n * splits[2])
    n_train = n - n_valid - n_test
    train, valid, test = order.split([n_train, n_valid, n_test])
    return (X[train], Y[train]), (X[valid], Y[valid]), (X[test], Y[test])


def _check_splits(n: int, splits: Sequence[float]) -> None:
    if n < 1:
        raise ValueError(f"n must be a positive number of points, got {n}")
    if len(splits) != 3 or any(s < 0 for s in splits) or abs(sum(splits) - 1.0) > 1e-6:
        raise ValueError(
            f"splits must be three non-negative fractions (train, valid, test) summing to 1, got {tuple(splits)}"
        )
