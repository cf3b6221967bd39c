"""A small synthetic data set for the torchMTL quickstart graph (16 inputs, three tasks).

Each row is ``(x, (y1, y2, y3))`` with ``x`` of shape (16,) and each target of shape (1,):

- ``y1 = x·a + ε`` (regression, Task1, `MSELoss`),
- ``y2 = [x·b > 0]`` as a float (binary, Task2, `BCEWithLogitsLoss`),
- ``y3 = sin(x·a) + 0.5 (x·b)·(x·c) + ε`` (regression on both embeddings, Task3),

with a, b, c drawn once per data set and ε ~ N(0, 0.1²). A `DataLoader` over it
yields ``(X, y)`` where ``y[i]`` is the target of the i-th output task, the shape
torchMTL's README training loop expects.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["QuickstartDataset"]


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
