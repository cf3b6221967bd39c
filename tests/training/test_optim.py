import math

import pytest
import torch
from torch import nn

from mtlkit import ConfigError
from mtlkit.training import TrainerConfig
from mtlkit.training.optim import build_lr_scheduler, build_optimizer


def _lrs(config, batches_per_epoch):
    """The learning rate used at every step of a run (as the Trainer steps: optimizer, then schedule)."""
    p = nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer(config, [p], [])
    schedule = build_lr_scheduler(config, optimizer, batches_per_epoch)
    lrs = []
    for _ in range(config.n_epochs * batches_per_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if schedule is not None:
            schedule.step()
    return lrs


def test_constant_schedule_keeps_the_learning_rate():
    assert _lrs(TrainerConfig(n_epochs=2, lr=0.3), 4) == [0.3] * 8


def test_linear_schedule_decays_to_zero_over_the_run():
    lrs = _lrs(TrainerConfig(n_epochs=2, lr=1.0, lr_scheduler="linear"), 5)
    assert lrs == pytest.approx([1.0 - i / 10 for i in range(10)])


def test_cosine_schedule_follows_the_half_cosine():
    lrs = _lrs(TrainerConfig(n_epochs=1, lr=2.0, lr_scheduler="cosine"), 8)
    assert lrs == pytest.approx([1.0 + math.cos(math.pi * i / 8) for i in range(8)])


def test_exponential_and_step_schedules_use_their_options_in_batches():
    exp = _lrs(TrainerConfig(lr=1.0, lr_scheduler="exponential", lr_scheduler_kwargs={"gamma": 0.5}), 4)
    assert exp == pytest.approx([1.0, 0.5, 0.25, 0.125])
    step = _lrs(TrainerConfig(lr=1.0, lr_scheduler="step", lr_scheduler_kwargs={"step_size": 2, "gamma": 0.1}), 6)
    assert step == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_warmup_in_batches_ramps_linearly_then_hands_over_to_the_schedule():
    lrs = _lrs(TrainerConfig(n_epochs=1, lr=1.0, lr_scheduler="linear", warmup_steps=3), 7)
    # Warm-up factor (i + 1) / (W + 1); then linear decay over the 4 remaining steps.
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 0.75, 0.5, 0.25])


def test_warmup_in_epochs_counts_whole_epochs_of_batches():
    lrs = _lrs(TrainerConfig(n_epochs=3, lr=1.0, warmup_steps=1, warmup_unit="epochs"), 3)
    assert lrs == pytest.approx([0.25, 0.5, 0.75] + [1.0] * 6)


def test_warmup_longer_than_the_run_is_a_config_error():
    with pytest.raises(ConfigError, match="warmup_steps"):
        _lrs(TrainerConfig(n_epochs=1, warmup_steps=5), 4)


def test_warmup_may_last_the_whole_run():
    assert _lrs(TrainerConfig(n_epochs=1, lr=1.0, warmup_steps=4), 4) == pytest.approx([0.2, 0.4, 0.6, 0.8])


def test_user_kwargs_override_the_derived_defaults():
    lrs = _lrs(TrainerConfig(lr=1.0, lr_scheduler="linear", lr_scheduler_kwargs={"end_factor": 0.5}), 4)
    assert lrs == pytest.approx([1.0, 0.875, 0.75, 0.625])


def test_any_torch_scheduler_class_by_name():
    lrs = _lrs(TrainerConfig(lr=1.0, lr_scheduler="MultiStepLR", lr_scheduler_kwargs={"milestones": [1, 3]}), 4)
    assert lrs == pytest.approx([1.0, 0.1, 0.1, 0.01])


def test_l2_decays_model_parameters_but_not_balancer_parameters():
    model_p, balancer_p = nn.Parameter(torch.ones(1)), nn.Parameter(torch.ones(1))
    optimizer = build_optimizer(TrainerConfig(optimizer="sgd", lr=0.1, l2=0.5), [model_p], [balancer_p])
    model_p.grad, balancer_p.grad = torch.zeros(1), torch.zeros(1)
    optimizer.step()
    assert model_p.item() == pytest.approx(1 - 0.1 * 0.5)  # SGD weight decay: p -= lr * l2 * p
    assert balancer_p.item() == 1.0


@pytest.mark.parametrize(
    "name, cls",
    [
        ("sgd", torch.optim.SGD),
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
        ("adamax", torch.optim.Adamax),
    ],
)
def test_named_optimizers_build_their_torch_class(name, cls):
    optimizer = build_optimizer(TrainerConfig(optimizer=name, lr=0.2), [nn.Parameter(torch.ones(1))], [])
    assert type(optimizer) is cls and optimizer.param_groups[0]["lr"] == 0.2


def test_custom_optimizer_class_gets_its_kwargs():
    class MySGD(torch.optim.SGD):
        pass

    config = TrainerConfig(optimizer=MySGD, optimizer_kwargs={"momentum": 0.7})
    optimizer = build_optimizer(config, [nn.Parameter(torch.ones(1))], [])
    assert type(optimizer) is MySGD and optimizer.param_groups[0]["momentum"] == 0.7


def test_a_parameter_shared_with_the_balancer_is_optimised_once():
    p = nn.Parameter(torch.ones(1))
    optimizer = build_optimizer(TrainerConfig(), [p, p], [p])
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 1


def test_exponential_and_step_default_to_snorkels_options():
    exp = _lrs(TrainerConfig(lr=1.0, lr_scheduler="exponential"), 4)
    assert exp == pytest.approx([0.9**i for i in range(4)])  # gamma 0.9 per batch
    step = _lrs(TrainerConfig(lr=1.0, n_epochs=3, lr_scheduler="step"), 4)
    assert step == pytest.approx([1.0] * 5 + [0.9] * 5 + [0.81] * 2)  # step_size 5 batches, gamma 0.9


def test_constant_schedule_is_no_scheduler_unless_there_is_a_warmup():
    p = nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer(TrainerConfig(), [p], [])
    assert build_lr_scheduler(TrainerConfig(), optimizer, 4) is None
    assert _lrs(TrainerConfig(lr=1.0, n_epochs=2, warmup_steps=3), 3) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
