"""A small shared-trunk model with T linear heads, for the balancer tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mtlkit.weighting.context import StepContext


class SmallMTL(nn.Module):
    """Trunk (two tanh layers) → representation → T linear heads, MSE losses."""

    def __init__(self, num_tasks: int = 3, dtype: torch.dtype = torch.float32, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh()).to(dtype)
        self.heads = nn.ModuleList(nn.Linear(6, 1).to(dtype) for _ in range(num_tasks))
        self.x = torch.randn(16, 5, generator=generator, dtype=dtype)
        self.y = torch.randn(num_tasks, 16, 1, generator=generator, dtype=dtype)

    def forward(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Task losses and the shared representation of the fixed batch."""
        rep = self.trunk(self.x)
        losses = [((head(rep) - y) ** 2).mean() for head, y in zip(self.heads, self.y)]
        return losses, rep

    def context(self, tasks: list[str], seed: int = 1) -> StepContext:
        """A StepContext over this model: its fixed batch, and fresh random batches drawn from `seed`."""
        generator = torch.Generator().manual_seed(seed)
        dtype = self.x.dtype

        def draw():
            x = torch.randn(16, 5, generator=generator, dtype=dtype)
            return x, torch.randn(len(tasks), 16, 1, generator=generator, dtype=dtype)

        def losses(batch):
            x, y = batch
            rep = self.trunk(x)
            return {task: ((head(rep) - target) ** 2).mean() for task, head, target in zip(tasks, self.heads, y)}

        return StepContext(
            batch=(self.x, self.y),
            losses=losses,
            next_train_batch=draw,
            next_valid_batch=draw,
            shared_parameters=list(self.trunk.parameters()),
            parameters=list(self.parameters()),
            lr=0.05,
        )


@pytest.fixture
def small_mtl():
    return SmallMTL


@pytest.fixture
def simplex_projection():
    """The Euclidean projection onto the probability simplex by scipy's constrained least squares.

    An independent reference for `mtlkit.weighting._simplex.project_to_simplex` and the
    methods built on it (MoDo, MoCo); skips without scipy.
    """
    optimize = pytest.importorskip("scipy.optimize")

    def project(v: np.ndarray) -> np.ndarray:
        """argmin_w ½‖w − v‖² subject to w ≥ 0, Σ w = 1 (SLSQP, tight tolerance)."""
        n = len(v)
        result = optimize.minimize(
            lambda w: 0.5 * np.sum((w - v) ** 2),
            np.full(n, 1.0 / n),
            jac=lambda w: w - v,
            bounds=[(0, None)] * n,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones(n)}],
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 500},
        )
        return result.x

    return project
