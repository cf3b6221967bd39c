"""Every registered balancer trains the torchMTL quickstart graph through the Trainer."""

import pytest
import torch
from torch.nn import BCEWithLogitsLoss, Linear, MSELoss, Sequential

from mtlkit import DictDataLoader, DictDataset, MTLModel, Trainer
from mtlkit.data.synthetic import QuickstartDataset
from mtlkit.layers import Concat, SimpleSelect
from mtlkit.weighting import available


def _quickstart_model() -> MTLModel:
    return MTLModel(
        [
            {"name": "X", "layers": SimpleSelect("x")},  # DictDataLoader batches are dicts
            {"name": "Embed1", "layers": Sequential(Linear(16, 32), Linear(32, 8)), "anchor_layer": "X"},
            {"name": "Embed2", "layers": Sequential(Linear(16, 32), Linear(32, 8)), "anchor_layer": "X"},
            {"name": "CatTask", "layers": Concat(dim=1), "anchor_layer": ["Embed1", "Embed2"]},
            {"name": "Task1", "layers": Linear(8, 1), "anchor_layer": "Embed1", "loss": MSELoss(), "loss_weight": 1.0},
            {
                "name": "Task2",
                "layers": Linear(8, 1),
                "anchor_layer": "Embed2",
                "loss": BCEWithLogitsLoss(),
                "loss_weight": 1.0,
            },
            {"name": "FNN", "layers": Sequential(Linear(16, 32), Linear(32, 32)), "anchor_layer": "CatTask"},
            {
                "name": "Task3",
                "layers": Linear(32, 1),
                "anchor_layer": "FNN",
                "loss": MSELoss(),
                "loss_weight": "auto",
                "loss_init_val": 1.0,
            },
        ],
        output_tasks=["Task1", "Task2", "Task3"],
    )


def _loaders() -> list[DictDataLoader]:
    data = QuickstartDataset(n=128, seed=0)
    labels = dict(zip(["Task1", "Task2", "Task3"], data.targets))
    train = {task: y[:96] for task, y in labels.items()}
    valid = {task: y[96:] for task, y in labels.items()}  # Auto-λ's meta objective
    return [
        DictDataLoader(
            DictDataset("quickstart", "train", {"x": data.X[:96]}, train), batch_size=16, shuffle=True, seed=0
        ),
        DictDataLoader(DictDataset("quickstart", "valid", {"x": data.X[96:]}, valid), batch_size=16),
    ]


# Krum with its default n_selected = 1 applies one task's gradient per step, by design; on this
# graph Task2's always wins, so Embed1 (shared by Task1 and Task3 only) would never learn.
OPTIONS = {"krum": {"n_selected": 2}}


@pytest.mark.filterwarnings("ignore:fit has no metric to report")  # training only: no validation split
@pytest.mark.parametrize("method", available(aliases=False))
def test_method_trains_the_quickstart_graph_for_a_few_steps(method):
    torch.manual_seed(0)
    model = _quickstart_model()
    before = [p.detach().clone() for p in model.parameters()]
    weighting = (method, OPTIONS[method]) if method in OPTIONS else method
    trainer = Trainer(n_epochs=2, lr=0.01, weighting=weighting, progress_bar=False, seed=0)
    trainer.fit(model, _loaders())
    losses = [record["model/all/train/loss"] for record in trainer.history]
    assert trainer.step == 12 and all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))  # every parameter learns
