"""Fixtures: a tiny two-task model implementing `MultiTaskModel`, and DictDataLoaders for it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlkit import DictDataLoader, DictDataset, Scorer
from mtlkit.training import StepOutput


class ToyMTL(nn.Module):
    """Shared Linear+ReLU(+Dropout) trunk, one Linear head per task, cross-entropy; label -1 = none.

    `rep_grad=True` returns the trunk output as `shared_reps`; `nan_grad=True` makes
    every gradient NaN while the losses stay finite. `interrupt_at` raises
    KeyboardInterrupt on that call of `training_step` (to cut a run short).
    """

    def __init__(self, tasks=("a", "b"), rep_grad=False, dropout=0.0, interrupt_at=None, nan_grad=False):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Dropout(dropout))
        self.heads = nn.ModuleDict({t: nn.Linear(8, 2) for t in tasks})
        self.rep_grad = rep_grad
        self.interrupt_at = interrupt_at
        self.nan_grad = nan_grad
        self.calls = 0
        self.trunk_dtypes: list[torch.dtype] = []

    @property
    def task_names(self):
        return list(self.heads)

    def training_step(self, X, Y):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        h = self.trunk(X["x"])
        self.trunk_dtypes.append(h.dtype)
        losses, counts = {}, {}
        for task, y in Y.items():
            mask = y != -1
            if task in self.heads and mask.any():
                losses[task] = F.cross_entropy(self.heads[task](h)[mask], y[mask])
                if self.nan_grad:  # adds 0 to the loss and NaN to its gradient (d sqrt(u)/du at u = 0)
                    losses[task] = losses[task] + (h * 0).sum().abs().sqrt()
                counts[task] = int(mask.sum())
        return StepOutput(losses, counts, [h] if self.rep_grad else None)

    def shared_parameters(self):
        return list(self.trunk.parameters())

    def task_outputs(self, X, task_names):
        h = self.trunk(X["x"])
        return {t: F.softmax(self.heads[t](h), dim=1) for t in task_names}

    def scorers(self):
        return {t: Scorer(metrics=["accuracy"]) for t in self.heads}


def _make_loaders(n=32, batch_size=8, seed=0, splits=("train", "valid", "test"), loader_seed=0):
    """One dataset per task ('dsA' labels task a: x0 > 0; 'dsB' labels task b: x1 > 0), each split.

    Training loaders shuffle with seeds `loader_seed`, `loader_seed + 1`.
    """
    g = torch.Generator().manual_seed(seed)
    loaders = []
    for name, task, column in (("dsA", "a", 0), ("dsB", "b", 1)):
        for split in splits:
            x = torch.rand(n, 2, generator=g) * 2 - 1
            y = (x[:, column] > 0).long()
            dataset = DictDataset(name, split, {"x": x}, {task: y})
            shuffle = split == "train"
            loader_kwargs = {"shuffle": True, "seed": loader_seed + len(loaders)} if shuffle else {}
            loaders.append(DictDataLoader(dataset, batch_size=batch_size, **loader_kwargs))
    return loaders


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.fixture
def make_model():
    """`make_model(seed=0, **ToyMTL options)`: a ToyMTL initialised from `seed`."""

    def make(seed=0, **kwargs):
        torch.manual_seed(seed)
        return ToyMTL(**kwargs)

    return make


@pytest.fixture
def make_loaders():
    """`make_loaders(n=32, batch_size=8, seed=0, splits=..., loader_seed=0)`: dsA/dsB loaders."""
    return _make_loaders


@pytest.fixture
def params():
    """`params(model)`: detached copies of the model's parameters."""
    return _params
