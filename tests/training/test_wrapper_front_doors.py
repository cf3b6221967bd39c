"""The every/ema wrapper syntax through every front door: Trainer, TrainerConfig, YAML, CLI overrides; exact resume."""

import pytest
import torch

from mtlkit import ConfigError, Trainer
from mtlkit.experiments.config import ExperimentConfig, apply_overrides
from mtlkit.training import TrainerConfig
from mtlkit.weighting.wrappers import GradientWrapper

QUIET = {"progress_bar": False}
SPEC = "mgda@every=3,ema=0.9"


def test_trainer_config_keeps_the_string_and_checks_it():
    config = TrainerConfig(weighting=SPEC)
    assert config.weighting == SPEC and config.to_dict()["weighting"] == SPEC
    assert TrainerConfig(weighting={"name": "mgda", "every": 3}).weighting[1]["every"] == 3
    with pytest.raises(ConfigError, match="after '@' come the wrapper options"):
        TrainerConfig(weighting="mgda@c=1")
    with pytest.raises(ConfigError, match="'mgdaa@every=2' is not allowed"):
        TrainerConfig(weighting="mgdaa@every=2")


def test_experiment_yaml_forms_and_cli_override_reach_the_wrapper():
    for weighting in (SPEC, {"name": "mgda", "every": 3, "ema": 0.9}):
        ExperimentConfig.from_dict({"weighting": weighting})  # validates by building it
    raw = apply_overrides({"weighting": "ew"}, [f"weighting={SPEC}"])
    assert raw["weighting"] == SPEC
    with pytest.raises(ConfigError, match="weighting: .*ema must be a number"):
        ExperimentConfig.from_dict({"weighting": "mgda@ema=high"})
    with pytest.raises(ConfigError, match="weighting: .*transforms the task gradients"):
        ExperimentConfig.from_dict({"weighting": {"name": "graddrop", "every": 2}})


@pytest.mark.parametrize("rep_grad", [False, True])
def test_trainer_builds_and_trains_with_the_wrapper(make_model, make_loaders, rep_grad):
    trainer = Trainer(n_epochs=2, lr=0.05, seed=0, weighting=SPEC, **QUIET)
    trainer.fit(make_model(0, rep_grad=rep_grad), make_loaders())
    assert isinstance(trainer.balancer, GradientWrapper) and trainer.balancer.every == 3
    losses = [record["model/all/train/loss"] for record in trainer.history]
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("weighting", [SPEC, "uw@every=2,ema=0.5"])
def test_wrapped_run_resumed_mid_epoch_ends_with_the_parameters_of_an_uninterrupted_run(
    weighting, make_model, make_loaders, params, tmp_path
):
    config = dict(n_epochs=3, lr=0.05, weighting=weighting, checkpointing=True, seed=0, **QUIET)
    reference = make_model(0)
    uninterrupted = Trainer(**config, checkpoint_dir=str(tmp_path / "ref"))
    uninterrupted.fit(reference, make_loaders())
    with pytest.raises(KeyboardInterrupt):
        Trainer(**config, checkpoint_dir=str(tmp_path / "run")).fit(make_model(0, interrupt_at=11), make_loaders())
    resumed_model = make_model(7)
    resumed = Trainer(**config, checkpoint_dir=str(tmp_path / "run"))
    resumed.fit(resumed_model, make_loaders(loader_seed=99), resume_from=tmp_path / "run" / "last.pt")
    assert all(torch.equal(a, b) for a, b in zip(params(resumed_model), params(reference)))
    mine, theirs = resumed.balancer.state_dict(), uninterrupted.balancer.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in mine.items())


def test_cli_train_takes_the_wrapper_as_an_override_and_saves_it(tmp_path):
    import yaml

    from mtlkit.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "data": {"name": "penguins"}, "model": {"encoder": {"hidden": [8]}}}))
    args = [
        "train",
        str(path),
        "trainer.n_epochs=1",
        "weighting=mgda@every=2,ema=0.5",
        "--run-dir",
        str(tmp_path / "r"),
    ]
    assert main([*args, "--no-progress"]) == 0
    assert yaml.safe_load((tmp_path / "r/config.yaml").read_text())["weighting"] == "mgda@every=2,ema=0.5"
    assert main(["train", str(path), "weighting=mgda@every=two", "--no-progress"]) == 2  # one-line user error
