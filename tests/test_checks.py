"""Mistakes caught before training, named: each fed through every front door it applies to."""

import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlkit import ConfigError, DictDataLoader, DictDataset, Scorer, Trainer, checks
from mtlkit.checks import DIVERGENCE_FACTOR, FitChecks
from mtlkit.cli import main
from mtlkit.metrics import score
from mtlkit.protocol import StepOutput

sys.path.insert(0, str(Path(__file__).parent))
from front_doors import FRONT_DOORS, PENGUINS_GRAPH, flows

QUIET = {"progress_bar": False}
X = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
CLASSES = (X[:, 0] > 0).long()
VALUES = X[:, 0] + 0.1 * X[:, 1]


def _head(out_features):
    torch.manual_seed(0)
    return nn.Linear(3, out_features)


def _loaders(y, splits=("train", "valid"), batch_size=8):
    return [DictDataLoader(DictDataset("ds", split, {"x": X}, {"a": y}), batch_size=batch_size) for split in splits]


def _fit(model, y, **config):
    return Trainer(n_epochs=1, **QUIET, **config).fit(model, _loaders(y))


# --- the head's output against the targets, on the first batch --------------------------


@pytest.mark.parametrize("front_door", FRONT_DOORS)
def test_a_regression_heads_trailing_one_is_squeezed_for_torchs_elementwise_losses(front_door):
    head = _head(1)
    out = front_door(head, F.mse_loss, Scorer(["mse"])).training_step({"x": X}, {"a": VALUES})
    squeezed = F.mse_loss(head(X).squeeze(1), VALUES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        broadcast = F.mse_loss(head(X), VALUES)  # what mse_loss did before: every output against every target
    assert out.losses["a"].item() == pytest.approx(squeezed.item())
    assert abs(squeezed.item() - broadcast.item()) > 0.1


@pytest.mark.parametrize("front_door", FRONT_DOORS)
def test_a_loss_that_broadcasts_the_heads_output_is_named_on_the_first_batch(front_door):
    model = front_door(_head(1), lambda out, y: F.mse_loss(out, y), Scorer(["mse"]))
    with pytest.raises(
        ConfigError, match=r"task 'a' on dataset 'ds' \(split 'train'\).*broadcasts.*\(8, 1\) against \(8,\)"
    ):
        _fit(model, VALUES)


@pytest.mark.parametrize("front_door", FRONT_DOORS)
def test_a_head_narrower_than_the_classes_is_named_even_when_the_first_batch_lacks_the_top_class(front_door):
    y = CLASSES.clone()
    y[-1] = 2  # in the last batch only: the dataset's labels are checked, not only the batch's
    with pytest.raises(
        ConfigError, match=r"task 'a' on dataset 'ds' \(split 'train'\).*up to class 2.*give the head 3 outputs"
    ):
        _fit(front_door(_head(2), F.cross_entropy, Scorer(["accuracy"])), y)


@pytest.mark.parametrize("front_door", FRONT_DOORS)
def test_class_labels_of_a_validation_split_are_checked_against_the_head_too(front_door):
    valid = torch.where(CLASSES == 1, 3, 0)
    model = front_door(_head(2), F.cross_entropy, Scorer(["accuracy"]))
    with pytest.raises(
        ConfigError, match=r"task 'a' on dataset 'ds' \(split 'valid'\).*up to class 3.*give the head 4"
    ):
        Trainer(n_epochs=1, **QUIET).fit(model, [*_loaders(CLASSES, ["train"]), *_loaders(valid, ["valid"])])


@pytest.mark.parametrize("front_door", FRONT_DOORS)
def test_negative_class_labels_other_than_the_marker_are_named(front_door):
    y = torch.where(CLASSES == 1, -2, 0)
    with pytest.raises(ConfigError, match=r"task 'a' on dataset 'ds'.*\[0, 2\) or be -1 \(no label\); found \[-2\]"):
        _fit(front_door(_head(2), F.cross_entropy, Scorer(["accuracy"])), y)


@pytest.mark.parametrize("front_door", FRONT_DOORS)
def test_float_labels_for_a_classification_loss_are_named(front_door):
    with pytest.raises(ConfigError, match=r"task 'a' on dataset 'ds'.*floating point.*cross_entropy.*\.long\(\)"):
        _fit(front_door(_head(2), F.cross_entropy, Scorer(["accuracy"])), CLASSES.float())


@pytest.mark.parametrize("front_door", FRONT_DOORS)
def test_class_labels_of_shape_n_by_one_are_named(front_door):
    with pytest.raises(ConfigError, match=r"task 'a' on dataset 'ds'.*shape \(8, 1\).*labels.view\(-1\)"):
        _fit(front_door(_head(2), F.cross_entropy, Scorer(["accuracy"])), CLASSES[:, None])


@pytest.mark.parametrize("front_door", FRONT_DOORS)
def test_a_one_output_head_for_cross_entropy_is_named(front_door):
    with pytest.raises(ConfigError, match=r"task 'a' on dataset 'ds'.*1 score per row.*at least 2"):
        _fit(front_door(_head(1), F.cross_entropy, Scorer(["accuracy"])), CLASSES)


def test_the_cli_names_a_head_narrower_than_the_classes_in_one_line(tmp_path, capsys):
    path = tmp_path / "graph.yaml"
    path.write_text(PENGUINS_GRAPH.replace("SPECIES", "2"))
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "task 'species' on dataset 'penguins' (split 'train')" in err and "give the head 3 outputs" in err


@pytest.mark.parametrize("front_door", FRONT_DOORS)
def test_integer_targets_for_a_regression_loss_are_named(front_door):
    with pytest.raises(ConfigError, match=r"task 'a' on dataset 'ds'.*int64 but mse_loss.*float targets"):
        _fit(front_door(_head(1), F.mse_loss, Scorer(["mae"])), CLASSES)


def test_the_first_batch_checks_run_once_per_training_dataset(monkeypatch):
    calls = []
    check = checks.first_batch_loss
    monkeypatch.setattr(
        checks, "first_batch_loss", lambda *args: calls.append(checks.first_batch_dataset().name) or check(*args)
    )
    loaders = [
        DictDataLoader(DictDataset(name, "train", {"x": X}, {"a": CLASSES}), batch_size=8) for name in ("one", "two")
    ]
    Trainer(n_epochs=3, **QUIET).fit(flows(_head(2), F.cross_entropy, Scorer(["accuracy"])), loaders)
    assert sorted(calls) == ["one", "two"]  # 24 steps, two checks
    assert checks.first_batch_dataset() is None


# --- before the first epoch ---------------------------------------------------------------


@pytest.mark.parametrize("front_door", FRONT_DOORS)
def test_an_unknown_checkpoint_metric_is_named_before_the_first_epoch(front_door):
    model = front_door(_head(2), F.cross_entropy, Scorer(["accuracy"]))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ConfigError, match=r"checkpoint_metric 'a/ds/valid/acuracy'.*close keys: 'a/ds/valid/accuracy'"):
        _fit(model, CLASSES, early_stopping=2, checkpoint_metric="a/ds/valid/acuracy:max")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no step was taken


def test_a_checkpoint_metric_of_a_validation_label_with_no_labelled_row_is_named_before_training():
    loaders = [*_loaders(CLASSES, ["train"]), *_loaders(torch.full_like(CLASSES, -1), ["valid"])]
    model = flows(_head(2), F.cross_entropy, Scorer(["accuracy"]))
    with pytest.raises(ConfigError, match=r"checkpoint_metric 'a/ds/valid/accuracy' is none of the scores"):
        Trainer(n_epochs=1, early_stopping=2, checkpoint_metric="a/ds/valid/accuracy:max", **QUIET).fit(model, loaders)
    assert all(p.grad is None for p in model.parameters())  # no step was taken


def test_known_checkpoint_metrics_pass_including_training_losses_and_custom_metrics(tmp_path):
    scorer = Scorer(["accuracy"], custom_metric_funcs={"mine": lambda golds, preds, probs: {"m1": 0.5}})
    for key in ("a/ds/valid/accuracy:max", "a/ds/train/loss:min", "a/ds/valid/m1:max"):
        model = flows(_head(2), F.cross_entropy, scorer)
        _fit(model, CLASSES, checkpointing=True, checkpoint_dir=str(tmp_path), checkpoint_metric=key)


@pytest.mark.parametrize("front_door", FRONT_DOORS)
def test_a_task_without_labelled_training_rows_is_warned_about(front_door):
    model = front_door(_head(2), F.cross_entropy, Scorer(["accuracy"]))
    loaders = [
        DictDataLoader(DictDataset("ds", "train", {"x": X}, {"a": torch.full_like(CLASSES, -1)}), batch_size=8),
        DictDataLoader(DictDataset("ds", "valid", {"x": X}, {"a": CLASSES}), batch_size=8),
    ]
    with pytest.warns(
        UserWarning, match=r"task 'a' has no labelled row in the training data \(ds/train\).*never trained"
    ):
        final = Trainer(n_epochs=1, **QUIET).fit(model, loaders)
    assert "a/ds/valid/accuracy" in final  # still scored, as the warning says


@pytest.mark.parametrize("front_door", FRONT_DOORS)
@pytest.mark.parametrize("split", ["valid", "test"])
def test_an_empty_evaluation_split_is_named(front_door, split):
    loaders = [
        DictDataLoader(DictDataset("ds", "train", {"x": X}, {"a": CLASSES}), batch_size=8),
        DictDataLoader(DictDataset("ds", split, {"x": X[:0]}, {"a": CLASSES[:0]}), batch_size=8),
    ]
    with pytest.raises(ConfigError, match=f"dataset 'ds' has no rows in its '{split}' split"):
        Trainer(n_epochs=1, **QUIET).fit(front_door(_head(2), F.cross_entropy, Scorer(["accuracy"])), loaders)


@pytest.mark.parametrize("front_door", FRONT_DOORS)
def test_scoring_an_empty_split_is_named(front_door):
    model = front_door(_head(2), F.cross_entropy, Scorer(["accuracy"]))
    empty = DictDataLoader(DictDataset("ds", "valid", {"x": X[:0]}, {"a": CLASSES[:0]}), batch_size=8)
    with pytest.raises(ValueError, match="dataset 'ds' has no rows in its 'valid' split: nothing to score"):
        score(model, [empty])


# --- after each evaluation ----------------------------------------------------------------


def test_a_loss_grown_by_orders_of_magnitude_is_warned_about_once():
    watch = FitChecks(flows(_head(2), F.cross_entropy, Scorer(["accuracy"])), _loaders(CLASSES, ["train"]), [], [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        watch.evaluated({"model/all/train/loss": 2.0}, 1)
        watch.evaluated({"model/all/train/loss": 2.0 * DIVERGENCE_FACTOR / 2}, 2)  # grown, but less than the factor
        watch.evaluated({"model/all/train/loss": 2.0 * DIVERGENCE_FACTOR}, 3)
        watch.evaluated({"model/all/train/loss": 4.0 * DIVERGENCE_FACTOR}, 4)
    assert [str(w.message) for w in caught] == [
        "training loss model/all/train/loss grew from 2 (epoch 1) to 2e+03 (epoch 3): training is diverging; "
        "lower lr, add grad_clip, or check the scale of the task's targets"
    ]


class _GrowingLoss(nn.Module):
    """A model whose finite training loss grows a hundredfold per step (its gradient is zero)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.steps = 0

    @property
    def task_names(self):
        return ["a"]

    def training_step(self, X, Y):
        self.steps += 1
        return StepOutput({"a": self.w * 0 + 100.0**self.steps}, {"a": len(Y["a"])})

    def shared_parameters(self):
        return [self.w]

    def task_outputs(self, X, task_names):
        return {"a": torch.full((len(X["x"]), 2), 0.5)}

    def scorers(self):
        return {"a": Scorer(["accuracy"])}


def test_the_trainer_warns_when_training_losses_diverge_while_finite():
    with pytest.warns(RuntimeWarning, match=r"training loss model/all/train/loss grew from .* training is diverging"):
        Trainer(n_epochs=2, **QUIET).fit(_GrowingLoss(), _loaders(CLASSES, batch_size=16))


def test_the_trainer_warns_when_a_validation_score_is_not_finite():
    model = flows(_head(1), F.mse_loss, Scorer(["mse"]))
    model.tasks["a"].output_func = lambda out: out.squeeze(-1) * float("nan")
    with pytest.warns(RuntimeWarning, match=r"score a/ds/valid/mse is nan after epoch 1"):
        _fit(model, VALUES)
