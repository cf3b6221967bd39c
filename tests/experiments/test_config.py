"""Experiment configs: validation names the key and the allowed values; overrides parse as YAML."""

import pytest

from mtlkit.errors import ConfigError
from mtlkit.experiments.config import ExperimentConfig, apply_overrides, load_config


def test_unknown_key_names_the_dotted_path_and_suggests_the_spelling():
    with pytest.raises(ConfigError, match=r"unknown key model\.'architectur'.*Did you mean model\.'architecture'"):
        ExperimentConfig.from_dict({"model": {"architectur": "hps"}})


def test_unknown_dataset_lists_the_built_in_ones():
    with pytest.raises(ConfigError, match=r"data\.name: unknown value 'digit'.*Did you mean 'digits'.*penguins"):
        ExperimentConfig.from_dict({"data": {"name": "digit"}})


def test_unknown_architecture_and_balancer_are_rejected_before_anything_runs():
    with pytest.raises(ConfigError, match="model.architecture.*mmoe"):
        ExperimentConfig.from_dict({"model": {"architecture": "moe"}})
    with pytest.raises(ConfigError, match="weighting: .*'cagrd'.*cagrad"):
        ExperimentConfig.from_dict({"weighting": "cagrd"})


def test_bad_balancer_option_and_bad_trainer_key_name_their_section():
    with pytest.raises(ConfigError, match="weighting: .*unexpected keyword argument 'cc'"):
        ExperimentConfig.from_dict({"weighting": {"name": "cagrad", "cc": 0.4}})
    with pytest.raises(ConfigError, match="trainer: .*n_epoch"):
        ExperimentConfig.from_dict({"trainer": {"n_epoch": 3}})
    with pytest.raises(ConfigError, match="top level"):
        ExperimentConfig.from_dict({"trainer": {"seed": 3}})


def test_graph_and_architecture_together_are_rejected():
    with pytest.raises(ConfigError, match="either 'architecture' or 'graph'"):
        ExperimentConfig.from_dict({"model": {"architecture": "hps", "graph": [{"name": "a"}]}})


def test_overrides_set_nested_keys_with_yaml_values():
    raw = {"trainer": {"n_epochs": 3}, "weighting": "ew"}
    result = apply_overrides(raw, ["trainer.n_epochs=5", "trainer.lr=1e-3", "weighting={name: cagrad, c: 0.2}"])
    assert result == {"trainer": {"n_epochs": 5, "lr": 1e-3}, "weighting": {"name": "cagrad", "c": 0.2}}
    assert raw == {"trainer": {"n_epochs": 3}, "weighting": "ew"}  # the input is left alone
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(raw, ["trainer.n_epochs"])


def test_load_config_round_trips_through_to_dict(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ndata: {name: penguins, batch_size: 16}\nweighting: {name: cagrad, c: 0.3}\n")
    config = load_config(path, ["trainer.n_epochs=2"])
    assert config.data.name == "penguins" and config.trainer == {"n_epochs": 2}
    assert ExperimentConfig.from_dict(config.to_dict()) == config


def test_load_config_names_the_file_in_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(unsafe)
