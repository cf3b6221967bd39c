"""The executor's generated code: straight-line, same values as the graph's definition, errors name the node."""

import pytest
import torch
from torch import nn

from mtlkit.graph import INPUT, Node, NodeError, TaskGraph
from mtlkit.graph.executor import execute, plan_source


class _Affine(nn.Module):
    def __init__(self, scale: float, shift: float) -> None:
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, *args):
        return sum(args) * self.scale + self.shift


class _Split(nn.Module):
    def forward(self, x):
        return {"left": x[:, :2], "right": x[:, 2:]}


def _graph():
    nodes = [
        Node("split", "split", [INPUT]),
        Node("l", "lin_l", [("split", "left")]),
        Node("r", "lin_r", [("split", "right")]),
        Node("both", "add", ["l", "r"]),
        Node("pick", "add", [(INPUT, 0)]),  # a module shared by two nodes, an int key
    ]
    modules = {"split": _Split(), "lin_l": nn.Linear(2, 3), "lin_r": nn.Linear(3, 3), "add": _Affine(2.0, 1.0)}
    return TaskGraph(nodes, outputs=["both", "pick"]), modules


def test_generated_code_is_straight_line_and_matches_hand_evaluation():
    graph, modules = _graph()
    source = plan_source(graph.plan(["both"]))
    assert "for " not in source and "while " not in source
    assert source.count("modules[") == 4  # split, l, r, both: 'pick' is pruned
    x = torch.randn(4, 5)
    values = graph.run(modules, x, ["both"])
    parts = modules["split"](x)
    expected = modules["add"](modules["lin_l"](parts["left"]), modules["lin_r"](parts["right"]))
    torch.testing.assert_close(values["both"], expected)
    assert set(values) == {INPUT, "split", "l", "r", "both"}
    assert values[INPUT] is x


def test_plain_tuple_plan_runs_like_the_cached_plan():
    graph, modules = _graph()
    x = torch.randn(4, 5)
    cached = graph.run(modules, x)
    plain = execute(tuple(graph.plan()), modules, x)
    assert set(plain) == set(cached)
    for name in cached:
        if isinstance(cached[name], torch.Tensor):
            torch.testing.assert_close(plain[name], cached[name])


def test_failure_in_a_later_node_names_it_and_its_inputs():
    graph, modules = _graph()
    modules["lin_r"] = nn.Linear(7, 3)
    with pytest.raises(NodeError, match=r"node 'r' \(module 'lin_r'\).*split=Tensor\(4, 3\)") as info:
        graph.run(modules, torch.randn(4, 5), ["both"])
    assert isinstance(info.value.__cause__, RuntimeError)


def test_failed_key_selection_names_the_node_and_the_key():
    graph, modules = _graph()

    class NoLeft(nn.Module):
        def forward(self, x):
            return {"right": x}

    modules["split"] = NoLeft()
    with pytest.raises(NodeError, match=r"node 'l'.*split=\{'right': Tensor\(4, 5\)\} \(no key 'left': KeyError"):
        graph.run(modules, torch.randn(4, 5), ["both"])


def test_error_raised_inside_a_nested_graph_names_the_inner_node_too():
    inner_graph, inner_modules = _graph()
    inner_modules["lin_l"] = nn.Linear(9, 3)

    class Inner(nn.Module):
        def forward(self, x):
            return inner_graph.run(inner_modules, x, ["both"])["both"]

    outer = TaskGraph([Node("pre", "id", [INPUT]), Node("inner", "inner", ["pre"])], outputs=["inner"])
    with pytest.raises(NodeError, match=r"node 'inner'.*node 'l'"):
        outer.run({"id": nn.Identity(), "inner": Inner()}, torch.randn(4, 5))
