"""A small synthetic data set for the torchMTL quickstart graph (16 inputs, three tasks).

Each row is ``(x, (y1, y2, y3))`` with ``x`` of shape (16,) and each target of shape (1,):

- ``y1 = x·a + ε`` (regression, Task1, `MSELoss`),
- ``y2 = [x·b > 0]`` as a float (binary, Task2, `BCEWithLogitsLoss`),
- ``y3 = sin(x·a) + 0.5 (x·b)·(x·c) + ε`` (regression on both embeddings, Task3),

with a, b, c drawn once per data set and ε ~ N(0, 0.1²). A `DataLoader` over it
yields ``(X, y)`` where ``y[i]`` is the target of the i-th output task, the shape
torchMTL's README training loop expects.

`correlated_regression` draws the two regression tasks of the MMoE paper's synthetic
experiment, whose relatedness is set by one correlation parameter.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["QuickstartDataset", "correlated_regression"]


class QuickstartDataset(Dataset):
    """`n` rows for the quickstart's Task1/Task2/Task3; `seed` fixes the draw (None: global RNG)."""

    num_features = 16

    def __init__(self, n: int = 1024, seed: int | None = 0, noise: float = 0.1) -> None:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        d = self.num_features
        self.X = torch.randn(n, d, generator=gen)
        a, b, c = (torch.randn(d, 1, generator=gen) / d**0.5 for _ in range(3))
        za, zb, zc = self.X @ a, self.X @ b, self.X @ c
        self.y1 = za + noise * torch.randn(n, 1, generator=gen)
        self.y2 = (zb > 0).float()
        self.y3 = torch.sin(za) + 0.5 * zb * zc + noise * torch.randn(n, 1, generator=gen)

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i: int) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        return self.X[i], (self.y1[i], self.y2[i], self.y3[i])

    @property
    def targets(self) -> list[Tensor]:
        """The three target columns, in task order."""
        return [self.y1, self.y2, self.y3]


def correlated_regression(
    n: int,
    dim: int = 100,
    correlation: float = 1.0,
    seed: int | None = 0,
    *,
    num_sin: int = 10,
    scale: float = 1.0,
    noise_std: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Two regression tasks whose relatedness is `correlation`: the MMoE paper's recipe.

    Ma et al., KDD 2018, section 4 (https://dl.acm.org/doi/10.1145/3219819.3220007):
    orthogonal unit vectors u1, u2 ∈ R^dim; w1 = c·u1, w2 = c·(p·u1 + √(1−p²)·u2), so
    cos(w1, w2) = p = `correlation`; x ~ N(0, I); and for i = 1, 2
    y_i = w_iᵀx + Σ_{j=1}^{m} sin(α_j w_iᵀx + β_j) + ε_i, with m = `num_sin`, c = `scale`,
    α_j, β_j ~ N(0, 1) shared by both tasks, and ε_i ~ N(0, 0.01) (the paper's variance;
    `noise_std` = 0.1). `seed` fixes the tasks and the points; one call draws the tasks
    once, so split its rows for training and test sets of the same tasks.

    Returns `(x, y1, y2)`: float32 tensors of shapes (n, dim), (n, 1), (n, 1).
    """
    if not -1.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must lie in [-1, 1], got {correlation}")
    if dim < 2:
        raise ValueError(f"dim must be at least 2 for two orthogonal task directions, got {dim}")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    u1 = torch.randn(dim, generator=gen, dtype=torch.float64)
    u1 /= u1.norm()
    u2 = torch.randn(dim, generator=gen, dtype=torch.float64)
    u2 -= (u2 @ u1) * u1
    u2 /= u2.norm()
    w1 = scale * u1
    w2 = scale * (correlation * u1 + (1 - correlation**2) ** 0.5 * u2)
    alpha = torch.randn(num_sin, generator=gen, dtype=torch.float64)
    beta = torch.randn(num_sin, generator=gen, dtype=torch.float64)
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    targets = []
    for w in (w1, w2):
        z = (x @ w).unsqueeze(1)
        noise = noise_std * torch.randn(n, 1, generator=gen, dtype=torch.float64)
        targets.append(z + torch.sin(alpha * z + beta).sum(1, keepdim=True) + noise)
    return x.float(), targets[0].float(), targets[1].float()
