"""Shared builders for the graph tests: the torchMTL quickstart task list."""

from __future__ import annotations

import pytest
import torch
from torch.nn import BCEWithLogitsLoss, Linear, MSELoss, Sequential

from mtlkit.layers import Concat


def quickstart_tasks() -> list[dict]:
    """torchMTL's README quickstart list (fresh layers on each call)."""
    return [
        {"name": "Embed1", "layers": Sequential(Linear(16, 32), Linear(32, 8))},
        {"name": "Embed2", "layers": Sequential(Linear(16, 32), Linear(32, 8))},
        {"name": "CatTask", "layers": Concat(dim=1), "loss_weight": 1.0, "anchor_layer": ["Embed1", "Embed2"]},
        {
            "name": "Task1",
            "layers": Sequential(Linear(8, 32), Linear(32, 1)),
            "loss": MSELoss(),
            "loss_weight": 1.0,
            "anchor_layer": "Embed1",
        },
        {
            "name": "Task2",
            "layers": Sequential(Linear(8, 64), Linear(64, 1)),
            "loss": BCEWithLogitsLoss(),
            "loss_weight": 1.0,
            "anchor_layer": "Embed2",
        },
        {"name": "FNN", "layers": Sequential(Linear(16, 32), Linear(32, 32)), "anchor_layer": "CatTask"},
        {
            "name": "Task3",
            "layers": Sequential(Linear(32, 16), Linear(16, 1)),
            "anchor_layer": "FNN",
            "loss": MSELoss(),
            "loss_weight": "auto",
            "loss_init_val": 1.0,
        },
    ]


@pytest.fixture
def tasks() -> list[dict]:
    torch.manual_seed(0)
    return quickstart_tasks()
