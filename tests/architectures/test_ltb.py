"""Learning to branch: warm-up, Gumbel-softmax branching, deterministic eval."""

import math

import pytest
import torch
from torch import nn

from mtlkit.architectures import LTB
from mtlkit.errors import ConfigError

TASKS = ["a", "b"]


def stages() -> nn.Sequential:
    return nn.Sequential(*(nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(3)))


def make(**kwargs) -> LTB:
    torch.manual_seed(0)
    return LTB(TASKS, stages, {t: nn.Linear(4, 1) for t in TASKS}, **kwargs)


def test_warm_up_reads_the_mean_of_the_columns_then_one_sampled_column():
    model = make(epochs=200)  # warm-up: the first 2 epochs
    assert model.warmup * model.epochs == 2
    model.set_epoch(1)
    torch.testing.assert_close(model._mixing(0), torch.full((2, 2), 0.5))
    model.set_epoch(2)
    assert model.temperature() == pytest.approx(200 / 20 / math.sqrt(3))
    M = model._mixing(0)
    assert set(M.flatten().tolist()) <= {0.0, 1.0} and (M.sum(1) == 1).all()
    x = torch.randn(5, 4)
    model(x)["a"].sum().backward()
    assert model.branch_logits[0].grad is not None and model.branch_logits[0].grad.abs().sum() > 0


def test_eval_reads_each_tasks_most_likely_parent():
    model = make(epochs=10)
    with torch.no_grad():
        model.branch_logits[0].copy_(torch.tensor([[0.0, 3.0], [0.0, 3.0]]))
        model.branch_logits[1].copy_(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    model.eval()
    assert model.branches().tolist() == [[1, 1], [0, 1]]
    torch.testing.assert_close(model._mixing(0), torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    x = torch.randn(5, 4)
    torch.testing.assert_close(model(x)["a"], model(x)["a"])


def test_without_epochs_the_schedule_is_that_of_a_100_epoch_run():
    # LibMTL's LTB runs without an explicit length too; the first epoch warms up, then τ = 5/√(epoch + 1).
    model = make()
    model(torch.randn(2, 4))  # epoch 0: warm-up
    torch.testing.assert_close(model._mixing(0), torch.full((2, 2), 0.5))
    model.set_epoch(3)
    assert model.temperature() == pytest.approx(100 / 20 / 2)
    model.set_epoch(3, epochs=40)  # the length can come with the epoch
    assert model.epochs == 40 and model.temperature() == pytest.approx(40 / 20 / 2)
    with pytest.raises(ConfigError, match="epochs"):
        make(epochs=0)


def test_trains_under_the_trainer_without_epochs():
    from mtlkit import DictDataLoader, DictDataset, Trainer

    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    data = DictDataset("d", "train", {"input_data": x}, {"a": x[:, :1], "b": -x[:, 1:2]})
    model = LTB(TASKS, stages, {t: nn.Linear(4, 1) for t in TASKS}, losses={t: nn.functional.mse_loss for t in TASKS})
    with pytest.warns(UserWarning, match="no metric to report"):  # no validation split here
        Trainer(n_epochs=3, lr=0.01, progress_bar=False).fit(model, [DictDataLoader(data, batch_size=8)])
    assert model.epoch == 2 and model.branches().shape == (2, 2)
    assert model.epochs == 3  # the run's length, for a model built without its own
    assert model.temperature() == pytest.approx(3 / 20 / math.sqrt(3))


def test_the_trainer_keeps_an_ltb_schedule_of_its_own_length():
    from mtlkit import DictDataLoader, DictDataset, Trainer

    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    data = DictDataset("d", "train", {"input_data": x}, {"a": x[:, :1], "b": -x[:, 1:2]})
    model = LTB(
        TASKS, stages, {t: nn.Linear(4, 1) for t in TASKS}, epochs=40, losses={t: nn.functional.mse_loss for t in TASKS}
    )
    with pytest.warns(UserWarning, match="no metric to report"):
        Trainer(n_epochs=2, lr=0.01, progress_bar=False).fit(model, [DictDataLoader(data, batch_size=8)])
    assert model.epochs == 40
