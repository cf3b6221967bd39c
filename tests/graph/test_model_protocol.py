"""MTLModel as a `MultiTaskModel`: training_step, shared_parameters, task_outputs, scorers."""

import pytest
import torch
from torch import nn

from mtlkit import MTLModel
from mtlkit.protocol import MultiTaskModel, StepOutput

OUTPUTS = ["Task1", "Task2", "Task3"]


class _Forbidden(nn.Module):
    def forward(self, *args):
        raise AssertionError("this node must not run")


def _targets(n=4):
    return {"Task1": torch.randn(n, 1), "Task2": torch.ones(n, 1), "Task3": torch.randn(n, 1)}


def test_implements_the_protocol(tasks):
    model = MTLModel(tasks, output_tasks=OUTPUTS)
    assert isinstance(model, MultiTaskModel)
    assert model.task_names == OUTPUTS


def test_training_step_returns_weighted_loss_of_each_labelled_task(tasks):
    model = MTLModel(tasks, output_tasks=OUTPUTS)
    with torch.no_grad():
        model.Task3_loss.fill_(0.25)
    X, Y = torch.randn(4, 16), _targets()
    out = model.training_step(X, Y)
    assert isinstance(out, StepOutput) and out.counts == {t: 4 for t in OUTPUTS}
    y_hat, _, _ = model(X)
    expected = [
        nn.functional.mse_loss(y_hat[0], Y["Task1"]),
        nn.functional.binary_cross_entropy_with_logits(y_hat[1], Y["Task2"]),
        0.25 * nn.functional.mse_loss(y_hat[2], Y["Task3"]),
    ]
    for task, want in zip(OUTPUTS, expected):
        torch.testing.assert_close(out.losses[task], want)
        assert out.losses[task].shape == ()
    out.losses["Task3"].backward()
    assert model.Task3_loss.grad is not None


def test_training_step_runs_only_the_tasks_present_in_y(tasks):
    tasks[1]["layers"] = _Forbidden()  # Embed2 feeds Task2 and Task3 only
    model = MTLModel(tasks, output_tasks=OUTPUTS)
    out = model.training_step(torch.randn(3, 16), {"Task1": torch.randn(3, 1)})
    assert list(out.losses) == ["Task1"] and out.counts == {"Task1": 3}


def test_training_step_rejects_targets_for_unknown_or_lossless_tasks(tasks):
    model = MTLModel(tasks, output_tasks=[*OUTPUTS, "FNN"])
    with pytest.raises(ValueError, match="'Task9', which is not an output task"):
        model.training_step(torch.randn(2, 16), {"Task9": torch.zeros(2, 1)})
    with pytest.raises(ValueError, match="task 'FNN', which has no 'loss'"):
        model.training_step(torch.randn(2, 16), {"FNN": torch.zeros(2, 32)})


def test_shared_parameters_are_those_of_modules_several_outputs_depend_on(tasks):
    model = MTLModel(tasks, output_tasks=OUTPUTS)
    # Task1 <- Embed1, Task2 <- Embed2, Task3 <- FNN <- CatTask <- (Embed1, Embed2)
    expected = {id(p) for name in ("Embed1", "Embed2") for p in getattr(model, name).parameters()}
    assert {id(p) for p in model.shared_parameters()} == expected
    assert len(model.shared_parameters()) == len(expected)


def test_shared_parameters_follow_the_requested_outputs(tasks):
    model = MTLModel(tasks, output_tasks=["Task1", "Task2"])  # no Task3: Embed1 and Embed2 are not shared
    assert model.shared_parameters() == []


def test_a_module_object_reused_inside_two_heads_is_shared():
    common = nn.Linear(2, 2)
    tasks = [
        {"name": "h1", "layers": nn.Sequential(common, nn.Linear(2, 1)), "loss": nn.MSELoss()},
        {"name": "h2", "layers": nn.Sequential(common, nn.Linear(2, 1)), "loss": nn.MSELoss()},
    ]
    model = MTLModel(tasks, output_tasks=["h1", "h2"])
    assert {id(p) for p in model.shared_parameters()} == {id(common.weight), id(common.bias)}


def test_task_outputs_are_the_raw_node_outputs(tasks):
    model = MTLModel(tasks, output_tasks=OUTPUTS)
    X = torch.randn(3, 16)
    out = model.task_outputs(X, ["Task2", "FNN"])
    assert list(out) == ["Task2", "FNN"]
    torch.testing.assert_close(out["Task2"], model.Task2(model.Embed2(X)))


def test_scorers_are_empty_without_metrics(tasks):
    assert MTLModel(tasks, output_tasks=OUTPUTS).scorers() == {}


def test_scorers_are_built_from_the_metrics_key(tasks):
    metrics = pytest.importorskip("mtlkit.metrics")
    tasks[4]["metrics"] = ["accuracy"]
    scorers = MTLModel(tasks, output_tasks=OUTPUTS).scorers()
    assert list(scorers) == ["Task2"] and isinstance(scorers["Task2"], metrics.Scorer)


def test_output_key_is_applied_to_task_outputs_only():
    from mtlkit import SpecError

    torch.manual_seed(0)
    spec = [{"name": "a", "layers": nn.Linear(3, 2), "loss": nn.CrossEntropyLoss(), "output": lambda y: y.softmax(1)}]
    model = MTLModel(spec, output_tasks=["a"])
    x = torch.randn(4, 3)
    (raw,), _, _ = model(x)
    assert torch.allclose(model.task_outputs(x, ["a"])["a"], raw.softmax(1))
    with pytest.raises(SpecError, match="'output'.*callable"):
        MTLModel([{**spec[0], "output": "softmax"}], output_tasks=["a"])
