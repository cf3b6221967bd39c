"""A small shared-trunk model with T linear heads, for the balancer tests."""

from __future__ import annotations

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
