"""Pictures: the task graph, model input at the top and task heads at the bottom.

Needs matplotlib (the ``plot`` extra: ``pip install 'mtlkit[plot]'``); it is imported
only when a picture is drawn. No graphviz: rows are the graph's topological
generations, and nodes within a row are ordered by the mean position of their
inputs (one barycentre pass), which keeps small graphs free of most crossings.
"""

from __future__ import annotations

from os import PathLike
from typing import TYPE_CHECKING, Any

import networkx as nx
from torch import nn

from mtlkit.graph.executor import INPUT

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["draw_graph", "graph_layout"]

_COLOURS = {"input": "#d9d9d9", "output": "#fdb863", "inner": "#b2d8f0"}


def draw_graph(model: Any, path: str | PathLike[str] | None = None) -> Figure:
    """Draw the computation graph of `model` and save it to `path` (format from its suffix).

    `model` is an `MTLModel`, a `TaskGraph`, anything else with a ``.g`` graph, or
    a `networkx.DiGraph`. Output tasks are drawn in orange and, when nothing reads
    from them, on the bottom row. Returns the matplotlib `Figure`.
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import FancyArrowPatch
    except ImportError as err:
        raise ImportError("draw_graph needs matplotlib; install the plot extra: pip install 'mtlkit[plot]'") from err

    g, outputs = _graph_and_outputs(model)
    pos = graph_layout(g, outputs)
    n_rows = 1 + max(-y for _, y in pos.values())
    n_cols = max(sum(1 for x, y in pos.values() if y == row) for row in {y for _, y in pos.values()})
    fig = Figure(figsize=(max(4.0, 2.2 * n_cols), max(3.0, 1.3 * n_rows)))
    ax = fig.subplots()
    for u, v in g.edges:
        ax.add_patch(
            FancyArrowPatch(
                pos[u],
                pos[v],
                arrowstyle="-|>",
                mutation_scale=14,
                color="#555555",
                shrinkA=16,
                shrinkB=16,
                linewidth=1.2,
            )
        )
    for name, (x, y) in pos.items():
        kind = "input" if name == INPUT else "output" if name in outputs else "inner"
        ax.text(
            x,
            y,
            _label(model, g, name),
            ha="center",
            va="center",
            fontsize=9,
            zorder=3,
            bbox={"boxstyle": "round,pad=0.4", "facecolor": _COLOURS[kind], "edgecolor": "#333333"},
        )
    xs = [x for x, _ in pos.values()]
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(-n_rows + 0.4, 0.6)
    ax.set_axis_off()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def graph_layout(g: nx.DiGraph, outputs: list[str] | tuple[str, ...] = ()) -> dict[str, tuple[float, float]]:
    """Positions ``name -> (x, y)``: row ``-y`` is the topological generation, sink outputs on the last row."""
    rows = [list(gen) for gen in nx.topological_generations(g)]
    last = len(rows) - 1
    sinks = [n for n in outputs if g.out_degree(n) == 0]
    rows = [[n for n in row if n not in sinks] for row in rows]
    rows[last] += [n for n in sinks if n not in rows[last]]
    rows = [row for row in rows if row]
    pos: dict[str, tuple[float, float]] = {}
    for depth, row in enumerate(rows):
        row.sort(key=lambda n: _barycentre(g, n, pos))
        for i, name in enumerate(row):
            pos[name] = (i - (len(row) - 1) / 2, -float(depth))
    return pos


def _barycentre(g: nx.DiGraph, name: str, pos: dict[str, tuple[float, float]]) -> float:
    xs = [pos[p][0] for p in g.predecessors(name) if p in pos]
    return sum(xs) / len(xs) if xs else 0.0


def _graph_and_outputs(model: Any) -> tuple[nx.DiGraph, list[str]]:
    if isinstance(model, nx.DiGraph):
        return model, [n for n in model if model.out_degree(n) == 0]
    g = getattr(model, "g", None)
    if not isinstance(g, nx.DiGraph):
        raise TypeError(f"draw_graph needs an MTLModel, a TaskGraph or a networkx.DiGraph, got {type(model).__name__}")
    outputs = getattr(model, "output_tasks", None) or getattr(model, "outputs", None) or []
    return g, list(outputs)


def _label(model: Any, g: nx.DiGraph, name: str) -> str:
    """The node name, over its module's class (or module key when the class is unknown)."""
    if name == INPUT:
        return "input"
    node = g.nodes[name].get("node")
    if node is None:
        return name
    if isinstance(model, nn.Module):
        try:
            return f"{name}\n{type(model.get_submodule(node.module_key)).__name__}"
        except AttributeError:  # the module pool is not a direct child of this model
            pass
    return name if node.module_key == name else f"{name}\n[{node.module_key}]"
