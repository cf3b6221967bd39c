"""`TaskGraph`: the validated DAG that every front door compiles into.

A graph is a list of `Node`s. Each node applies one module of a name-keyed module
pool (owned by the model, e.g. an `nn.ModuleDict`) to the outputs of other nodes.
The reserved node name `INPUT` (``"_input_"``) stands for the model input X (a
tensor, or a dict of tensors). An input reference is ``(node_name, key)``: with
``key=None`` the whole output of `node_name` is passed, otherwise ``output[key]``
(a dict key or a tuple index). A node with several inputs receives them as
positional arguments in list order.

    graph = TaskGraph(
        [Node("trunk", "trunk", [(INPUT, "x")]), Node("head", "head", ["trunk"])],
        outputs=["head"],
    )
    values = graph.run(modules, {"x": x}, ["head"])  # {"_input_": ..., "trunk": ..., "head": ...}

Everything is checked when the graph is built (`SpecError` naming the node).
`run` executes, in topological order, only the nodes the requested outputs need,
each once; intermediate values live in a dict local to that call.
"""

from __future__ import annotations

import difflib
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from torch import nn

from mtlkit.errors import SpecError
from mtlkit.graph.executor import INPUT, NodeError, Plan, Step, execute

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["INPUT", "Node", "NodeError", "TaskGraph"]

InputRef = Union[str, tuple[str, str | int | None]]


@dataclass(frozen=True)
class Node:
    """One computation: ``modules[module_key](*[value of each input reference])``.

    `inputs` holds references ``(node_name, key_or_None)``; a bare string
    ``"name"`` is shorthand for ``("name", None)``. Several nodes may share one
    `module_key` (and so share parameters).
    """

    name: str
    module_key: str
    inputs: tuple[tuple[str, str | int | None], ...]

    def __init__(self, name: str, module_key: str, inputs: Iterable[InputRef]) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "module_key", module_key)
        object.__setattr__(self, "inputs", tuple(_normalise_ref(name, ref) for ref in inputs))

    @property
    def sources(self) -> tuple[str, ...]:
        """Names of the nodes this node reads from (``INPUT`` included)."""
        return tuple(src for src, _ in self.inputs)


class TaskGraph:
    """A validated DAG of `Node`s with `INPUT` as its root.

    Args:
        nodes: the computation nodes (not `INPUT` itself).
        outputs: the names of the nodes that are task outputs (heads); `run`
            defaults to them.

    Attributes:
        g: a `networkx.DiGraph` with one vertex per node plus `INPUT`; edge
            ``u -> v`` means v reads u's output. Vertex attribute ``node`` holds
            the `Node` (absent on `INPUT`).
        nodes: name -> `Node`, in declaration order.
        outputs: the declared output node names.
        order: all node names (without `INPUT`) in a fixed topological order.

    Raises:
        SpecError: duplicate or reserved names, unknown input nodes (with close
            spellings suggested), cycles, unknown outputs.
    """

    def __init__(self, nodes: Sequence[Node], outputs: Sequence[str]) -> None:
        self.nodes: dict[str, Node] = _check_names(nodes)
        _check_references(self.nodes)
        self.order: list[str] = _topological_order(self.nodes)
        self.outputs: list[str] = list(outputs)
        self._check_known(self.outputs, "output")
        self._ancestors: dict[str, frozenset[str]] = {}
        for name in self.order:  # sources come first in `order`, so their sets are ready
            ancestors = {name}
            for src in self.nodes[name].sources:
                if src != INPUT:
                    ancestors |= self._ancestors[src]
            self._ancestors[name] = frozenset(ancestors)
        self._plans: dict[tuple[str, ...], Plan] = {}
        self._g: nx.DiGraph | None = None

    @property
    def g(self) -> nx.DiGraph:
        """The graph as a `networkx.DiGraph` (built on first access; networkx is imported then)."""
        if self._g is None:
            self._g = _build_digraph(self.nodes)
        return self._g

    def needed(self, outputs: Iterable[str]) -> set[str]:
        """The nodes (without `INPUT`) that computing `outputs` runs."""
        outputs = list(outputs)
        self._check_known(outputs, "requested output")
        needed: set[str] = set()
        for out in outputs:
            needed |= self._ancestors[out]
        return needed

    def plan(self, outputs: Sequence[str] | None = None) -> Plan:
        """The (cached) execution plan for these outputs: the needed nodes in topological order."""
        key = tuple(self.outputs if outputs is None else outputs)
        plan = self._plans.get(key)
        if plan is None:
            needed = self.needed(key)
            plan = Plan([Step.of(self.nodes[name]) for name in self.order if name in needed])
            self._plans[key] = plan
        return plan

    def run(self, modules: Mapping[str, nn.Module], x: Any, outputs: Sequence[str] | None = None) -> dict[str, Any]:
        """Execute the nodes that `outputs` (default: the declared outputs) need.

        Returns the values computed in this call, keyed by node name: `INPUT`,
        every executed intermediate node and the requested outputs. A failure
        inside a node is re-raised as `NodeError` naming the node and its input
        shapes.
        """
        return execute(self.plan(outputs), modules, x)

    def check_modules(self, modules: Mapping[str, Any]) -> None:
        """Raise `SpecError` if a node's `module_key` is missing from the pool."""
        for node in self.nodes.values():
            if node.module_key not in modules:
                raise SpecError(
                    f"node {node.name!r} uses module {node.module_key!r}, which is not in the module pool"
                    f"{_suggest(node.module_key, list(modules))}; add it to the pool or fix the module name"
                )

    def _check_known(self, names: Iterable[str], what: str) -> None:
        for name in names:
            if name not in self.nodes:
                raise SpecError(
                    f"{what} {name!r} is not a node of the graph{_suggest(name, list(self.nodes))}; "
                    f"known nodes: {sorted(self.nodes)}"
                )


def _normalise_ref(node: str, ref: InputRef) -> tuple[str, str | int | None]:
    if isinstance(ref, str):
        return (ref, None)
    if isinstance(ref, tuple) and len(ref) == 2 and isinstance(ref[0], str):
        return (ref[0], ref[1])
    raise SpecError(f"node {node!r} has input reference {ref!r}; write a node name or a pair (node_name, key_or_None)")


def _check_names(nodes: Sequence[Node]) -> dict[str, Node]:
    by_name: dict[str, Node] = {}
    for node in nodes:
        if not isinstance(node.name, str) or not node.name:
            raise SpecError(f"node name {node.name!r} must be a non-empty string")
        if node.name == INPUT:
            raise SpecError(f"node name {INPUT!r} is reserved for the model input; rename that node")
        if node.name in by_name:
            raise SpecError(f"node name {node.name!r} is used twice; give each node a unique name")
        by_name[node.name] = node
    return by_name


def _check_references(nodes: Mapping[str, Node]) -> None:
    known = [INPUT, *nodes]
    for node in nodes.values():
        for src in node.sources:
            if src != INPUT and src not in nodes:
                raise SpecError(
                    f"node {node.name!r} takes input from unknown node {src!r}{_suggest(src, known)}; "
                    f"declare {src!r} or reference one of {sorted(nodes)} (or {INPUT!r} for the model input)"
                )


def _build_digraph(nodes: Mapping[str, Node]) -> nx.DiGraph:
    import networkx as nx  # only for users of `g`: it costs ~0.15 s to import

    g = nx.DiGraph()
    g.add_node(INPUT)
    for node in nodes.values():
        g.add_node(node.name, node=node)
    for node in nodes.values():
        for src in node.sources:
            g.add_edge(src, node.name)
    return g


def _topological_order(nodes: Mapping[str, Node]) -> list[str]:
    """Node names, each after its sources; ties broken by declaration order. SpecError on a cycle."""
    position = {name: i for i, name in enumerate(nodes)}
    readers: dict[str, list[str]] = {name: [] for name in nodes}
    waiting = {}
    for node in nodes.values():
        sources = {src for src in node.sources if src != INPUT}
        waiting[node.name] = len(sources)
        for src in sources:
            readers[src].append(node.name)
    ready = [position[name] for name, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    names = list(nodes)
    order = []
    while ready:
        name = names[heapq.heappop(ready)]
        order.append(name)
        for reader in readers[name]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, position[reader])
    if len(order) < len(nodes):
        _raise_cycle(nodes, {name for name, count in waiting.items() if count > 0})
    return order


def _raise_cycle(nodes: Mapping[str, Node], blocked: set[str]) -> None:
    """Find one cycle among the `blocked` nodes (each has a blocked source) and raise SpecError."""
    node = next(name for name in nodes if name in blocked)
    path: list[str] = []
    seen: dict[str, int] = {}
    while node not in seen:  # walk back along blocked sources until a node repeats
        seen[node] = len(path)
        path.append(node)
        node = next(src for src in nodes[node].sources if src in blocked)
    cycle = list(reversed(path[seen[node] :]))  # edges run source -> reader
    text = " -> ".join([*cycle, cycle[0]])
    reader = cycle[1] if len(cycle) > 1 else cycle[0]
    raise SpecError(
        f"nodes form a cycle: {text}; node {reader!r} cannot read from {cycle[0]!r} "
        "while depending on it; remove one of these references"
    )


def _suggest(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=3)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
