"""Every registered balancer trains the torchMTL quickstart graph through the Trainer.

On the shared parameters (the graph's own `training_step`) and at a representation: the
outputs of Embed1 and Embed2, the two layers the tasks share, returned as `shared_reps`.
"""

import pytest
import torch
from torch.nn import BCEWithLogitsLoss, Linear, MSELoss, Sequential

from mtlkit import DictDataLoader, DictDataset, MTLModel, Trainer
from mtlkit.data.synthetic import QuickstartDataset
from mtlkit.layers import Concat, SimpleSelect
from mtlkit.protocol import StepOutput
from mtlkit.weighting import available, get


class _AtTheEmbeddings(MTLModel):
    """The quickstart graph with its shared layers' outputs as `shared_reps` (rep_grad)."""

    rep_grad = True

    def training_step(self, X, Y) -> StepOutput:
        reps: list = []
        hooks = [self.get_submodule(n).register_forward_hook(lambda m, i, out: reps.append(out)) for n in SHARED]
        try:
            out = super().training_step(X, Y)
        finally:
            for hook in hooks:
                hook.remove()
        return StepOutput(out.losses, out.counts, reps)


SHARED = ("Embed1", "Embed2")


def _quickstart_model(at_reps: bool = False) -> MTLModel:
    return (_AtTheEmbeddings if at_reps else MTLModel)(
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
@pytest.mark.parametrize("mode", ["params", "reps"])
@pytest.mark.parametrize("method", available(aliases=False))
def test_method_trains_the_quickstart_graph_for_a_few_steps(method, mode):
    torch.manual_seed(0)
    model = _quickstart_model(at_reps=mode == "reps")
    before = [p.detach().clone() for p in model.parameters()]
    weighting = (method, OPTIONS[method]) if method in OPTIONS else method
    trainer = Trainer(n_epochs=2, lr=0.01, weighting=weighting, progress_bar=False, seed=0)
    if mode == "reps" and not get(method, tasks=3).supports_shared_reps:
        with pytest.raises(ValueError, match="cannot act at a shared representation.*rep_grad=False"):
            trainer.fit(model, _loaders())
        return
    trainer.fit(model, _loaders())
    losses = [record["model/all/train/loss"] for record in trainer.history]
    assert trainer.step == 12 and all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))  # every parameter learns
