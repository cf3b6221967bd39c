import dataclasses
import os

import pytest
import torch

from mtlkit import ConfigError
from mtlkit.training import TrainerConfig
from mtlkit.training.config import parse_metric
from mtlkit.weighting import get


def test_defaults_live_in_the_record():
    config = TrainerConfig()
    assert (config.n_epochs, config.optimizer, config.lr_scheduler, config.weighting) == (1, "adam", "constant", "ew")
    assert config.nonfinite_loss == "raise"


def test_config_is_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainerConfig().lr = 1.0


def test_unknown_key_is_named_with_close_spellings():
    with pytest.raises(ConfigError, match=r"'n_epoch'.*Did you mean 'n_epochs'"):
        TrainerConfig.from_dict({"n_epoch": 3})


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("optimizer", "adamm", "'sgd', 'adam', 'adamw', 'adamax'"),
        ("lr_scheduler", "cosin", "'constant', 'linear', 'exponential', 'step', 'cosine'"),
        ("warmup_unit", "steps", "'batches', 'epochs'"),
        ("nonfinite_loss", "ignore", "'raise', 'skip'"),
        ("precision", "fp16", "'fp32', 'bf16'"),
        ("log_writers", ["csv"], "'json', 'tensorboard'"),
        ("batch_scheduler", "shuffle", "'round_robin', 'sequential', 'shuffled', 'temperature'"),
    ],
)
def test_bad_choice_names_the_key_and_allowed_values(key, value, allowed):
    with pytest.raises(ConfigError) as info:
        TrainerConfig.from_dict({key: value})
    assert key in str(info.value) and allowed in str(info.value)


@pytest.mark.parametrize(
    "key, value",
    [
        ("n_epochs", 0),
        ("n_epochs", 1.5),
        ("n_epochs", True),
        ("lr", 0),
        ("lr", "0.1"),
        ("l2", -1.0),
        ("grad_clip", -0.5),
        ("log_every", 0),
        ("checkpoint_runway", -1),
        ("early_stopping", 0),
        ("seed", -3),
    ],
)
def test_bad_number_is_rejected_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        TrainerConfig.from_dict({key: value})


def test_warmup_in_batches_must_be_whole():
    with pytest.raises(ConfigError, match="warmup_steps"):
        TrainerConfig(warmup_steps=2.5)
    assert TrainerConfig(warmup_steps=0.5, warmup_unit="epochs").warmup_steps == 0.5


@pytest.mark.parametrize(
    "text", ["a/b/c/accuracy", "a/b/c/accuracy:maximum", "a/b/accuracy:max", "a//c/d:min", "a/b/c/d:max:min"]
)
def test_malformed_checkpoint_metric_is_rejected_when_the_trainer_starts(text):
    with pytest.raises(ConfigError, match="checkpoint_metric"):
        TrainerConfig(checkpoint_metric=text)


def test_checkpoint_metric_splits_into_key_and_mode():
    assert parse_metric("circle_task/circleDataset/valid/accuracy:max") == (
        "circle_task/circleDataset/valid/accuracy",
        "max",
    )


def test_constant_takes_no_scheduler_options():
    with pytest.raises(ConfigError, match="'constant' is no schedule"):
        TrainerConfig(lr_scheduler="constant", lr_scheduler_kwargs={"factor": 0.5})


def test_unknown_optimizer_option_is_named_with_close_spellings():
    with pytest.raises(ConfigError, match=r"'momentun'.*Did you mean 'momentum'"):
        TrainerConfig(optimizer="sgd", optimizer_kwargs={"momentun": 0.9})


def test_optimizer_kwargs_cannot_shadow_lr_or_l2():
    with pytest.raises(ConfigError, match="lr and l2"):
        TrainerConfig(optimizer_kwargs={"weight_decay": 0.1})


def test_any_torch_optimizer_class_or_its_name_is_accepted():
    class MySGD(torch.optim.SGD):
        pass

    assert TrainerConfig(optimizer="RAdam").optimizer == "RAdam"
    assert TrainerConfig(optimizer=MySGD, optimizer_kwargs={"momentum": 0.5}).optimizer is MySGD
    with pytest.raises(ConfigError, match="not a torch.optim.Optimizer"):
        TrainerConfig(optimizer=dict)


def test_weighting_forms_normalise_to_name_or_name_and_options():
    assert TrainerConfig(weighting="dwa").weighting == "dwa"
    tuple_form = TrainerConfig(weighting=("dwa", {"temperature": 3.0})).weighting
    dict_form = TrainerConfig(weighting={"name": "dwa", "temperature": 3.0}).weighting
    yaml_form = TrainerConfig(weighting=["dwa", {"temperature": 3.0}]).weighting
    assert tuple_form[0] == dict_form[0] == yaml_form[0] == "dwa"
    assert dict(tuple_form[1]) == dict(dict_form[1]) == dict(yaml_form[1]) == {"temperature": 3.0}
    balancer = get("ew")
    assert TrainerConfig(weighting=balancer).weighting is balancer


def test_unknown_weighting_name_suggests_close_names():
    with pytest.raises(ConfigError, match=r"'dwaa'.*Did you mean 'dwa'"):
        TrainerConfig(weighting="dwaa")


def test_splits_and_writers_accept_a_single_name():
    config = TrainerConfig(train_split="training", log_writers="tensorboard")
    assert config.train_split == ("training",)
    assert config.log_writers == ("tensorboard",)


def test_to_dict_is_plain_and_round_trips():
    config = TrainerConfig(optimizer=torch.optim.RAdam, weighting=("dwa", {"temperature": 3.0}), device="cpu")
    plain = config.to_dict()
    assert plain["optimizer"] == "RAdam" and plain["weighting"] == ["dwa", {"temperature": 3.0}]
    assert plain["device"] == "cpu"
    assert TrainerConfig.from_dict(plain) == TrainerConfig.from_dict(TrainerConfig.from_dict(plain).to_dict())


def test_objects_a_checkpoint_cannot_hold_are_listed():
    class MySGD(torch.optim.SGD):
        pass

    config = TrainerConfig(optimizer=MySGD, weighting=get("ew"))
    assert config.unsaved_keys() == ["optimizer", "weighting"]
    assert config.to_dict()["optimizer"] is None


def test_snorkel_nested_options_map_to_the_flat_ones():
    config = TrainerConfig.from_dict(
        {
            "n_epochs": 4,
            "optimizer": "sgd",
            "lr_scheduler": "step",
            "optimizer_config": {"sgd_config": {"momentum": 0.5}, "adam_config": {"amsgrad": True}},
            "lr_scheduler_config": {
                "warmup_steps": 2,
                "warmup_unit": "epochs",
                "step_config": {"step_size": 3, "gamma": 0.5},
                "exponential_config": {"gamma": 0.1},
            },
            "log_writer": "json",
            "log_writer_config": {"log_dir": "logs", "run_name": "r1"},
            "checkpointer_config": {
                "checkpoint_dir": "ck",
                "checkpoint_metric": "t/d/valid/acc:max",
                "checkpoint_factor": 2,
            },
            "log_manager_config": {"counter_unit": "epochs", "evaluation_freq": 2},
            "model_config": {"device": -1, "dataparallel": True},
        }
    )
    assert dict(config.optimizer_kwargs) == {"momentum": 0.5}  # only the chosen optimizer's options
    assert dict(config.lr_scheduler_kwargs) == {"step_size": 3, "gamma": 0.5}
    assert (config.warmup_steps, config.warmup_unit) == (2, "epochs")
    assert config.log_writers == ("json",) and config.log_dir == os.path.join("logs", "r1")
    assert (config.checkpoint_dir, config.checkpoint_metric) == ("ck", "t/d/valid/acc:max")
    assert (config.evaluate_every, config.checkpoint_every) == (2, 4)  # factor 2 x every 2 epochs
    assert config.device == torch.device("cpu")


def test_warmup_percentage_is_a_share_of_the_whole_run():
    config = TrainerConfig.from_dict({"n_epochs": 4, "lr_scheduler_config": {"warmup_percentage": 0.25}})
    assert (config.warmup_steps, config.warmup_unit) == (1.0, "epochs")


def test_nested_options_refuse_what_mtlkit_cannot_honour():
    with pytest.raises(ConfigError, match="Unrecognized writer option log_writer='csv'"):
        TrainerConfig.from_dict({"log_writer": "csv"})
    with pytest.raises(ConfigError, match="counter_unit'\\]='batches'.*whole epochs"):
        TrainerConfig.from_dict({"log_manager_config": {"counter_unit": "batches"}})
    with pytest.raises(ConfigError, match="min_lr"):
        TrainerConfig.from_dict({"lr_scheduler_config": {"min_lr": 1e-4}})
    with pytest.raises(ConfigError, match="checkpoint_task_metrics"):
        TrainerConfig.from_dict({"checkpointer_config": {"checkpoint_task_metrics": ["a/b/c/d:max"]}})
    with pytest.raises(ConfigError, match="'warmup_step' in lr_scheduler_config. Did you mean 'warmup_steps'"):
        TrainerConfig.from_dict({"lr_scheduler_config": {"warmup_step": 1}})
    with pytest.raises(ConfigError, match="sets warmup_steps, which is also given"):
        TrainerConfig.from_dict({"warmup_steps": 1, "lr_scheduler_config": {"warmup_steps": 2}})
    with pytest.raises(ConfigError, match="unknown Trainer option 'n_epoch'.*Did you mean 'n_epochs'"):
        TrainerConfig.from_dict({"n_epoch": 2})


def test_grad_clip_zero_means_no_clipping_as_in_snorkel():
    assert TrainerConfig(grad_clip=0).grad_clip is None
    with pytest.raises(ConfigError, match="grad_clip"):
        TrainerConfig(grad_clip=-1.0)
