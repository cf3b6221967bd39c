"""MTLModel: torchMTL's dict-list front door (outputs, losses, weights, pruning, devices)."""

import networkx as nx
import pytest
import torch
from torch import nn

from mtlkit import MTLModel
from mtlkit.graph import INPUT, NodeError
from mtlkit.layers import Lambda

OUTPUTS = ["Task1", "Task2", "Task3"]


class _Forbidden(nn.Module):
    def forward(self, *args):
        raise AssertionError("this node must not run")


def test_forward_matches_the_network_computed_by_hand(tasks):
    model = MTLModel(tasks, output_tasks=OUTPUTS)
    X = torch.randn(5, 16)
    y_hat, _, _ = model(X)
    e1, e2 = model.Embed1(X), model.Embed2(X)
    expected = [model.Task1(e1), model.Task2(e2), model.Task3(model.FNN(torch.cat([e1, e2], dim=1)))]
    for got, want in zip(y_hat, expected):
        torch.testing.assert_close(got, want)


def test_forward_returns_losses_and_weights_in_output_order_with_none_where_absent(tasks):
    model = MTLModel(tasks, output_tasks=["FNN", "CatTask", "Task2", "Task3"])
    y_hat, l_funcs, l_weights = model(torch.randn(3, 16))
    assert [y.shape[1] for y in y_hat] == [32, 16, 1, 1]
    assert l_funcs[0] is None and l_funcs[1] is None
    assert l_funcs[2] is tasks[4]["loss"] and l_funcs[3] is tasks[6]["loss"]
    assert l_weights[:3] == [None, 1.0, 1.0]
    assert l_weights[3] is model.Task3_loss


def test_auto_weight_is_a_registered_parameter_the_optimizer_updates(tasks):
    model = MTLModel(tasks, output_tasks=OUTPUTS)
    weight = dict(model.named_parameters())["Task3_loss"]
    assert isinstance(weight, nn.Parameter) and weight.item() == 1.0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    y_hat, l_funcs, l_weights = model(torch.randn(4, 16))
    loss = l_weights[2] * l_funcs[2](y_hat[2], torch.zeros(4, 1))
    loss.backward()
    optimizer.step()
    assert weight.item() != 1.0


def test_readme_loop_accumulates_into_a_scalar(tasks):
    model = MTLModel(tasks, output_tasks=OUTPUTS)
    y_hat, l_funcs, l_weights = model(torch.randn(4, 16))
    y = [torch.zeros(4, 1), torch.ones(4, 1), torch.zeros(4, 1)]
    loss = 0
    for i in range(len(y_hat)):
        loss += l_weights[i] * l_funcs[i](y_hat[i], y[i])
    assert loss.shape == ()


def test_tasks_argument_runs_only_the_nodes_those_outputs_need(tasks):
    tasks[1]["layers"] = _Forbidden()  # Embed2: needed by Task2 and Task3 only
    model = MTLModel(tasks, output_tasks=OUTPUTS)
    y_hat, l_funcs, l_weights = model(torch.randn(2, 16), tasks=["Task1"])
    assert len(y_hat) == 1 and y_hat[0].shape == (2, 1)
    assert l_funcs == [tasks[3]["loss"]] and l_weights == [1.0]
    with pytest.raises(NodeError, match="node 'Embed2'"):
        model(torch.randn(2, 16))


def test_anchor_list_is_passed_as_positional_arguments_in_order():
    tasks = [
        {"name": "A", "layers": Lambda(lambda x: x + 1)},
        {"name": "B", "layers": Lambda(lambda x: 10 * x)},
        {"name": "diff", "layers": lambda b, a: b - a, "anchor_layer": ["B", "A"]},
    ]
    model = MTLModel(tasks, output_tasks=["diff"])
    (out,), _, _ = model(torch.tensor([1.0]))
    assert out.item() == 10 * 1.0 - (1.0 + 1)


def test_plain_callables_are_wrapped_as_modules():
    model = MTLModel([{"name": "twice", "layers": lambda x: 2 * x}], output_tasks=["twice"])
    assert isinstance(model.twice, Lambda)
    assert model(torch.tensor([3.0]))[0][0].item() == 6.0


def test_g_is_the_graph_with_the_input_node(tasks):
    model = MTLModel(tasks, output_tasks=OUTPUTS)
    assert isinstance(model.g, nx.DiGraph)
    assert set(model.g.successors(INPUT)) == {"Embed1", "Embed2"}
    assert set(model.g.predecessors("CatTask")) == {"Embed1", "Embed2"}
    assert nx.is_directed_acyclic_graph(model.g) and model.g.number_of_nodes() == 8


def test_parameter_names_follow_torchmtl(tasks):
    keys = set(MTLModel(tasks, output_tasks=OUTPUTS).state_dict())
    assert {"Embed1.0.weight", "Task3.1.bias", "FNN.0.weight", "Task3_loss"} <= keys


def test_forward_leaves_no_activations_on_the_model(tasks):
    model = MTLModel(tasks, output_tasks=OUTPUTS)
    before = dict(vars(model))
    model(torch.randn(2, 16))
    assert vars(model).keys() == before.keys()
    assert all(vars(model)[k] is v for k, v in before.items())


def test_shape_mismatch_names_node_and_input_shapes(tasks):
    tasks[5]["layers"] = nn.Linear(15, 32)  # FNN expects 15 features, CatTask gives 16
    model = MTLModel(tasks, output_tasks=OUTPUTS)
    with pytest.raises(NodeError, match=r"node 'FNN'.*CatTask=Tensor\(2, 16\)") as info:
        model(torch.randn(2, 16))
    assert isinstance(info.value.__cause__, RuntimeError)


def test_runs_on_the_device_and_dtype_of_its_tensors(tasks):
    model = MTLModel(tasks, output_tasks=OUTPUTS).to(device="meta", dtype=torch.float64)
    y_hat, _, l_weights = model(torch.randn(2, 16, device="meta", dtype=torch.float64))
    assert all(y.device.type == "meta" and y.dtype == torch.float64 for y in y_hat)
    assert l_weights[2].device.type == "meta"
