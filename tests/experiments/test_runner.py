"""One run end to end: training, the run folder, and re-evaluation from the folder."""

import json

import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.experiments import ExperimentConfig, evaluate, run
from mtlkit.experiments.build import build_model, load_data, select_tasks


def _config(**model):
    return ExperimentConfig.from_dict(
        {
            "name": "tiny",
            "data": {"name": "penguins", "batch_size": 32},
            "model": {"encoder": {"hidden": [8, 8]}, **model},
            "trainer": {"n_epochs": 2, "lr": 0.01},
        }
    )


def test_run_writes_the_run_folder_and_eval_reproduces_its_scores(tmp_path):
    result = run(_config(), tmp_path / "run", progress_bar=False)
    folder = tmp_path / "run"
    for name in ("config.yaml", "results.md", "graph.png", "curves.png", "checkpoints/best.pt", "logs/log.jsonl"):
        assert (folder / name).is_file(), name
    records = [json.loads(line) for line in (folder / "logs/log.jsonl").read_text().splitlines()]
    assert any("species/penguins/valid/accuracy" in r.get("values", r) for r in records)
    assert "species" in (folder / "results.md").read_text()
    again = evaluate(folder, ("valid", "test"))
    for key, value in result.scores.items():
        assert again[key] == pytest.approx(value, abs=1e-6), key


def test_graph_models_from_yaml_train_through_the_same_runner():
    config = ExperimentConfig.from_dict(
        {
            "data": {"name": "digits", "tasks": ["digit", "parity"]},
            "model": {
                "graph": [
                    {"name": "x", "layers": {"SimpleSelect": ["x"]}},
                    {"name": "trunk", "anchor_layer": "x", "layers": [{"Linear": [64, 16]}, "ReLU"]},
                    {"name": "digit", "anchor_layer": "trunk", "layers": {"Linear": [16, 10]}},
                    {"name": "parity", "anchor_layer": "trunk", "layers": {"Linear": [16, 2]}},
                ]
            },
            "weighting": "pcgrad",
            "trainer": {"n_epochs": 1},
        }
    )
    result = run(config, progress_bar=False)
    assert set(result.scores) == {f"{t}/digits/{s}/accuracy" for t in ("digit", "parity") for s in ("valid", "test")}
    assert result.scores["parity/digits/test/accuracy"] > 0.6


def test_graph_config_without_a_head_for_a_task_is_an_error():
    config = ExperimentConfig.from_dict(
        {"data": {"name": "digits"}, "model": {"graph": [{"name": "digit", "layers": {"Linear": [64, 10]}}]}}
    )
    loaded = load_data(config)
    with pytest.raises(ConfigError, match="no node for task 'parity'"):
        build_model(config, loaded.info, select_tasks(loaded.info, config.data))


@pytest.mark.parametrize("architecture", ["hps", "mmoe", "cgc", "ple", "dselect_k", "mtan", "cross_stitch", "ltb"])
def test_every_architecture_builds_from_a_config_and_predicts_every_task(architecture):
    config = _config(architecture=architecture)
    loaded = load_data(config)
    tasks = select_tasks(loaded.info, config.data)
    model = build_model(config, loaded.info, tasks)
    X = loaded.split("train")[0].X_dict
    outputs = model.task_outputs(X, tasks)
    assert outputs["species"].shape == (len(X["x"]), 3)
    assert outputs["body_mass"].shape == (len(X["x"]),)
    assert all(torch.isfinite(v).all() for v in outputs.values())


def _circles_squares(architecture: str) -> ExperimentConfig:
    return ExperimentConfig.from_dict(
        {
            "data": {"name": "circles_squares", "batch_size": 32},
            "model": {"architecture": architecture, "encoder": {"hidden": [8, 4]}},
            "trainer": {"n_epochs": 2, "lr": 0.02},
        }
    )


def test_an_architecture_reads_each_tasks_own_input_when_tasks_read_different_fields(tmp_path):
    # circles_squares: one dataset per task, each with its own input field (LibMTL's multi_input)
    result = run(_circles_squares("hps"), tmp_path / "run", progress_bar=False)
    assert result.model.multi_input and result.model.input_key == {
        "circle_task": "circle_data",
        "square_task": "square_data",
    }
    assert result.scores["circle_task/CircleDataset/test/accuracy"] > 0.6  # chance is 0.5
    assert result.scores["square_task/SquareDataset/test/accuracy"] > 0.6
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()  # its checkpoint metric names CircleDataset


def test_an_architecture_that_refuses_multi_input_says_so_for_per_task_inputs():
    config = _circles_squares("cross_stitch")
    loaded = load_data(config)
    with pytest.raises(ConfigError, match="multi_input"):
        build_model(config, loaded.info, select_tasks(loaded.info, config.data))
