"""Run a precomputed plan of graph nodes on one input.

A plan is a tuple of `Step`s in topological order, computed once per set of
requested outputs by `TaskGraph.plan`. `execute` is the only code on the hot
path: no graph library, no validation, one local dict of values per call, so it
stays cheap and traceable by `torch.compile(fullgraph=True)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor, nn

INPUT = "_input_"


class NodeError(RuntimeError):
    """A node failed while the graph ran; the message names the node and its input shapes."""


class Step(NamedTuple):
    """One node of a plan: ``values[name] = modules[module_key](*args)``.

    `sources` are the input node names; `keys` the per-input selection keys, or
    `None` when no input selects a key (the common, faster case).
    """

    name: str
    module_key: str
    sources: tuple[str, ...]
    keys: tuple[str | int | None, ...] | None

    @classmethod
    def of(cls, node: Any) -> Step:
        """The step for a `Node`."""
        keys = tuple(key for _, key in node.inputs)
        return cls(node.name, node.module_key, node.sources, None if all(k is None for k in keys) else keys)


Plan = tuple[Step, ...]


def execute(plan: Plan, modules: Mapping[str, nn.Module], x: Any) -> dict[str, Any]:
    """Run `plan` on input `x`; return ``{INPUT: x, node_name: output, ...}`` for the executed nodes."""
    values: dict[str, Any] = {INPUT: x}
    for name, module_key, sources, keys in plan:
        if keys is None:
            args = [values[src] for src in sources]
        else:
            args = [values[src] if key is None else values[src][key] for src, key in zip(sources, keys)]
        try:
            values[name] = modules[module_key](*args)
        except Exception as err:
            raise NodeError(
                f"node {name!r} (module {module_key!r}) failed on inputs {_describe(sources, args)}: {err}"
            ) from err
    return values


def _describe(sources: tuple[str, ...], args: list[Any]) -> str:
    return ", ".join(f"{src}={_shape(arg)}" for src, arg in zip(sources, args))


def _shape(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"Tensor{tuple(value.shape)}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {_shape(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shape(v) for v in value) + "]"
    return type(value).__name__
