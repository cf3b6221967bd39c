"""The base class of the architectures, and the pieces several of them share.

Every architecture splits its network at a *cut*: a few tensors (`reps`) that every
shared parameter reaches the tasks through. Below the cut lies `shared_parameters()`;
above it each parameter serves one task (a head, a gate, a task's own expert or
branch). With `rep_grad=True`, `training_step` returns the cut of that forward as
`StepOutput.shared_reps`, so a gradient balancer takes the task gradients there and
pushes the combined gradient through the shared part in one backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter
from torch.utils.data import DataLoader

from mtlkit import metrics
from mtlkit.errors import SpecError
from mtlkit.graph.executor import NodeError, describe_value
from mtlkit.labels import marker_of
from mtlkit.protocol import Labelled, StepOutput, labelled_targets, task_loss

LossFn = Callable[[Tensor, Tensor], Tensor]

_RESNET_STEM = ("conv1", "bn1", "relu", "maxpool")
_RESNET_LAYERS = ("layer1", "layer2", "layer3", "layer4")


@dataclass
class _Pass:
    """One forward through the shared part, for the requested tasks."""

    features: dict[str, Tensor]  # what each task's decoder reads
    reps: list[Tensor]  # the cut (see the module docstring)
    penalties: dict[str, Tensor] = field(default_factory=dict)  # added to that task's training loss


class Architecture(nn.Module):
    """A shared part and one decoder per task, with LibMTL's constructor and `forward`.

    Args:
        task_name: the task names, in order.
        encoder_class: a callable (a class, a lambda) that builds a fresh encoder; the
            architecture calls it once per copy it needs (experts, task columns).
        decoders: `{task: nn.Module}`, one head per task, reading the task's representation.
        rep_grad: `training_step` returns the shared representation of its forward as
            `StepOutput.shared_reps`, so that gradient balancers act there (LibMTL's flag).
        multi_input: each task has its own input (LibMTL's flag). Then an input given as
            `{task: input}` (after `input_key`) runs the shared part once per task on that
            task's input, and each task's targets match its own input's rows; an input
            given whole is read by every task. Cross-stitch, LTB and PLE refuse it, as in
            LibMTL (their tasks read each other's features). Either way,
            `forward(inputs, task_name)` runs only that task, and `training_step` only
            the tasks labelled in the batch.
        device: where to move the module after building it; None leaves it where the
            encoder and decoders are.

    mtlkit-only keyword arguments:
        losses: `{task: loss_fn(prediction, target) -> scalar}`, used by `training_step`.
            Rows without a label (class -1, regression NaN, or the task Scorer's
            `abstain_label`; see `mtlkit.labels`) are left out of that task's loss.
        metrics: `{task: mtlkit.Scorer}`, returned by `scorers()`.
        output_funcs: `{task: fn}` applied to that task's prediction in `task_outputs`
            (what scoring sees), e.g. a softmax so that `roc_auc` gets probabilities.
        img_size: the input shape without the batch dimension (LibMTL's name). Parts whose
            size depends on the input (gates, attention masks) are sized by the first
            forward; with `img_size` they are built at construction instead, by a dry
            forward on zeros. Run one forward (or pass `img_size`) before counting
            parameters; optimizers may be built before.
        input_key: the field of a dict batch `X` (as `DictDataLoader` yields) that holds
            the input, for `training_step`, `task_outputs`, `score` and `predict`. "auto"
            (default): the field "input_data" if the batch has it, else the batch's only
            field (e.g. "image" of the built-in multi_mnist), or with `multi_input` a batch
            keyed by task names as per-task inputs; with `multi_input`, a mapping
            `{task: field}` reads each task's input from its own field (a batch may hold
            only some of them, e.g. one dataset per task); None passes `X` unchanged.

    For a custom loop with a gradient balancer at the representation, use
    `predictions, reps = model.forward_with_reps(x)` and
    `balancer.backward(losses, shared_reps=reps)`. To write an architecture, build its
    modules in `__init__` and end it with `self._finish_init()`, return the task
    features and the cut from `_encode`, and list the parameters below the cut in
    `shared_parameters`.
    """

    def __init__(
        self,
        task_name: Sequence[str],
        encoder_class: Callable[[], Any],
        decoders: Mapping[str, nn.Module],
        rep_grad: bool = False,
        multi_input: bool = False,
        device: torch.device | str | None = None,
        *,
        losses: Mapping[str, LossFn] | None = None,
        metrics: Mapping[str, Any] | None = None,
        output_funcs: Mapping[str, Callable[[Tensor], Tensor]] | None = None,
        img_size: Sequence[int] | None = None,
        input_key: str | Mapping[str, str] | None = "auto",
    ) -> None:
        super().__init__()
        self.task_name = _task_names(task_name, type(self).__name__)
        self.task_num = len(self.task_name)
        if isinstance(encoder_class, nn.Module) or not callable(encoder_class):
            raise TypeError(
                f"{type(self).__name__}: encoder_class must be a callable that builds a fresh encoder "
                f"(a class or a lambda), not {type(encoder_class).__name__}; the architecture may need several copies"
            )
        self.encoder_class = encoder_class
        self.decoders = nn.ModuleDict(_per_task(decoders, self.task_name, "decoders", type(self).__name__, every=True))
        self.rep_grad = bool(rep_grad)
        self.multi_input = bool(multi_input)
        self.losses: dict[str, LossFn] = _per_task(losses or {}, self.task_name, "losses", type(self).__name__)
        self._metrics = _per_task(metrics or {}, self.task_name, "metrics", type(self).__name__)
        self.output_funcs = _per_task(output_funcs or {}, self.task_name, "output_funcs", type(self).__name__)
        if isinstance(input_key, Mapping):
            if not self.multi_input:
                raise ValueError(
                    f"{type(self).__name__}: input_key={dict(input_key)!r} gives each task its own field, "
                    "which needs multi_input=True"
                )
            input_key = _per_task(input_key, self.task_name, "input_key", type(self).__name__, every=True)
        self.input_key = input_key
        self._img_size = tuple(img_size) if img_size is not None else None
        self._device = device

    # ------------------------------------------------------------------ for subclasses

    def _encode(self, inputs: Any, tasks: list[str]) -> _Pass:
        """Run the shared part for `tasks` and return their features and the cut."""
        raise NotImplementedError

    def shared_parameters(self) -> list[nn.Parameter]:
        """The parameters below the cut: those more than one task depends on."""
        raise NotImplementedError

    def _refuse_multi_input(self, why: str) -> None:
        if self.multi_input:
            raise ValueError(
                f"{type(self).__name__} does not support multi_input=True ({why}); use multi_input=False, "
                "or an architecture that does: HPS, MMoE, MTAN, CGC, DSelectK"
            )

    def _new_encoder(self) -> nn.Module:
        encoder = self.encoder_class()
        if not isinstance(encoder, nn.Module):
            raise TypeError(
                f"{type(self).__name__}: encoder_class() returned {type(encoder).__name__}, not an nn.Module"
            )
        return encoder

    def _new_task_columns(self) -> nn.ModuleDict:
        """One fresh copy of the encoder's stages per task, for architectures that mix between columns."""
        if self.task_num < 2:
            raise SpecError(f"{type(self).__name__} mixes between task columns: it needs at least two tasks")
        return nn.ModuleDict({t: self._new_stages(min_stages=2) for t in self.task_name})

    def _new_stages(self, min_stages: int = 1) -> nn.ModuleList:
        """A fresh encoder split into its stages (see `_as_stages`)."""
        return _as_stages(self.encoder_class(), type(self).__name__, min_stages)

    def _finish_init(self) -> None:
        """Move to `device` and, with `img_size`, size the lazy parts; call at the end of `__init__`."""
        if self._device is not None:
            self.to(self._device)
        if self._img_size is not None:
            device = next((p.device for p in self.parameters()), None)
            was_training = self.training
            self.eval()
            with torch.no_grad():
                self.forward(torch.zeros(2, *self._img_size, device=device))
            self.train(was_training)

    # ------------------------------------------------------------------ LibMTL interface

    def forward(self, inputs: Any, task_name: str | None = None) -> dict[str, Tensor]:
        """`{task: prediction}` for every task, or only for `task_name`."""
        return self.forward_with_reps(inputs, task_name)[0]

    def forward_with_reps(self, inputs: Any, task_name: str | None = None) -> tuple[dict[str, Tensor], list[Tensor]]:
        """The predictions and the shared representation(s) of this forward.

        Pass the second element as `shared_reps` to a gradient balancer's `backward` to
        take the task gradients at the representation (what `rep_grad` does in LibMTL).
        """
        tasks = self.task_name if task_name is None else [self._known_task(task_name)]
        step = self._run(inputs, list(tasks))
        return self._decode(step), [r for r in step.reps if r.requires_grad]

    def get_share_params(self) -> list[nn.Parameter]:
        """LibMTL's name for `shared_parameters()`."""
        return self.shared_parameters()

    def zero_grad_share_params(self) -> None:
        """Clear the gradients of the shared parameters."""
        for p in self.shared_parameters():
            p.grad = None

    # ------------------------------------------------------------------ MultiTaskModel protocol

    @property
    def task_names(self) -> list[str]:
        return list(self.task_name)

    def training_step(self, X: Any, Y: Mapping[str, Tensor]) -> StepOutput:
        """Forward the tasks labelled in `Y` and return their losses (see `losses`)."""
        labelled = self._labelled(Y)
        if not labelled:
            return StepOutput(losses={}, counts={}, shared_reps=[] if self.rep_grad else None)
        step = self._run(self._input(X), list(labelled))
        predictions = self._decode(step)
        losses, counts = {}, {}
        for task, targets in labelled.items():
            loss = task_loss(task, self.losses[task], predictions[task], targets)
            if task in step.penalties:
                loss = loss + step.penalties[task]
            losses[task] = loss
            counts[task] = targets.count
        if not self.rep_grad:
            return StepOutput(losses=losses, counts=counts)
        reps = [r for r in step.reps if r.requires_grad]
        if not reps and torch.is_grad_enabled():  # under no_grad (a loss-only forward) there is nothing to check
            raise ValueError(
                f"{type(self).__name__}(rep_grad=True): no shared representation requires grad in this step; "
                "are the shared parameters frozen? Use rep_grad=False"
            )
        return StepOutput(losses=losses, counts=counts, shared_reps=reps)

    def task_outputs(self, X: Any, task_names: list[str]) -> dict[str, Tensor]:
        """The decoders' outputs (no gradient) for `task_names`."""
        tasks = [self._known_task(t) for t in task_names]
        with torch.no_grad():
            outputs = self._decode(self._run(self._input(X), tasks))
        return {t: self.output_funcs[t](y) if t in self.output_funcs else y for t, y in outputs.items()}

    def scorers(self) -> Mapping[str, Any]:
        return dict(self._metrics)

    def predict(
        self,
        dataloader: DataLoader,
        return_preds: bool = False,
        remap_labels: Mapping[str, str | None] | None = None,
    ) -> dict[str, dict[str, Tensor]]:
        """`{"golds": {label: T}, "probs": {label: T}[, "preds": {label: T}]}` for one dataloader, as
        `MultitaskClassifier.predict` (probs are the outputs after `output_funcs`)."""
        return metrics.predict(self, dataloader, return_preds=return_preds, remap_labels=remap_labels)

    def score(
        self,
        dataloaders: Sequence[DataLoader],
        remap_labels: Mapping[str, str | None] | None = None,
        as_dataframe: bool = False,
    ) -> dict[str, float] | Any:
        """Every task's `metrics` on every dataloader, keyed `task/dataset/split/metric`, as
        `MultitaskClassifier.score`. Tasks without a Scorer in `metrics` get no entry."""
        if not self._metrics:
            raise ValueError(
                f"{type(self).__name__} has no metrics to score: pass metrics={{task: mtlkit.Scorer([...]), ...}} "
                "to the constructor"
            )
        return metrics.score(self, dataloaders, remap_labels=remap_labels, as_dataframe=as_dataframe)

    # ------------------------------------------------------------------ helpers

    def _run(self, inputs: Any, tasks: list[str]) -> _Pass:
        """`_encode` (see `_per_task_run`); a submodule failing on the input raises `NodeError` naming it."""
        with self._naming_failures(inputs):
            return self._per_task_run(inputs, tasks)

    def _per_task_run(self, inputs: Any, tasks: list[str]) -> _Pass:
        """`_encode`, once per task on its own input when multi_input inputs come as `{task: input}`."""
        if not (self.multi_input and isinstance(inputs, Mapping) and inputs and set(inputs) <= set(self.task_name)):
            return self._encode(inputs, tasks)
        missing = [t for t in tasks if t not in inputs]
        if missing:
            raise KeyError(
                f"{type(self).__name__}(multi_input=True): the per-task inputs have no entry for task(s) {missing} "
                f"(given: {sorted(inputs)}); give one input per task that is run or labelled"
            )
        passes = {t: self._encode(inputs[t], [t]) for t in tasks}
        return _Pass(
            features={t: p.features[t] for t, p in passes.items()},
            reps=[r for p in passes.values() for r in p.reps],
            penalties={t: p.penalties[t] for t, p in passes.items() if t in p.penalties},
        )

    def _decode(self, step: _Pass) -> dict[str, Tensor]:
        outputs = {}
        for task, feature in step.features.items():
            with self._naming_failures(feature):
                outputs[task] = self.decoders[task](feature)
        return outputs

    @contextmanager
    def _naming_failures(self, inputs: Any) -> Iterator[None]:
        """Re-raise an error from inside one of this architecture's modules as `NodeError` naming that module."""
        try:
            yield
        except Exception as err:
            module = self._innermost_module(err.__traceback__)
            if module is None:  # raised by the architecture itself: its message names what to change
                raise
            raise NodeError(
                f"{type(self).__name__}: module {module!r} failed on the input {describe_value(inputs)}: "
                f"{type(err).__name__}: {err}"
            ) from err

    def _innermost_module(self, tb: Any) -> str | None:
        """The dotted name of the deepest submodule of this architecture running in traceback `tb`."""
        names = {id(m): name for name, m in self.named_modules() if name}
        found = None
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if owner is not None and id(owner) in names:
                found = names[id(owner)]
            tb = tb.tb_next
        return found

    def _known_task(self, task: str) -> str:
        if task not in self.task_name:
            raise KeyError(f"{type(self).__name__}: unknown task {task!r}; tasks: {self.task_name}")
        return task

    def _input(self, X: Any) -> Any:
        if self.input_key is None or not isinstance(X, Mapping):
            return X
        key = self.input_key
        if isinstance(key, Mapping):  # {task: field}: the per-task inputs present in this batch
            inputs = {task: X[field] for task, field in key.items() if field in X}
            if not inputs:
                raise KeyError(
                    f"{type(self).__name__}: the batch has none of the per-task input fields "
                    f"{sorted(set(key.values()))} (fields: {sorted(X)}); check input_key"
                )
            return inputs
        if key == "auto" and self.multi_input and X and set(X) <= set(self.task_name):
            return X  # per-task inputs, {task: input}
        if key == "auto":
            key = "input_data" if "input_data" in X or len(X) != 1 else next(iter(X))
        if key not in X:
            raise KeyError(
                f"{type(self).__name__}: the batch has no field {key!r} (fields: {sorted(X)}); "
                "pass input_key=<field name> to the constructor, or input_key=None to give the encoder the whole dict"
            )
        return X[key]

    def _labelled(self, Y: Mapping[str, Tensor]) -> dict[str, Labelled]:
        """The targets of the tasks with at least one labelled row in `Y` (see `mtlkit.labels`)."""
        if not isinstance(Y, Mapping):
            raise TypeError(
                f"{type(self).__name__}.training_step: Y must be a dict task -> target, got {type(Y).__name__}"
            )
        unknown = [key for key in Y if key not in self.task_name]
        if unknown:
            raise KeyError(f"{type(self).__name__}: labels for unknown task(s) {unknown}; tasks: {self.task_name}")
        labelled = {}
        for task in self.task_name:
            if task not in Y:
                continue
            if task not in self.losses:
                raise KeyError(
                    f"{type(self).__name__}: the batch is labelled for task {task!r} but no loss was given for it; "
                    f"pass losses={{{task!r}: loss_fn, ...}} to the constructor"
                )
            targets = labelled_targets(task, Y[task], marker_of(self._metrics.get(task)))
            if targets is not None:
                labelled[task] = targets
        return labelled


def _as_stages(encoder: Any, arch: str = "this architecture", min_stages: int = 1) -> nn.ModuleList:
    """Split an encoder into the stages that per-stage architectures mix between.

    Accepts, in this order:

    - an `nn.Sequential` or `nn.ModuleList`, or a list or tuple of modules: each element is
      one stage (group layers with an inner `nn.Sequential`) — the explicit form;
    - a ResNet with `conv1, bn1, relu, maxpool, layer1 … layer4` (LibMTL's, its dilated
      one, torchvision's): the stem and the four layers; its `avgpool`/`fc`, if any, are
      not used (the decoders read layer4's features, as in LibMTL);
    - a module holding such a ResNet as an attribute (LibMTL's office example: the
      ResNet, then its own pooling and hidden layer): the ResNet's stages, the last
      followed by the wrapper's own layers. The wrapper's `forward` must apply the ResNet
      to its input first — it then runs with that attribute replaced by the identity —
      and a torchvision ResNet's `avgpool`, flatten and `fc` run in between, as its
      `forward` does.
    """
    if isinstance(encoder, (nn.Sequential, nn.ModuleList, list, tuple)):
        stages = list(encoder)
    elif _is_resnet(encoder):
        stages = _resnet_stages(encoder)
    elif isinstance(encoder, nn.Module) and len(held := _held_resnets(encoder)) == 1:
        stages = _wrapper_stages(encoder, held[0])
    else:
        kind = type(encoder).__name__
        held = _held_resnets(encoder) if isinstance(encoder, nn.Module) else []
        found = (
            f"{kind} holds {len(held)} ResNets ({', '.join(held)}), so which one to split is ambiguous"
            if held
            else f"{kind} is not a sequence of stages nor a ResNet, and holds no ResNet as an attribute"
        )
        raise SpecError(
            f"{arch} mixes the encoder stage by stage, but cannot find the stages of what encoder_class builds: "
            f"{found}. It accepts an nn.Sequential, nn.ModuleList or list of modules (one per stage, each feeding "
            "the next), a ResNet (conv1, bn1, relu, maxpool, layer1…layer4), or a module holding one ResNet as an "
            "attribute that its forward applies first. Make encoder_class return the stages explicitly, e.g. "
            "lambda: nn.Sequential(stem, block1, head) (a one-element list makes the whole encoder one stage), "
            "or use an architecture that takes the encoder whole (HPS, MMoE, CGC, DSelectK)"
        )
    not_modules = [i for i, stage in enumerate(stages) if not isinstance(stage, nn.Module)]
    if not_modules:
        raise SpecError(f"{arch}: encoder stage #{not_modules[0]} is not an nn.Module")
    if len(stages) < min_stages:
        raise SpecError(
            f"{arch} needs an encoder of at least {min_stages} stages to mix between, got {len(stages)}; "
            "give encoder_class a sequence of stages"
        )
    return nn.ModuleList(stages)


def _is_resnet(module: Any) -> bool:
    return isinstance(module, nn.Module) and all(hasattr(module, name) for name in _RESNET_STEM + _RESNET_LAYERS)


def _held_resnets(wrapper: nn.Module) -> list[str]:
    """The names of the wrapper's direct children that are ResNets."""
    return [name for name, child in wrapper.named_children() if _is_resnet(child)]


def _resnet_stages(resnet: nn.Module) -> list[nn.Module]:
    stem = nn.Sequential(*(getattr(resnet, name) for name in _RESNET_STEM))
    return [stem, *(getattr(resnet, name) for name in _RESNET_LAYERS)]


def _wrapper_stages(wrapper: nn.Module, name: str) -> list[nn.Module]:
    """The held ResNet's stages; the last one then runs the rest of the wrapper's forward."""
    resnet = getattr(wrapper, name)
    *stages, last = _resnet_stages(resnet)
    between = []
    if isinstance(getattr(resnet, "fc", None), nn.Module) and isinstance(getattr(resnet, "avgpool", None), nn.Module):
        between = [resnet.avgpool, nn.Flatten(1), resnet.fc]  # torchvision's ResNet.forward after layer4
    setattr(wrapper, name, nn.Identity())  # the wrapper's forward now starts from the ResNet's output
    return [*stages, nn.Sequential(last, *between, wrapper)]


def _list_at(container: nn.ModuleList | nn.ModuleDict, key: Any) -> nn.ModuleList:
    """`container[key]` where that item is a ModuleList (torch types the items as plain Modules)."""
    return cast(nn.ModuleList, container[key])


def _dict_at(container: nn.ModuleList | nn.ModuleDict, key: Any) -> nn.ModuleDict:
    """`container[key]` where that item is a ModuleDict (torch types the items as plain Modules)."""
    return cast(nn.ModuleDict, container[key])


def _mix(experts: Tensor, weights: Tensor) -> Tensor:
    """Σ_e weights[b, e] · experts[e, b, …]: per-row mixture of stacked expert outputs."""
    return torch.einsum("eb...,be->b...", experts, weights.to(experts.dtype))


def _softmax_gate(num_experts: int) -> nn.Sequential:
    """A linear softmax gate over the flattened input; its input size is set by the first call."""
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_experts), nn.Softmax(dim=-1))


def _gate_input(inputs: Any, arch: str) -> Tensor:
    if not isinstance(inputs, Tensor):
        raise TypeError(
            f"{arch}'s gates read the input as one tensor (batch, …), but the input is a {type(inputs).__name__}: "
            "set input_key to the batch field that holds that tensor, or use an architecture whose gates do not "
            "read the input (HPS, MTAN, CrossStitch, LTB)"
        )
    return inputs


class _LazyChannelLinear(LazyModuleMixin, nn.Module):
    """A linear map over dimension 1 (a 1×1 convolution on images), sized by its first call.

    `forward(x, out_channels)`: the input size is `x.shape[1]`; `out_channels` fixes the
    output size at the first call (later calls must give the same). Initialised as
    `nn.Linear`.
    """

    cls_to_become = None

    def __init__(self) -> None:
        super().__init__()
        self.weight = UninitializedParameter()
        self.bias = UninitializedParameter()

    def initialize_parameters(self, x: Tensor, out_channels: int) -> None:
        if self.has_uninitialized_params():
            with torch.no_grad():
                fan_in = x.shape[1]
                self.weight.materialize((out_channels, fan_in))
                self.bias.materialize((out_channels,))
                nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
                nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def forward(self, x: Tensor, out_channels: int) -> Tensor:
        if out_channels != self.weight.shape[0]:
            raise ValueError(f"projection sized for {self.weight.shape[0]} outputs, asked for {out_channels}")
        y = nn.functional.linear(torch.movedim(x, 1, -1), self.weight, self.bias)
        return torch.movedim(y, -1, 1)


def _expert_counts(num_experts: Any, tasks: list[str], arch: str) -> tuple[int, dict[str, int]]:
    """Read LibMTL's `num_experts=[shared, per task …]` as (shared count, {task: count})."""
    counts = list(num_experts) if isinstance(num_experts, (list, tuple)) else None
    if counts is None or len(counts) != 1 + len(tasks) or not all(isinstance(c, int) and c >= 0 for c in counts):
        raise SpecError(
            f"{arch}: num_experts must list 1 + {len(tasks)} non-negative ints "
            f"[shared, {', '.join(tasks)}], got {num_experts!r}"
        )
    if counts[0] < 1:
        raise SpecError(f"{arch}: num_experts[0] (shared experts) must be at least 1, got {counts[0]}")
    return counts[0], dict(zip(tasks, counts[1:]))


def _task_names(task_name: Sequence[str], arch: str) -> list[str]:
    if isinstance(task_name, str) or not all(isinstance(t, str) for t in task_name):
        raise SpecError(f"{arch}: task_name must be a list of task names (strings), got {task_name!r}")
    names = list(task_name)
    if not names:
        raise SpecError(f"{arch}: task_name is empty; name at least one task")
    duplicates = sorted({t for t in names if names.count(t) > 1})
    if duplicates:
        raise SpecError(f"{arch}: task {duplicates[0]!r} appears twice in task_name")
    return names


def _per_task(mapping: Mapping[str, Any], tasks: list[str], what: str, arch: str, every: bool = False) -> dict:
    if not isinstance(mapping, (Mapping, nn.ModuleDict)):
        raise TypeError(f"{arch}: {what} must be a dict task -> value, got {type(mapping).__name__}")
    unknown = [key for key in mapping if key not in tasks]
    if unknown:
        raise SpecError(f"{arch}: {what} names unknown task(s) {unknown}; tasks: {tasks}")
    missing = [t for t in tasks if t not in mapping]
    if every and missing:
        raise SpecError(f"{arch}: {what} has no entry for task(s) {missing}; give one per task")
    return {t: mapping[t] for t in tasks if t in mapping}
