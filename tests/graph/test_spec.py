"""Validation of torchMTL task lists: every bad spec fails at construction with an actionable SpecError."""

import math

import pytest
import torch
from torch import nn

from mtlkit import MTLModel, SpecError

OUTPUTS = ["Task1", "Task2", "Task3"]


def _build(tasks, outputs=OUTPUTS):
    return MTLModel(tasks, output_tasks=outputs)


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)


@pytest.mark.parametrize("tasks", [{"name": "a"}, "a", 3])
def test_tasks_must_be_a_list(tasks):
    with pytest.raises(SpecError, match="list of dicts"):
        _build(tasks, ["a"])


def test_entry_must_be_a_dict(tasks):
    tasks[2] = ("CatTask",)
    with pytest.raises(SpecError, match="task #2 is a tuple"):
        _build(tasks)


def test_missing_name(tasks):
    del tasks[1]["name"]
    with pytest.raises(SpecError, match="task #1 has no 'name'"):
        _build(tasks)


def test_missing_name_points_at_a_misspelt_key(tasks):
    tasks[1]["nmae"] = tasks[1].pop("name")
    with pytest.raises(SpecError, match="task #1 has no 'name'.*found 'nmae'"):
        _build(tasks)


def test_missing_layers(tasks):
    del tasks[3]["layers"]
    with pytest.raises(SpecError, match="task 'Task1' has no 'layers'"):
        _build(tasks)


def test_layers_must_be_callable(tasks):
    tasks[3]["layers"] = 42
    with pytest.raises(SpecError, match="task 'Task1' has 'layers' of type int"):
        _build(tasks)


def test_duplicate_names(tasks):
    tasks[4]["name"] = "Task1"
    with pytest.raises(SpecError, match="'Task1' is used twice"):
        _build(tasks, ["Task1", "Task3"])


def test_unknown_anchor_suggests_close_spelling(tasks):
    tasks[3]["anchor_layer"] = "Embd1"
    with pytest.raises(SpecError, match=r"node 'Task1'.*unknown node 'Embd1'.*did you mean 'Embed1'"):
        _build(tasks)


@pytest.mark.timeout(10)
def test_missing_anchor_next_to_a_valid_one_fails_instead_of_hanging(tasks):
    tasks[2]["anchor_layer"] = ["Embed1", "Nowhere"]
    with pytest.raises(SpecError, match="node 'CatTask'.*unknown node 'Nowhere'"):
        _build(tasks)


@pytest.mark.timeout(10)
def test_cycle_fails_instead_of_hanging(tasks):
    tasks[0]["anchor_layer"] = "FNN"  # Embed1 -> CatTask -> FNN -> Embed1
    with pytest.raises(SpecError, match="cycle"):
        _build(tasks)


def test_unknown_key_suggests_close_spelling(tasks):
    tasks[3]["anchor_layers"] = tasks[3].pop("anchor_layer")
    with pytest.raises(SpecError, match="task 'Task1' has unknown key 'anchor_layers'.*did you mean 'anchor_layer'"):
        _build(tasks)


@pytest.mark.parametrize("name", ["forward", "training", "g", "parameters", "output_tasks", "losses"])
def test_names_clashing_with_module_attributes(tasks, name):
    tasks[5]["name"] = name
    tasks[6]["anchor_layer"] = name
    with pytest.raises(SpecError, match=f"task name '{name}' clashes"):
        _build(tasks)


def test_auto_weight_parameter_name_must_be_free(tasks):
    tasks.append({"name": "Task3_loss", "layers": nn.Identity(), "anchor_layer": "Task3"})
    with pytest.raises(SpecError, match="task 'Task3': its 'auto' weight is registered as 'Task3_loss'"):
        _build(tasks)


@pytest.mark.parametrize("name", ["", "a.b", 3, "_input_"])
def test_invalid_names(tasks, name):
    tasks[0]["name"] = name
    with pytest.raises(SpecError):
        _build(tasks, ["Task2"])


@pytest.mark.parametrize("outputs", [["Task4"], ["Task1", "Task1"], [], "Task1", ["Task1", 2]])
def test_invalid_output_tasks(tasks, outputs):
    with pytest.raises(SpecError, match="output|Task4"):
        _build(tasks, outputs)


def test_unknown_output_suggests_close_spelling(tasks):
    with pytest.raises(SpecError, match="'Tsak2'.*did you mean 'Task2'"):
        _build(tasks, ["Task1", "Tsak2"])


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf, "one", True, None])
def test_auto_weight_needs_a_finite_positive_init_value(tasks, value):
    tasks[6]["loss_init_val"] = value
    with pytest.raises(SpecError, match="task 'Task3' has loss_init_val"):
        _build(tasks)


def test_auto_weight_needs_an_init_value(tasks):
    del tasks[6]["loss_init_val"]
    with pytest.raises(SpecError, match="task 'Task3' has loss_weight 'auto' but no 'loss_init_val'"):
        _build(tasks)


def test_init_value_without_auto_is_rejected(tasks):
    tasks[3]["loss_init_val"] = 2.0
    with pytest.raises(SpecError, match="task 'Task1' sets 'loss_init_val' without loss_weight 'auto'"):
        _build(tasks)


@pytest.mark.parametrize("weight, hint", [("atuo", "did you mean 'auto'"), (math.nan, "finite"), ([1.0], "finite")])
def test_invalid_loss_weight(tasks, weight, hint):
    tasks[3]["loss_weight"] = weight
    with pytest.raises(SpecError, match=f"task 'Task1' has loss_weight.*{hint}"):
        _build(tasks)


@pytest.mark.parametrize("anchor", [[], 3, ["Embed1", 3]])
def test_invalid_anchor_types(tasks, anchor):
    tasks[3]["anchor_layer"] = anchor
    with pytest.raises(SpecError, match="task 'Task1' has 'anchor_layer'"):
        _build(tasks)


def test_loss_must_be_callable(tasks):
    tasks[3]["loss"] = "mse"
    with pytest.raises(SpecError, match="task 'Task1' has 'loss' of type str"):
        _build(tasks)


def test_metrics_must_be_a_list_of_names(tasks):
    tasks[3]["metrics"] = "accuracy"
    with pytest.raises(SpecError, match="task 'Task1' has 'metrics'"):
        _build(tasks)


def test_valid_optional_forms_are_accepted(tasks):
    tasks[3]["anchor_layer"] = ("Embed1",)
    tasks[3]["loss_weight"] = 2
    tasks[4]["loss_weight"] = None
    tasks[0]["anchor_layer"] = None
    tasks[3]["metrics"] = ["mse"]
    model = _build(tasks)
    _, _, weights = model(torch.randn(2, 16))
    assert weights[:2] == [2.0, None]
    assert model.metrics == {"Task1": ("mse",)}
