"""Every registered balancer trains HPS through the Trainer, on the shared parameters and at the representation.

Methods that cannot act at a representation (`supports_shared_reps = False`) refuse
`rep_grad=True` with an error that says to use rep_grad=False.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlkit import DictDataLoader, DictDataset, Scorer, Trainer
from mtlkit.architectures import HPS
from mtlkit.weighting import available, get


def _model(rep_grad: bool) -> HPS:
    # Three tasks: robust aggregators (Krum, TrimmedMean) are defined from three task gradients on.
    return HPS(
        ["a", "b", "c"],
        encoder_class=lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU()),
        decoders={"a": nn.Linear(8, 2), "b": nn.Linear(8, 1), "c": nn.Linear(8, 1)},
        rep_grad=rep_grad,
        losses={"a": F.cross_entropy, "b": F.mse_loss, "c": F.mse_loss},
        metrics={"a": Scorer(metrics=["accuracy"])},
        input_key="x",
    )


def _loaders() -> list[DictDataLoader]:
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(96, 4, generator=generator)
    Y = {"a": (X[:, 0] > 0).long(), "b": X[:, 1] - X[:, 2], "c": X[:, 3]}
    train = DictDataset("toy", "train", {"x": X[:64]}, {k: v[:64] for k, v in Y.items()})
    valid = DictDataset("toy", "valid", {"x": X[64:]}, {k: v[64:] for k, v in Y.items()})
    return [DictDataLoader(train, batch_size=16, shuffle=True, seed=0), DictDataLoader(valid, batch_size=32)]


@pytest.mark.parametrize("rep_grad", [False, True])
@pytest.mark.parametrize("method", available(aliases=False))
def test_method_trains_hps_through_the_trainer(method, rep_grad):
    torch.manual_seed(0)
    model = _model(rep_grad)
    before = [p.detach().clone() for p in model.shared_parameters()]
    trainer = Trainer(n_epochs=2, lr=0.02, weighting=method, progress_bar=False, seed=0)
    if rep_grad and not getattr(type(get(method, tasks=["a", "b", "c"])), "supports_shared_reps", True):
        with pytest.raises(ValueError, match="rep_grad=False"):
            trainer.fit(model, _loaders())
        return
    trainer.fit(model, _loaders())
    losses = torch.tensor([record["model/all/train/loss"] for record in trainer.history])
    assert trainer.step == 8 and bool(torch.isfinite(losses).all())
    assert all(not torch.equal(b, p) for b, p in zip(before, model.shared_parameters()))
