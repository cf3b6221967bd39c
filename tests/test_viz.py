"""mtlkit.viz.draw_graph: a readable picture, input on top and task heads at the bottom."""

import sys

import networkx as nx
import pytest
import torch.nn as nn

from mtlkit import MTLModel
from mtlkit.graph import INPUT
from mtlkit.layers import Concat
from mtlkit.viz import draw_graph, graph_layout


def _model():
    lin = lambda i, o: nn.Linear(i, o)  # noqa: E731
    tasks = [
        {"name": "E1", "layers": lin(4, 2)},
        {"name": "E2", "layers": lin(4, 2)},
        {"name": "Cat", "layers": Concat(dim=1), "anchor_layer": ["E1", "E2"]},
        {"name": "T1", "layers": lin(2, 1), "anchor_layer": "E1"},
        {"name": "F", "layers": lin(4, 4), "anchor_layer": "Cat"},
        {"name": "T3", "layers": lin(4, 1), "anchor_layer": "F"},
    ]
    return MTLModel(tasks, output_tasks=["T1", "T3"])


def test_layout_puts_input_on_top_heads_at_the_bottom_and_edges_downwards():
    model = _model()
    pos = graph_layout(model.g, model.output_tasks)
    assert set(pos) == set(model.g)
    bottom = min(y for _, y in pos.values())
    assert pos[INPUT][1] == max(y for _, y in pos.values())
    assert pos["T1"][1] == bottom and pos["T3"][1] == bottom
    assert all(pos[u][1] > pos[v][1] for u, v in model.g.edges)
    rows = {}
    for _name, (x, y) in pos.items():
        rows.setdefault(y, []).append(x)
    assert all(len(xs) == len(set(xs)) for xs in rows.values())  # no two nodes on one spot


def test_draw_graph_writes_a_png(tmp_path):
    path = tmp_path / "graph.png"
    fig = draw_graph(_model(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert {"input", "E1\nLinear", "Cat\nConcat", "T3\nLinear"} <= labels


def test_draw_graph_accepts_a_plain_digraph(tmp_path):
    fig = draw_graph(nx.DiGraph([("a", "b"), ("a", "c")]), tmp_path / "g.svg")
    assert (tmp_path / "g.svg").exists() and len(fig.axes[0].texts) == 3


def test_draw_graph_rejects_other_objects():
    with pytest.raises(TypeError, match="MTLModel, a TaskGraph or a networkx.DiGraph"):
        draw_graph(object())


def test_missing_matplotlib_names_the_plot_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"mtlkit\[plot\]"):
        draw_graph(_model())
