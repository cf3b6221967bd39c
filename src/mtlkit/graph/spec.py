"""Parse and check torchMTL's task list (a list of dicts) into typed records.

Keys of one entry (torchMTL's six, plus one mtlkit key):

- ``name`` (required): a unique node name.
- ``layers`` (required): an `nn.Module`, or any callable (wrapped in `layers.Lambda`).
- ``anchor_layer``: absent or ``None`` -> the node reads the model input; a node
  name; or a list of names, whose outputs are passed as positional arguments in
  list order.
- ``loss``: a callable ``loss(y_hat, y)`` or ``None``.
- ``loss_weight``: a number, ``None``, or ``'auto'`` (a learnable weight).
- ``loss_init_val``: the initial value of an ``'auto'`` weight (a finite number > 0).
- ``metrics`` (mtlkit only): metric names for this node's `Scorer`.
- ``output`` (mtlkit only): a callable applied to the node's output for scoring
  (`task_outputs`), e.g. a softmax so that `roc_auc` sees probabilities.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any, TypeGuard

from torch import nn

from mtlkit.errors import SpecError
from mtlkit.layers import Lambda

AUTO = "auto"
KEYS = ("name", "layers", "anchor_layer", "loss", "loss_weight", "loss_init_val", "metrics", "output")

Weight = float | str | None


@dataclass(frozen=True)
class TaskSpec:
    """One checked entry of the task list."""

    name: str
    layers: nn.Module
    anchors: tuple[str, ...] | None  # None: reads the model input
    loss: Callable[..., Any] | None
    loss_weight: Weight
    loss_init_val: float | None
    metrics: tuple[str, ...] | None
    output: Callable[[Any], Any] | None


def parse_tasks(tasks: Sequence[Mapping[str, Any]]) -> list[TaskSpec]:
    """Check every entry of a torchMTL task list; raise `SpecError` naming the entry and the fix."""
    if isinstance(tasks, (str, bytes, Mapping)) or not isinstance(tasks, Sequence):
        raise SpecError(f"tasks must be a list of dicts, got {type(tasks).__name__}")
    if not tasks:
        raise SpecError("tasks is empty; give at least one dict with 'name' and 'layers'")
    return [_parse_entry(i, entry) for i, entry in enumerate(tasks)]


def _parse_entry(index: int, entry: Mapping[str, Any]) -> TaskSpec:
    where = f"task #{index}"
    if not isinstance(entry, Mapping):
        raise SpecError(f"{where} is a {type(entry).__name__}; each task must be a dict")
    if "name" not in entry:
        raise SpecError(f"{where} has no 'name'; add 'name': '<unique node name>'{_unknown_keys_hint(entry)}")
    name = entry["name"]
    if not isinstance(name, str) or not name or "." in name:
        raise SpecError(f"{where} has name {name!r}; use a non-empty string without '.'")
    where = f"task {name!r}"
    unknown = [key for key in entry if key not in KEYS]
    if unknown:
        raise SpecError(f"{where} has unknown key {unknown[0]!r}{_suggest(unknown[0], KEYS)}; valid keys: {list(KEYS)}")
    if "layers" not in entry:
        raise SpecError(f"{where} has no 'layers'; add 'layers': <an nn.Module or callable>")
    weight, init_val = _parse_weight(where, entry)
    return TaskSpec(
        name=name,
        layers=_parse_layers(where, entry["layers"]),
        anchors=_parse_anchors(where, entry.get("anchor_layer")),
        loss=_parse_loss(where, entry.get("loss")),
        loss_weight=weight,
        loss_init_val=init_val,
        metrics=_parse_metrics(where, entry.get("metrics")),
        output=_parse_output(where, entry.get("output")),
    )


def _parse_layers(where: str, layers: Any) -> nn.Module:
    if isinstance(layers, nn.Module):
        return layers
    if callable(layers):
        return Lambda(layers)
    raise SpecError(f"{where} has 'layers' of type {type(layers).__name__}; give an nn.Module or a callable")


def _parse_anchors(where: str, anchor: Any) -> tuple[str, ...] | None:
    if anchor is None:
        return None
    if isinstance(anchor, str):
        return (anchor,)
    if isinstance(anchor, (list, tuple)) and anchor and all(isinstance(a, str) for a in anchor):
        return tuple(anchor)
    raise SpecError(
        f"{where} has 'anchor_layer' {anchor!r}; give a node name, a non-empty list of node names, "
        "or leave it out to read the model input"
    )


def _parse_loss(where: str, loss: Any) -> Callable[..., Any] | None:
    if loss is None or callable(loss):
        return loss
    raise SpecError(f"{where} has 'loss' of type {type(loss).__name__}; give a callable loss(y_hat, y) or None")


def _parse_weight(where: str, entry: Mapping[str, Any]) -> tuple[Weight, float | None]:
    weight = entry.get("loss_weight")
    init_val = entry.get("loss_init_val")
    if weight == AUTO:
        if "loss_init_val" not in entry:
            raise SpecError(f"{where} has loss_weight 'auto' but no 'loss_init_val'; add e.g. 'loss_init_val': 1.0")
        if not _is_number(init_val) or not math.isfinite(init_val) or init_val <= 0:
            raise SpecError(
                f"{where} has loss_init_val {init_val!r}; an 'auto' weight needs a finite number > 0, e.g. 1.0"
            )
        return AUTO, float(init_val)
    if "loss_init_val" in entry:
        raise SpecError(
            f"{where} sets 'loss_init_val' without loss_weight 'auto'; remove it or set 'loss_weight': 'auto'"
        )
    if weight is None:
        return None, None
    if isinstance(weight, str):
        raise SpecError(f"{where} has loss_weight {weight!r}{_suggest(weight, [AUTO])}; give a number, None or 'auto'")
    if not _is_number(weight) or not math.isfinite(weight):
        raise SpecError(f"{where} has loss_weight {weight!r}; give a finite number, None or 'auto'")
    return float(weight), None


def _parse_output(where: str, output: Any) -> Callable[[Any], Any] | None:
    if output is None or callable(output):
        return output
    raise SpecError(f"{where} has 'output' of type {type(output).__name__}; give a callable, e.g. a softmax")


def _parse_metrics(where: str, metrics: Any) -> tuple[str, ...] | None:
    if metrics is None:
        return None
    if isinstance(metrics, (list, tuple)) and all(isinstance(m, str) for m in metrics):
        return tuple(metrics)
    raise SpecError(f"{where} has 'metrics' {metrics!r}; give a list of metric names, e.g. ['accuracy']")


def _is_number(value: Any) -> TypeGuard[Real]:
    return isinstance(value, Real) and not isinstance(value, bool)


def _unknown_keys_hint(entry: Mapping[str, Any]) -> str:
    close = [key for key in entry if difflib.get_close_matches(str(key), ["name"], n=1)]
    return f" (found {close[0]!r})" if close else ""


def _suggest(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
