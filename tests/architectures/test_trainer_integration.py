"""Every architecture trains through the Trainer with EW and with a gradient balancer at its representation."""

import re
from pathlib import Path

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
        encoder_class=lambda: nn.Sequential(
            nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        ),
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
        DictDataLoader(
            DictDataset("toy", "train", {"x": X[:64]}, {k: v[:64] for k, v in Y.items()}),
            batch_size=16,
            shuffle=True,
            seed=0,
        ),
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


def _readme_block(containing: str) -> str:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"expected one README block with {containing!r}, found {len(found)}"
    return found[0]


def test_the_readme_libmtl_snippet_runs_verbatim_on_multi_mnist():
    namespace: dict = {}
    exec(compile(_readme_block("from mtlkit.architectures import MMoE"), "README.md", "exec"), namespace)
    scores = namespace["model"].score(namespace["dataloaders"][2:])
    assert set(scores) == {"left/multi_mnist/test/accuracy", "right/multi_mnist/test/accuracy"}
    assert all(value > 0.2 for value in scores.values())  # chance is 0.1


def test_score_and_predict_as_multitask_classifier_and_fit_warns_without_metrics():
    torch.manual_seed(0)
    model = _model("HPS", False)
    loaders = _loaders()
    Trainer(n_epochs=2, lr=0.02, progress_bar=False, seed=0).fit(model, loaders)
    scores = model.score(loaders)
    assert set(scores) == {"a/toy/train/accuracy", "a/toy/valid/accuracy"}
    predictions = model.predict(loaders[1], return_preds=True)
    assert predictions["preds"]["a"].shape == (32,) and predictions["golds"]["b"].shape == (32,)
    assert scores["a/toy/valid/accuracy"] == pytest.approx(
        float((predictions["preds"]["a"] == predictions["golds"]["a"]).float().mean())
    )
    bare = arch.HPS(
        ["a", "b"],
        lambda: nn.Linear(4, 8),
        {"a": nn.Linear(8, 2), "b": nn.Linear(8, 1)},
        losses={"a": F.cross_entropy, "b": lambda p, y: F.mse_loss(p.squeeze(-1), y)},
    )
    with pytest.warns(UserWarning, match="no metric to report: HPS has no Scorer for any task"):
        assert Trainer(n_epochs=1, progress_bar=False).fit(bare, loaders) == {}
    with pytest.warns(UserWarning, match="no dataloader is of a validation or test split"):
        Trainer(n_epochs=1, progress_bar=False).fit(model, loaders[:1])
    with pytest.raises(ValueError, match="no metrics to score"):
        bare.score(loaders)
