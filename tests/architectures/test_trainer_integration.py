"""Every architecture trains through the Trainer with EW and with a gradient balancer at its representation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlkit import DictDataLoader, DictDataset, Scorer, Trainer
from mtlkit import architectures as arch

OPTIONS = {
    "HPS": {},
    "CrossStitch": {},
    "MMoE": {"num_experts": 3},
    "MTAN": {},
    "CGC": {"num_experts": [2, 1, 1]},
    "PLE": {"num_experts": [2, 1, 1]},
    "DSelectK": {"num_experts": 3, "num_nonzeros": 2},
    "LTB": {"epochs": 3},
}


def _model(name: str, rep_grad: bool) -> arch.Architecture:
    return getattr(arch, name)(
        ["a", "b"],
        encoder_class=lambda: nn.Sequential(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Sequential(nn.Linear(8, 8), nn.ReLU())),
        decoders={"a": nn.Linear(8, 2), "b": nn.Linear(8, 1)},
        rep_grad=rep_grad,
        losses={"a": F.cross_entropy, "b": lambda pred, y: F.mse_loss(pred.squeeze(-1), y)},
        metrics={"a": Scorer(metrics=["accuracy"])},
        input_key="x",
        **OPTIONS[name],
    )


def _loaders() -> list[DictDataLoader]:
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(96, 4, generator=generator)
    Y = {"a": (X[:, 0] > 0).long(), "b": X[:, 1] - X[:, 2]}
    return [
        DictDataLoader(DictDataset("toy", "train", {"x": X[:64]}, {k: v[:64] for k, v in Y.items()}), batch_size=16, shuffle=True, seed=0),
        DictDataLoader(DictDataset("toy", "valid", {"x": X[64:]}, {k: v[64:] for k, v in Y.items()}), batch_size=32),
    ]


@pytest.mark.parametrize(("weighting", "rep_grad"), [("ew", False), ("mgda", True)])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_architecture_trains_through_the_trainer(name, weighting, rep_grad):
    torch.manual_seed(0)
    model = _model(name, rep_grad)
    trainer = Trainer(n_epochs=3, lr=0.02, weighting=weighting, progress_bar=False, seed=0)
    scores = trainer.fit(model, _loaders())
    losses = [record["model/all/train/loss"] for record in trainer.history]
    assert losses[-1] < losses[0], losses
    assert "a/toy/valid/accuracy" in scores
    assert all(p.grad is not None for p in model.shared_parameters())


def test_output_funcs_shape_what_scoring_sees_but_not_forward():
    torch.manual_seed(0)
    model = _model("HPS", rep_grad=False)
    model.output_funcs = {"a": lambda y: y.softmax(dim=1)}
    x = torch.randn(5, 4)
    outputs = model.task_outputs({"x": x}, ["a", "b"])
    assert torch.allclose(outputs["a"].sum(dim=1), torch.ones(5))
    assert torch.allclose(outputs["a"], model(x)["a"].softmax(dim=1))
    assert torch.equal(outputs["b"], model(x)["b"])


@pytest.mark.parametrize("name", ["CrossStitch", "LTB"])
def test_column_mixing_architectures_need_two_tasks(name):
    from mtlkit import SpecError

    with pytest.raises(SpecError, match=f"{name} mixes between task columns: it needs at least two tasks"):
        getattr(arch, name)(
            ["a"],
            encoder_class=lambda: nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8)),
            decoders={"a": nn.Linear(8, 2)},
            **OPTIONS[name],
        )
