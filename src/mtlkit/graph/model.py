"""`MTLModel`: torchMTL's front door, compiled into a `TaskGraph`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from mtlkit.errors import SpecError
from mtlkit.graph.executor import INPUT, execute
from mtlkit.graph.spec import AUTO, TaskSpec, parse_tasks
from mtlkit.graph.task_graph import Node, TaskGraph
from mtlkit.labels import marker_of
from mtlkit.protocol import Labelled, StepOutput, labelled_targets, task_loss

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["MTLModel"]


class MTLModel(nn.Module):
    """A multi-task network declared as torchMTL's list of dicts (see `mtlkit.graph.spec`).

    ``model(X)`` returns ``(y_hat, l_funcs, l_weights)``: three lists in
    `output_tasks` order holding each output node's value, its ``loss`` and its
    ``loss_weight`` (``None`` where the entry has none). ``model(X, tasks=[...])``
    returns the same lists for those nodes and runs only the nodes they need.

    As in torchMTL, every node's layers are registered under the node's name
    (``model.Embed1``), so parameter names and state dicts match torchMTL's.

    ``loss_weight: 'auto'`` registers a learnable scalar ``nn.Parameter`` initialised
    to ``loss_init_val`` as ``model.<name>_loss``; the optimizer sees it and
    ``l_weights`` returns it, as torchMTL does. Departure: torchMTL's parameter has
    shape (1,), which breaks its own README loop (``loss = 0; loss += w * l``
    fails once the 0-dim sum meets a (1,) term); mtlkit's is 0-dim, so the loop
    runs as written. Note what 'auto' means in that loop
    ``loss += l_weights[i] * l_funcs[i](y_hat[i], y[i])``: the weight is a free
    learnable scale with no regulariser, so gradient descent shrinks it (and can
    drive it below zero) rather than balancing tasks. For principled learnable
    weights use a balancer, e.g. uncertainty weighting ``mtlkit.weighting.get("uw")``.

    Also implements `mtlkit.protocol.MultiTaskModel`, so `mtlkit.Trainer`
    can train it: `training_step` returns ``loss_weight * loss(y_hat, y)`` per task
    (weight 1 where ``loss_weight`` is ``None``), the term torchMTL's loop sums.

    Attributes:
        g: the graph as a `networkx.DiGraph`, model input ``"_input_"`` included.
        task_graph: the validated `TaskGraph`.
        output_tasks: the output node names.
        losses / loss_weights: node name -> loss callable / weight (``None`` where absent).

    Raises:
        SpecError: at construction, naming the entry and what to change.
    """

    def __init__(self, tasks: Sequence[Mapping[str, Any]], output_tasks: Sequence[str]) -> None:
        super().__init__()
        specs = parse_tasks(tasks)
        self.output_tasks: list[str] = _parse_output_tasks(output_tasks)
        self.task_graph = TaskGraph([_node(spec) for spec in specs], self.output_tasks)
        self.losses: dict[str, Callable[..., Tensor] | None] = {s.name: s.loss for s in specs}
        self.loss_modules = nn.ModuleDict({s.name: s.loss for s in specs if isinstance(s.loss, nn.Module)})
        self._fixed_weights: dict[str, float | None] = {}
        self._auto_weights: dict[str, str] = {}  # node name -> name of its registered weight parameter
        self.metrics: dict[str, tuple[str, ...]] = {s.name: s.metrics for s in specs if s.metrics is not None}
        self.outputs: dict[str, Callable[[Any], Any] | None] = {s.name: s.output for s in specs}
        self._scorers: dict[str, Any] | None = None
        self._shared_names: list[str] | None = None
        reserved = set(dir(self))
        for spec in specs:
            if spec.name in reserved:
                raise SpecError(
                    f"task name {spec.name!r} clashes with the attribute MTLModel.{spec.name}; rename the task"
                )
            self.add_module(spec.name, spec.layers)
        for spec in specs:
            self._add_weight(spec, reserved)

    def _add_weight(self, spec: TaskSpec, reserved: set[str]) -> None:
        weight = spec.loss_weight
        if weight != AUTO:
            if isinstance(weight, str):
                raise SpecError(f"task {spec.name!r} has loss_weight {weight!r}; give a number, None or 'auto'")
            self._fixed_weights[spec.name] = weight
            return
        param_name = f"{spec.name}_loss"
        if param_name in reserved or param_name in self.task_graph.nodes:
            raise SpecError(
                f"task {spec.name!r}: its 'auto' weight is registered as {param_name!r}, which clashes with an "
                "attribute or node of that name; rename one of them"
            )
        self.register_parameter(param_name, nn.Parameter(torch.tensor(spec.loss_init_val)))
        self._auto_weights[spec.name] = param_name

    @property
    def _layers(self) -> Mapping[str, nn.Module]:
        """The registered modules by name (each added with a module, never None)."""
        return cast(Mapping[str, nn.Module], self._modules)

    @property
    def g(self) -> nx.DiGraph:
        """The computation graph (edge u -> v: v reads u), model input included."""
        return self.task_graph.g

    @property
    def loss_weights(self) -> dict[str, float | nn.Parameter | None]:
        """Node name -> its loss weight: a number, ``None``, or the 'auto' `nn.Parameter`."""
        return {name: self._weight(name) for name in self.task_graph.nodes}

    def _weight(self, name: str) -> float | nn.Parameter | None:
        # looked up on each call: a device move may replace the Parameter object
        auto = self._auto_weights.get(name)
        return self._fixed_weights[name] if auto is None else getattr(self, auto)

    def forward(self, X: Any, tasks: Sequence[str] | None = None) -> tuple[list[Any], list[Any], list[Any]]:
        """Return ``(y_hat, l_funcs, l_weights)`` for `tasks` (default: `output_tasks`)."""
        names = self.output_tasks if tasks is None else _task_list(tasks)
        values = execute(self.task_graph.plan(names), self._layers, X)
        losses = self.losses
        return [values[t] for t in names], [losses[t] for t in names], [self._weight(t) for t in names]

    # --- mtlkit.protocol.MultiTaskModel -------------------------------------------

    @property
    def task_names(self) -> list[str]:
        """The output tasks, in `output_tasks` order."""
        return list(self.output_tasks)

    def training_step(self, X: Any, Y: Mapping[str, Tensor]) -> StepOutput:
        """Run the tasks labelled in `Y` and return ``loss_weight * loss(y_hat, y)`` for each.

        Rows without a label (class -1, regression NaN, or the task Scorer's
        `abstain_label`; see `mtlkit.labels`) are left out of the loss and the counts;
        a task without a labelled row is absent and its nodes are not run.
        """
        names = [t for t in self.output_tasks if t in Y]
        loss_fns: dict[str, Callable[..., Tensor]] = {}
        for key in Y:
            if key not in self.output_tasks:
                raise ValueError(
                    f"targets given for {key!r}, which is not an output task; output tasks: {self.output_tasks}"
                )
            loss_fn = self.losses[key]
            if loss_fn is None:
                raise ValueError(f"targets given for task {key!r}, which has no 'loss'; add a 'loss' to its entry")
            loss_fns[key] = loss_fn
        scorers = self.scorers()
        targets: dict[str, Labelled] = {}
        for t in names:
            labels = labelled_targets(t, Y[t], marker_of(scorers.get(t)))
            if labels is not None:
                targets[t] = labels
        values = execute(self.task_graph.plan(list(targets)), self._layers, X) if targets else {}
        losses: dict[str, Tensor] = {}
        for t, y in targets.items():
            loss = task_loss(t, loss_fns[t], values[t], y)
            weight = self._weight(t)
            losses[t] = loss if weight is None else weight * loss
        return StepOutput(losses=losses, counts={t: y.count for t, y in targets.items()})

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters that more than one output task depends on (from graph ancestry)."""
        if self._shared_names is None:  # the graph is fixed once built: find the names once
            users: dict[int, int] = {}
            for task in self.output_tasks:
                ids = {id(p) for name in self.task_graph.needed([task]) for p in self._layers[name].parameters()}
                for pid in ids:
                    users[pid] = users.get(pid, 0) + 1
            self._shared_names = [n for n, p in self.named_parameters() if users.get(id(p), 0) > 1]
        params = dict(self.named_parameters())
        return [params[name] for name in self._shared_names]

    def task_outputs(self, X: Any, task_names: list[str]) -> dict[str, Any]:
        """Each named node's output, passed through its ``output`` callable where the entry has one."""
        names = _task_list(task_names)
        values = execute(self.task_graph.plan(names), self._layers, X)
        outputs: dict[str, Any] = {}
        for t in names:
            output = self.outputs.get(t)
            outputs[t] = values[t] if output is None else output(values[t])
        return outputs

    def scorers(self) -> Mapping[str, Any]:
        """A `mtlkit.Scorer` per entry that lists ``metrics``; empty if none does."""
        if self._scorers is None:
            self._scorers = {}
            if self.metrics:
                from mtlkit.metrics import Scorer  # the metrics package is optional for graphs without metrics

                self._scorers = {name: Scorer(metrics=list(m)) for name, m in self.metrics.items()}
        return self._scorers


def _node(spec: TaskSpec) -> Node:
    return Node(spec.name, spec.name, [INPUT] if spec.anchors is None else list(spec.anchors))


def _parse_output_tasks(output_tasks: Sequence[str]) -> list[str]:
    names = _task_list(output_tasks, "output_tasks")
    if not names:
        raise SpecError("output_tasks is empty; name the nodes whose outputs the model returns")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SpecError(f"output_tasks names {duplicates[0]!r} twice; list each output once")
    return names


def _task_list(tasks: Sequence[str], what: str = "tasks") -> list[str]:
    if isinstance(tasks, str) or not all(isinstance(t, str) for t in tasks):
        raise SpecError(f"{what} must be a list of node names, got {tasks!r}")
    return list(tasks)
