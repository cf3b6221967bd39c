"""The one Trainer trains each front door's model through the protocol."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlkit import MTLModel, Scorer, Trainer
from mtlkit.architectures import HPS

QUIET = {"progress_bar": False}


def _hps(rep_grad):
    return HPS(
        ["a", "b"],
        encoder_class=lambda: nn.Sequential(nn.Linear(2, 8), nn.ReLU()),
        decoders={"a": nn.Linear(8, 2), "b": nn.Linear(8, 2)},
        rep_grad=rep_grad,
        losses={"a": F.cross_entropy, "b": F.cross_entropy},
        metrics={"a": Scorer(metrics=["accuracy"]), "b": Scorer(metrics=["accuracy"])},
        input_key="x",
    )


@pytest.mark.parametrize("rep_grad", [False, True])
def test_architecture_trains_with_a_gradient_balancer(rep_grad, make_loaders):
    torch.manual_seed(0)
    model = _hps(rep_grad)
    trainer = Trainer(n_epochs=4, lr=0.05, weighting="imtl_g", **QUIET)
    final = trainer.fit(model, make_loaders())
    losses = [r["model/all/train/loss"] for r in trainer.history]
    assert losses[-1] < losses[0]
    assert "a/dsA/test/accuracy" in final and "b/dsB/valid/accuracy" in final


def test_torchmtl_graph_model_trains_with_uncertainty_weighting(make_loaders):
    torch.manual_seed(0)
    model = MTLModel(
        [
            {"name": "input", "layers": lambda X: X["x"]},  # the dict batch of a DictDataLoader
            {"name": "trunk", "layers": nn.Sequential(nn.Linear(2, 8), nn.ReLU()), "anchor_layer": "input"},
            {
                "name": "a",
                "layers": nn.Linear(8, 2),
                "anchor_layer": "trunk",
                "loss": F.cross_entropy,
                "metrics": ["accuracy"],
            },
            {"name": "b", "layers": nn.Linear(8, 2), "anchor_layer": "trunk", "loss": F.cross_entropy},
        ],
        output_tasks=["a", "b"],
    )
    trainer = Trainer(n_epochs=3, lr=0.05, weighting="uw", **QUIET)
    final = trainer.fit(model, make_loaders())
    assert not torch.equal(trainer.balancer.log_var.detach(), torch.zeros(2))
    assert "a/dsA/valid/accuracy" in final and not any(key.startswith("b/") for key in final)
