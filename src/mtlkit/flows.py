"""Snorkel's front door: `Operation`, `Task` and `MultitaskClassifier`.

A `Task` is a path through a pool of named modules: an op sequence whose last
operation's output goes to the task's loss and output functions. A
`MultitaskClassifier` merges the tasks' module pools by name (one module per name,
shared by every task that names it) and compiles all their operations into one
`mtlkit.graph.TaskGraph`, so a forward pass runs each needed operation once and
only the operations that the requested tasks need.

Semantics follow `snorkel.classification` (Ratner et al., "Snorkel: rapid training
data creation with weak supervision", VLDB 2018, https://arxiv.org/abs/1711.10160).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mtlkit import metrics
from mtlkit.data.loader import move_to_device
from mtlkit.errors import SpecError
from mtlkit.graph.executor import INPUT, execute
from mtlkit.graph.task_graph import Node, TaskGraph
from mtlkit.labels import marker_of
from mtlkit.metrics import Scorer
from mtlkit.protocol import StepOutput, labelled_batch, task_loss

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["MultitaskClassifier", "Operation", "Task"]

OpInput = str | tuple[str, str | int]


class Operation:
    """One call of a pool module: ``module_pool[module_name](*inputs)``.

    Args:
        module_name: the key of the module in the task's module pool.
        inputs: what the module receives, as positional arguments in order. Each is
            the name of an earlier operation (its whole output) or a pair
            ``(op_name, key)`` selecting ``output[key]`` (a dict key or a tuple
            index). ``"_input_"`` names the batch's X dict, so
            ``("_input_", "circle_data")`` is that field of the batch.
        name: the operation's name (default: `module_name`). Tasks whose operations
            agree in name, module and inputs share one computation, run once per
            forward pass.

    Departure from Snorkel: an operation must name its inputs (Snorkel passes the
    dict of all earlier outputs to a module whose `inputs` is empty).
    """

    def __init__(self, module_name: str, inputs: Sequence[OpInput], name: str | None = None) -> None:
        if not isinstance(module_name, str) or not module_name:
            raise SpecError(f"Operation module_name must be a non-empty string, got {module_name!r}")
        self.module_name = module_name
        self.name = module_name if name is None else name
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"Operation name must be a non-empty string, got {name!r} (module {module_name!r})")
        if self.name == INPUT:
            raise SpecError(f"operation name {INPUT!r} is reserved for the batch's X dict; rename the operation")
        if isinstance(inputs, (str, tuple)) or not isinstance(inputs, Sequence) or not inputs:
            raise SpecError(
                f"operation {self.name!r}: inputs must be a non-empty list, e.g. [({INPUT!r}, 'field')] or "
                f"['earlier_op'], got {inputs!r}"
            )
        self.inputs: list[OpInput] = [_check_input(self.name, ref) for ref in inputs]

    @property
    def sources(self) -> list[str]:
        """The operation names this operation reads from (``"_input_"`` included)."""
        return [ref if isinstance(ref, str) else ref[0] for ref in self.inputs]

    def __repr__(self) -> str:
        return f"Operation(name={self.name!r}, module_name={self.module_name!r}, inputs={self.inputs!r})"


class Task:
    """A named path through a module pool, with its loss, output function and scorer.

    Args:
        name: the task name; labels in a batch's Y dict are matched to tasks by name.
        module_pool: the modules the ops use, by name (an `nn.ModuleDict` or a dict).
            Tasks share a module by using the same name: a model uses the first module
            added under a name for every task that names it.
        op_sequence: the operations, in order; each reads ``"_input_"`` or earlier ops.
            The output of the last one goes to `loss_func` and `output_func`.
        scorer: the task's metrics (default: ``Scorer(metrics=["accuracy"])``). Its
            `abstain_label` (default: -1 for classification, NaN for regression
            metrics) also marks the unlabelled rows that
            `MultitaskClassifier.calculate_loss` leaves out.
        loss_func: ``loss_func(last_output, Y) -> scalar`` on the labelled rows
            (default `F.cross_entropy`, which takes class indices or, for 2-D float
            labels, class probabilities).
        output_func: ``output_func(last_output)`` for prediction and scoring (default:
            softmax over dim 1). A regression task gives its own loss, an output
            function returning values and a regression `Scorer` (mse, mae, r2).
    """

    def __init__(
        self,
        name: str,
        module_pool: nn.ModuleDict | Mapping[str, nn.Module],
        op_sequence: Sequence[Operation],
        scorer: Scorer | None = None,
        loss_func: Callable[..., Tensor] | None = None,
        output_func: Callable[..., Tensor] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise SpecError(f"Task name must be a non-empty string, got {name!r}")
        self.name = name
        self.module_pool = _as_module_dict(name, module_pool)
        self.op_sequence: list[Operation] = _check_op_sequence(name, op_sequence, self.module_pool)
        self.scorer = Scorer(metrics=["accuracy"]) if scorer is None else scorer
        self.loss_func = F.cross_entropy if loss_func is None else loss_func
        self.output_func = partial(F.softmax, dim=1) if output_func is None else output_func

    @property
    def head(self) -> str:
        """The name of the last operation, whose output the loss and output functions get."""
        return self.op_sequence[-1].name

    def __repr__(self) -> str:
        return f"Task(name={self.name!r}, ops={[op.name for op in self.op_sequence]})"


class MultitaskClassifier(nn.Module):
    """A multi-task model built from `Task`s that share modules by name (Snorkel's API).

    Args:
        tasks: the tasks, added in order with `add_task`.
        name: a label for the model (default: the class name).
        device: where to move the modules (anything `nn.Module.to` takes, or -1 for the
            CPU as in Snorkel); default `None` leaves them where they are. Batches are
            moved to the device of the model's parameters.
        dataparallel: accepted for Snorkel's signature; modules are never wrapped in
            `nn.DataParallel` (True warns that it is ignored).

    Attributes:
        module_pool: every module of every task, by name (`nn.ModuleDict`).
        tasks: task name -> `Task`, in the order added.
        op_sequences: task name -> its operations (Snorkel's attribute).
        task_graph: the `TaskGraph` all op sequences compile into; `g` is its
            networkx graph, so `mtlkit.viz.draw_graph(model)` works.

    Modules are shared by name, as in Snorkel: the first module added under a name is
    the one every task uses; a task that brings a different module object under a
    taken name gets the first one, with a warning naming both tasks.

    Departures from Snorkel: no `DataParallel` wrapping; `device=None` by default
    (Snorkel moves to GPU 0); a task name used twice is a `SpecError`; an
    operation name that two tasks define differently becomes two graph nodes
    (Snorkel caches by name, so a forward for both tasks fed the second task the
    first one's input); a label in `calculate_loss`'s Y dict with no task of that
    name is an error (a typo would otherwise train nothing); `load` refuses pickled
    code (`torch.load(weights_only=True)`).

    Implements `mtlkit.protocol.MultiTaskModel`, so `mtlkit.Trainer` trains
    it and any balancer acts on `shared_parameters()`.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        name: str | None = None,
        device: torch.device | str | int | None = None,
        dataparallel: bool = False,
    ) -> None:
        super().__init__()
        if dataparallel:
            warnings.warn(
                "MultitaskClassifier(dataparallel=True): mtlkit never wraps modules in nn.DataParallel; "
                "the model runs on one device (use Trainer(distributed=True) for several GPUs)",
                UserWarning,
                stacklevel=2,
            )
        self.name = type(self).__name__ if name is None else name
        self.module_pool = nn.ModuleDict()
        self.tasks: dict[str, Task] = {}
        self.task_graph = TaskGraph([], outputs=[])
        self._heads: dict[str, str] = {}  # task name -> graph node of its last operation
        self._shared_keys: set[str] = set()  # pool keys of the modules more than one task's head needs
        for task in tasks:
            self.add_task(task)
        if device is not None:
            self.to("cpu" if device == -1 else device)  # -1: Snorkel's spelling of the CPU

    def add_task(self, task: Task) -> None:
        """Add a task, sharing its modules and operations by name with the tasks already in the model.

        The task's new modules are moved to the model's device (as in Snorkel). A module
        name already in the model keeps its first module, for this task too; when the
        task brings a different object under that name, a warning says so.

        Raises:
            SpecError: the task name is taken, or the task is not a `Task`; the model is
                left unchanged.
        """
        self._check_new_task(task)
        self._warn_on_replaced_modules(task)
        nodes, heads = _compile([*self.tasks.values(), task])
        graph = TaskGraph(nodes, outputs=list(dict.fromkeys(heads.values())))
        device = self._device()
        for key, module in task.module_pool.items():
            if key not in self.module_pool:
                self.module_pool[key] = module if device is None else module.to(device)
        self.task_graph, self._heads = graph, heads
        self._shared_keys = _shared_module_keys(graph, heads)
        self.tasks[task.name] = task

    @property
    def op_sequences(self) -> dict[str, list[Operation]]:
        """Each task's operations, by task name (Snorkel's attribute)."""
        return {name: task.op_sequence for name, task in self.tasks.items()}

    @property
    def g(self) -> nx.DiGraph:
        """The operation graph (edge u -> v: v reads u), the batch input ``"_input_"`` included."""
        return self.task_graph.g

    def forward(self, X_dict: Mapping[str, Any], task_names: Iterable[str]) -> dict[str, Any]:
        """Run the operations the named tasks need, each once.

        Returns ``{"_input_": X_dict, op_name: output, ...}`` for the operations run.
        An operation name that tasks define differently (say the same module on
        different input fields) is keyed ``op_name@task`` instead (see `g`).
        """
        heads = [self._head(t) for t in task_names]
        device = self._device()
        X_dict = X_dict if device is None else move_to_device(X_dict, device)
        modules = cast(Mapping[str, nn.Module], self.module_pool)  # a ModuleDict maps names to modules
        return execute(self.task_graph.plan(list(dict.fromkeys(heads))), modules, X_dict)

    def calculate_loss(
        self, X_dict: Mapping[str, Any], Y_dict: Mapping[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, int]]:
        """Loss and number of labelled rows of every task labelled in the batch.

        A row is unlabelled when its label is the task scorer's `abstain_label`
        (mtlkit's label convention by default: -1 for classification, NaN for
        regression scorers); for 2-D (probabilistic) labels, when every entry of the
        row is. The loss is the task's `loss_func` on the labelled rows only (a mean
        for the default cross-entropy), computed by `mtlkit.protocol.task_loss`. Tasks
        without a labelled row are absent from both dicts and their heads are not run.
        """
        markers = {}
        for label in Y_dict:
            if label not in self.tasks:
                raise ValueError(
                    f"Y_dict has labels {label!r}, but model {self.name!r} has no task of that name; tasks: "
                    f"{list(self.tasks)}. Add such a task, or drop/rename the label in the dataset"
                )
            markers[label] = marker_of(self.tasks[label].scorer)
        active = labelled_batch(Y_dict, markers)
        if not active:
            return {}, {}
        values = self.forward(X_dict, list(active))
        losses = {t: task_loss(t, self.tasks[t].loss_func, values[self._heads[t]], y) for t, y in active.items()}
        counts = {t: y.count for t, y in active.items()}
        return losses, counts

    def predict(
        self,
        dataloader: DataLoader,
        return_preds: bool = False,
        remap_labels: Mapping[str, str | None] | None = None,
    ) -> dict[str, dict[str, Tensor]]:
        """Snorkel's ``{"golds": {label: T}, "probs": {label: T}[, "preds": {label: T}]}`` for one dataloader.

        `remap_labels` maps a label name to the task that predicts it (or to None to
        skip it); other labels go to the task of the same name.
        """
        return metrics.predict(self, dataloader, return_preds=return_preds, remap_labels=remap_labels)

    def score(
        self,
        dataloaders: Sequence[DataLoader],
        remap_labels: Mapping[str, str | None] | None = None,
        as_dataframe: bool = False,
    ) -> dict[str, float] | Any:
        """Every task's metrics on every dataloader, keyed ``task/dataset/split/metric``."""
        return metrics.score(self, dataloaders, remap_labels=remap_labels, as_dataframe=as_dataframe)

    def save(self, path: str | os.PathLike) -> None:
        """Write the state dict to `path` (parent folders created; written then renamed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load(self, path: str | os.PathLike) -> None:
        """Load a state dict written by `save` onto this model's device (tensors only, no pickled code)."""
        state = torch.load(path, map_location=self._device(), weights_only=True)
        self.load_state_dict(state)

    # --- mtlkit.protocol.MultiTaskModel -------------------------------------------

    @property
    def task_names(self) -> list[str]:
        """The task names, in the order the tasks were added."""
        return list(self.tasks)

    def training_step(self, X: Mapping[str, Any], Y: Mapping[str, Tensor]) -> StepOutput:
        """`calculate_loss` as a `StepOutput` (one mean loss per task with labelled rows)."""
        losses, counts = self.calculate_loss(X, Y)
        return StepOutput(losses=losses, counts=counts)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the modules that more than one task's head depends on."""
        shared: dict[int, nn.Parameter] = {}
        for key, module in self.module_pool.items():
            if key in self._shared_keys:
                for p in module.parameters():
                    shared.setdefault(id(p), p)
        return list(shared.values())

    def task_outputs(self, X: Mapping[str, Any], task_names: list[str]) -> dict[str, Any]:
        """Each named task's `output_func` applied to its last operation's output."""
        values = self.forward(X, task_names)
        return {t: self.tasks[t].output_func(values[self._heads[t]]) for t in task_names}

    def scorers(self) -> dict[str, Scorer]:
        """The `Scorer` of each task."""
        return {name: task.scorer for name, task in self.tasks.items()}

    # --- helpers ---------------------------------------------------------------------------

    def _head(self, task_name: str) -> str:
        if task_name not in self._heads:
            raise KeyError(f"model {self.name!r} has no task {task_name!r}; tasks: {list(self.tasks)}")
        return self._heads[task_name]

    def _device(self) -> torch.device | None:
        """The device of the first parameter (else buffer) in `parameters()` order; None without either.

        Walks the module tree itself, stopping at the first module holding one: this runs on
        every forward, and `parameters()` costs several times more.
        """
        for kind in ("_parameters", "_buffers"):
            stack: list[nn.Module | None] = [self]
            while stack:
                module = stack.pop()
                if module is None:  # a submodule slot set to None
                    continue
                for tensor in getattr(module, kind).values():
                    if tensor is not None:
                        return tensor.device
                stack.extend(reversed(module._modules.values()))
        return None

    def _check_new_task(self, task: Task) -> None:
        if not isinstance(task, Task):
            raise SpecError(
                f"Unrecognized task type: MultitaskClassifier takes mtlkit.Task objects, got {type(task).__name__}"
            )
        if task.name in self.tasks:
            raise SpecError(
                f"Found duplicate task {task.name!r}: it is already in model {self.name!r}; give the new task another name"
            )
        _check_op_sequence(task.name, task.op_sequence, task.module_pool)  # ops may have been edited since Task()

    def _warn_on_replaced_modules(self, task: Task) -> None:
        replaced = [
            key
            for key, module in task.module_pool.items()
            if key in self.module_pool and self.module_pool[key] is not module
        ]
        if replaced:
            owners = {key: next(t.name for t in self.tasks.values() if key in t.module_pool) for key in replaced}
            taken = ", ".join(f"{key!r} (from task {owner!r})" for key, owner in owners.items())
            warnings.warn(
                f"task {task.name!r} brings different module objects under names already in model {self.name!r}: "
                f"{taken}; the task uses the modules already there (modules are shared by name). Pass the same "
                "objects to silence this, or rename the modules to keep them apart",
                UserWarning,
                stacklevel=3,
            )


def _compile(tasks: Sequence[Task]) -> tuple[list[Node], dict[str, str]]:
    """The graph nodes of these tasks' operations and each task's head node.

    Operations are identified by what they compute: (name, module, the identities of
    their inputs). Tasks that share an identity share its node. When one op name has
    several identities (Snorkel's tutorial runs `base_mlp` on `circle_data` in one
    task and on `square_data` in another), each gets the node name ``op@task``, after
    the first task that defines it.
    """
    variants: dict[str, dict[tuple, str]] = {}  # op name -> identity -> first task defining it
    identities: dict[str, dict[str, Any]] = {}  # task -> op name -> identity
    for task in tasks:
        known: dict[str, Any] = {INPUT: INPUT}
        for op in task.op_sequence:
            refs = tuple((known[src], key) for src, key in _refs(op))
            known[op.name] = identity = (op.name, op.module_name, refs)
            variants.setdefault(op.name, {}).setdefault(identity, task.name)
        identities[task.name] = known
    node_names: dict[Any, str] = {INPUT: INPUT}
    for op_name, by_identity in variants.items():
        for identity, task_name in by_identity.items():
            node_names[identity] = op_name if len(by_identity) == 1 else f"{op_name}@{task_name}"
    nodes = [
        Node(node_names[identity], module_name, [(node_names[src], key) for src, key in refs])
        for by_identity in variants.values()
        for identity in by_identity
        for (_, module_name, refs) in [identity]
    ]
    heads = {task.name: node_names[identities[task.name][task.op_sequence[-1].name]] for task in tasks}
    return nodes, heads


def _shared_module_keys(graph: TaskGraph, heads: Mapping[str, str]) -> set[str]:
    users: dict[str, int] = {}
    for head in heads.values():
        for key in {graph.nodes[name].module_key for name in graph.needed([head])}:
            users[key] = users.get(key, 0) + 1
    return {key for key, count in users.items() if count > 1}


def _refs(op: Operation) -> list[tuple[str, str | int | None]]:
    return [(ref, None) if isinstance(ref, str) else ref for ref in op.inputs]


def _check_input(op_name: str, ref: Any) -> OpInput:
    if isinstance(ref, str) and ref:
        return ref
    if isinstance(ref, tuple) and len(ref) == 2 and isinstance(ref[0], str) and isinstance(ref[1], (str, int)):
        return ref
    raise SpecError(
        f"operation {op_name!r} has input {ref!r}; write an earlier operation's name, or a pair "
        f"(op_name, key) such as ({INPUT!r}, 'field') or ('op', 0)"
    )


def _as_module_dict(task: str, pool: Any) -> nn.ModuleDict:
    if isinstance(pool, nn.ModuleDict):
        return pool
    if not isinstance(pool, Mapping):
        raise SpecError(
            f"task {task!r}: module_pool must be an nn.ModuleDict or a dict of modules, got {type(pool).__name__}"
        )
    for key, module in pool.items():
        if not isinstance(module, nn.Module):
            raise SpecError(
                f"task {task!r}: module_pool[{key!r}] is a {type(module).__name__}, not an nn.Module; "
                "wrap functions in an nn.Module"
            )
    return nn.ModuleDict(pool)


def _check_op_sequence(task: str, ops: Sequence[Operation], pool: nn.ModuleDict) -> list[Operation]:
    if isinstance(ops, (str, Operation)) or not isinstance(ops, Sequence) or not ops:
        raise SpecError(f"task {task!r}: op_sequence must be a non-empty list of Operations, got {ops!r}")
    seen: set[str] = set()
    for op in ops:
        if not isinstance(op, Operation):
            raise SpecError(f"task {task!r}: op_sequence holds a {type(op).__name__}; use mtlkit.Operation")
        if op.name in seen:
            raise SpecError(
                f"task {task!r}: operation name {op.name!r} appears twice; give each operation a unique name"
            )
        if op.module_name not in pool:
            raise SpecError(
                f"task {task!r}: operation {op.name!r} uses module {op.module_name!r}, which is not in the task's "
                f"module_pool {list(pool)}; add it to the pool or fix the name"
            )
        for src in op.sources:
            if src != INPUT and src not in seen:
                raise SpecError(
                    f"task {task!r}: operation {op.name!r} reads {src!r}, which is not an earlier operation of this "
                    f"task; inputs name {INPUT!r} or operations listed before it ({sorted(seen)})"
                )
        seen.add(op.name)
    return list(ops)
