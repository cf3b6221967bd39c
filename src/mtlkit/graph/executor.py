"""Run a precomputed plan of graph nodes on one input.

A `Plan` is the tuple of `Step`s (the needed nodes in topological order) computed once
per set of requested outputs by `TaskGraph.plan`. On its first run a plan is turned into
a straight-line Python function (as `torch.fx` does for a `GraphModule`; see
`plan_source`): one local per node, one module call per line, no loop and no dict of
values until the result is returned, so running a graph costs what the same calls
written by hand cost. A failure inside a node is re-raised as `NodeError` naming the
node and its input shapes, found from the failing line of the generated code. Under
`torch.compile` the plan is walked by a plain loop instead (dynamo cannot trace code
generation, and records the calls into one graph either way), so
`torch.compile(fullgraph=True)` keeps working.
"""

from __future__ import annotations

import itertools
import linecache
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

INPUT = "_input_"

_serial = itertools.count()


class NodeError(RuntimeError):
    """A node failed while the graph ran; the message names the node and its input shapes."""


class Step(NamedTuple):
    """One node of a plan: ``values[name] = modules[module_key](*args)``.

    `sources` are the input node names; `keys` the per-input selection keys, or
    `None` when no input selects a key.
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


class Plan(tuple):
    """The steps to run, in order: a tuple of `Step`s.

    Its straight-line function is generated on the first eager run and kept on the plan.
    """

    _run: Callable[[Mapping[str, nn.Module], Any], dict[str, Any]]


def execute(plan: Sequence[Step], modules: Mapping[str, nn.Module], x: Any) -> dict[str, Any]:
    """Run `plan` on input `x`; return ``{INPUT: x, node_name: output, ...}`` for the executed nodes."""
    if torch.compiler.is_compiling():
        # Dynamo cannot trace the code generation (exec), and needs no help: it records the
        # calls of this loop into one graph.
        return _interpret(plan, modules, x)
    run = getattr(plan, "_run", None)
    if run is None:
        run = _generate(tuple(plan))[1]
        if isinstance(plan, Plan):
            plan._run = run
    return run(modules, x)


def plan_source(plan: Sequence[Step]) -> str:
    """The Python source generated for `plan` (for reading and debugging)."""
    return _generate(tuple(plan))[0]


def _interpret(plan: Sequence[Step], modules: Mapping[str, nn.Module], x: Any) -> dict[str, Any]:
    values: dict[str, Any] = {INPUT: x}
    for name, module_key, sources, keys in plan:
        if keys is None:
            values[name] = modules[module_key](*[values[src] for src in sources])
        else:
            values[name] = modules[module_key](
                *[values[src] if key is None else values[src][key] for src, key in zip(sources, keys)]
            )
    return values


def _generate(steps: tuple[Step, ...]) -> tuple[str, Callable]:
    """Python source of the plan's function, and the function compiled from it.

    Node ``i`` is the local ``v{i+1}`` (``v0`` is the input) and its call sits on line
    ``_FIRST_LINE + i``, which is how a failure is traced back to its node.
    """
    local = {INPUT: "v0"}
    constants: dict[str, Any] = {}  # module and selection keys, referenced by name: no literal to escape
    lines = []
    for i, step in enumerate(steps):
        keys = step.keys or (None,) * len(step.sources)
        args = []
        for j, (src, key) in enumerate(zip(step.sources, keys)):
            if key is None:
                args.append(local[src])
            else:
                constants[f"_k{i}_{j}"] = key
                args.append(f"{local[src]}[_k{i}_{j}]")
        constants[f"_m{i}"] = step.module_key
        local[step.name] = f"v{i + 1}"
        lines.append(f"        v{i + 1} = modules[_m{i}]({', '.join(args)})")
    result = ", ".join(f"_n{i}: v{i + 1}" for i in range(len(steps)))
    constants.update({f"_n{i}": step.name for i, step in enumerate(steps)})
    body = "\n".join(lines) if lines else "        pass"
    source = (
        "def run(modules, v0):\n"
        "    try:\n"
        f"{body}\n"
        "    except Exception as err:\n"
        "        raise _node_error(_steps, err, locals()) from err\n"
        f"    return {{_input: v0, {result}}}\n"
    )
    filename = f"<mtlkit plan {next(_serial)}>"
    # Registered with linecache so that tracebacks and debuggers show the generated lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {"_steps": steps, "_node_error": _node_error, "_input": INPUT, **constants}
    exec(compile(source, filename, "exec"), namespace)
    return source, namespace["run"]


_FIRST_LINE = 3  # line of node 0's call in the generated source


def _node_error(steps: tuple[Step, ...], err: Exception, frame_locals: dict[str, Any]) -> NodeError:
    """The `NodeError` for the node whose line of the generated function raised `err`."""
    tb = err.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_name != "run":
        tb = tb.tb_next
    i = (tb.tb_lineno if tb is not None else _FIRST_LINE) - _FIRST_LINE
    step = steps[i]
    values = {INPUT: frame_locals["v0"]}
    for j, earlier in enumerate(steps[:i]):
        values[earlier.name] = frame_locals.get(f"v{j + 1}")
    keys = step.keys or (None,) * len(step.sources)
    args = [_select(values[src], key) for src, key in zip(step.sources, keys)]
    return NodeError(
        f"node {step.name!r} (module {step.module_key!r}) failed on inputs {_describe(step.sources, args)}: {err}"
    )


def _select(value: Any, key: str | int | None) -> Any:
    if key is None:
        return value
    try:
        return value[key]
    except Exception as err:  # the selection itself failed: describe what was there
        return _Unselectable(value, key, err)


class _Unselectable(NamedTuple):
    value: Any
    key: Any
    error: Exception


def _describe(sources: tuple[str, ...], args: list[Any]) -> str:
    return ", ".join(f"{src}={describe_value(arg)}" for src, arg in zip(sources, args))


def describe_value(value: Any) -> str:
    """A short description of a node's input for error messages: tensor shapes, dict keys, type names."""
    if isinstance(value, _Unselectable):
        return f"{describe_value(value.value)} (no key {value.key!r}: {type(value.error).__name__})"
    if isinstance(value, Tensor):
        return f"Tensor{tuple(value.shape)}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {describe_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(describe_value(v) for v in value) + "]"
    return type(value).__name__
