"""TaskGraph: build-time validation, pruning, plan caching and key selection."""

import networkx as nx
import pytest
import torch
from torch import nn

from mtlkit import SpecError
from mtlkit.graph import INPUT, Node, NodeError, TaskGraph


class _Recorder(nn.Module):
    """Adds a constant and counts calls."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.calls = 0

    def forward(self, *args):
        self.calls += 1
        return sum(args) + self.value


def _diamond():
    nodes = [
        Node("a", "a", [INPUT]),
        Node("b", "b", ["a"]),
        Node("c", "c", ["a"]),
        Node("d", "d", ["b", "c"]),
    ]
    modules = {name: _Recorder(v) for name, v in zip("abcd", (1.0, 10.0, 100.0, 1000.0))}
    return TaskGraph(nodes, outputs=["b", "d"]), modules


def test_run_computes_each_node_once_in_dependency_order():
    graph, modules = _diamond()
    values = graph.run(modules, torch.tensor(0.0))
    assert values["d"].item() == (0 + 1 + 10) + (0 + 1 + 100) + 1000
    assert all(m.calls == 1 for m in modules.values())
    assert values[INPUT].item() == 0.0


def test_run_prunes_to_nodes_the_requested_outputs_need():
    graph, modules = _diamond()
    values = graph.run(modules, torch.tensor(0.0), ["b"])
    assert set(values) == {INPUT, "a", "b"}
    assert modules["c"].calls == 0 and modules["d"].calls == 0


def test_plan_is_cached_per_requested_outputs():
    graph, _ = _diamond()
    assert graph.plan(["b"]) is graph.plan(["b"])
    assert graph.plan() is graph.plan(["b", "d"])


def test_several_nodes_can_share_one_module():
    shared = _Recorder(1.0)
    graph = TaskGraph([Node("x", "m", [INPUT]), Node("y", "m", ["x"])], outputs=["y"])
    assert graph.run({"m": shared}, torch.tensor(0.0))["y"].item() == 2.0
    assert shared.calls == 2


def test_input_keys_select_from_dict_and_tuple_outputs():
    pool = {"split": lambda t: (t, 2 * t), "add": lambda u, v: u + v}
    graph = TaskGraph(
        [Node("s", "split", [(INPUT, "data")]), Node("out", "add", [("s", 1), (INPUT, "bias")])],
        outputs=["out"],
    )
    out = graph.run(pool, {"data": torch.tensor(3.0), "bias": torch.tensor(0.5)})["out"]
    assert out.item() == 6.5


def test_g_is_a_digraph_including_the_input_node():
    graph, _ = _diamond()
    assert isinstance(graph.g, nx.DiGraph)
    assert set(graph.g.edges) == {(INPUT, "a"), ("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}
    assert graph.g.nodes["d"]["node"].sources == ("b", "c")


def test_duplicate_names_are_rejected():
    with pytest.raises(SpecError, match="'a' is used twice"):
        TaskGraph([Node("a", "m", [INPUT]), Node("a", "m", [INPUT])], outputs=["a"])


def test_input_name_is_reserved():
    with pytest.raises(SpecError, match="reserved"):
        TaskGraph([Node(INPUT, "m", [INPUT])], outputs=[INPUT])


def test_unknown_input_suggests_close_spelling():
    with pytest.raises(SpecError, match=r"node 'head'.*unknown node 'trnk'.*did you mean 'trunk'"):
        TaskGraph([Node("trunk", "m", [INPUT]), Node("head", "m", ["trnk"])], outputs=["head"])


def test_cycle_is_rejected_without_hanging():
    nodes = [Node("a", "m", [INPUT, "c"]), Node("b", "m", ["a"]), Node("c", "m", ["b"])]
    with pytest.raises(SpecError, match="cycle"):
        TaskGraph(nodes, outputs=["c"])


def test_self_loop_is_a_cycle():
    with pytest.raises(SpecError, match="cycle: a -> a"):
        TaskGraph([Node("a", "m", ["a"])], outputs=["a"])


def test_unknown_output_is_rejected_at_build_and_at_run():
    with pytest.raises(SpecError, match="output 'haed'.*did you mean 'head'"):
        TaskGraph([Node("head", "m", [INPUT])], outputs=["haed"])
    graph = TaskGraph([Node("head", "m", [INPUT])], outputs=["head"])
    with pytest.raises(SpecError, match="requested output 'tail'"):
        graph.run({"m": nn.Identity()}, torch.zeros(1), ["tail"])


def test_malformed_input_reference_is_rejected():
    with pytest.raises(SpecError, match="node 'a' has input reference"):
        Node("a", "m", [(INPUT, "k", "extra")])


def test_check_modules_names_the_missing_module():
    graph = TaskGraph([Node("head", "hed", [INPUT])], outputs=["head"])
    with pytest.raises(SpecError, match="node 'head' uses module 'hed'.*did you mean 'head'"):
        graph.check_modules({"head": nn.Identity()})


def test_runtime_failure_names_node_and_input_shapes():
    graph = TaskGraph([Node("lin", "lin", [INPUT])], outputs=["lin"])
    with pytest.raises(NodeError, match=r"node 'lin'.*_input_=Tensor\(2, 7\)") as info:
        graph.run({"lin": nn.Linear(3, 1)}, torch.zeros(2, 7))
    assert isinstance(info.value.__cause__, RuntimeError)


def test_nothing_is_stored_on_modules_between_calls():
    graph, modules = _diamond()
    before = {k: set(vars(m)) for k, m in modules.items()}
    graph.run(modules, torch.tensor(0.0))
    assert {k: set(vars(m)) for k, m in modules.items()} == before
