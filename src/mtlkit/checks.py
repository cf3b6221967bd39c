"""Mistakes caught before and during training, each named with the task, dataset and split.

`FitChecks` holds the checks of one `Trainer.fit`:

- before the first epoch: an empty dataset (a named error), a task without one labelled
  training row (a warning: its head is never trained, yet it is scored), and a
  `checkpoint_metric` that names no score of the run (a named error);
- on the first batch of each training dataset (`FitChecks.first_batch`), for every task,
  `first_batch_loss` compares the head output with the targets: float labels or (N, 1)
  labels for a classification loss, class labels outside [0, C) in any dataset of the run
  (a head narrower than the number of classes), integer targets or a shape mismatch for
  an elementwise loss, and a loss that broadcasts the output against the targets;
- after each evaluation (`FitChecks.evaluated`): a warning when a training loss has grown
  by `DIVERGENCE_FACTOR` or more since the first evaluation, or a score is not finite.

The first-batch checks run inside `mtlkit.protocol.task_loss`, once per dataset, so that
later steps pay nothing for them.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from types import FunctionType
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.labels import Marker, labelled_rows, marker_of, missing, resolve

DIVERGENCE_FACTOR = 1e3  # a training loss this many times its first evaluated value is diverging

_LOSS_KINDS: dict[Any, str] = {  # torch's losses, as functions and as module classes, by kind
    **dict.fromkeys((F.cross_entropy, F.nll_loss, nn.CrossEntropyLoss, nn.NLLLoss), "class"),
    **dict.fromkeys(
        (
            F.mse_loss,
            F.l1_loss,
            F.smooth_l1_loss,
            F.huber_loss,
            F.binary_cross_entropy,
            F.binary_cross_entropy_with_logits,
        ),
        "elementwise",
    ),
    **dict.fromkeys(
        (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss, nn.BCELoss, nn.BCEWithLogitsLoss), "elementwise"
    ),
}


@dataclass
class _FirstBatch:
    dataset: Any  # the training dataset whose first batch runs
    datasets: list[Any]  # every dataset of the run: their class labels are checked against the head too


_first_batch: ContextVar[_FirstBatch | None] = ContextVar("mtlkit_first_batch", default=None)


def first_batch_dataset() -> Any:
    """The training dataset whose first batch is running under `FitChecks.first_batch`, else None."""
    state = _first_batch.get()
    return None if state is None else state.dataset


class FitChecks:
    """The checks of one `Trainer.fit` (see the module docstring).

    Constructing it runs the checks before the first epoch. `train`, `valid` and `test`
    are the run's dataloaders by role; `checkpoint_metric` is the score key the run
    tracks, or None when it tracks none.
    """

    def __init__(
        self,
        model: Any,
        train: Sequence[Any],
        valid: Sequence[Any],
        test: Sequence[Any],
        checkpoint_metric: str | None = None,
    ) -> None:
        _no_empty_dataset([*train, *valid, *test])
        _warn_untrained_tasks(model, train)
        if checkpoint_metric is not None:
            _check_checkpoint_metric(checkpoint_metric, model, train, valid)
        self._datasets = [loader.dataset for loader in [*train, *valid, *test]]
        self._checked: set[int] = set()
        self._first_losses: dict[str, tuple[float, int]] = {}
        self._warned: set[str] = set()

    def first_batch(self, dataset: Any) -> contextlib.AbstractContextManager:
        """Around `model.training_step`: turns on `first_batch_loss` for `dataset`'s first batch only."""
        if id(dataset) in self._checked:
            return contextlib.nullcontext()
        self._checked.add(id(dataset))
        return _checking(_FirstBatch(dataset, self._datasets))

    def evaluated(self, scores: Mapping[str, float], epoch: int) -> None:
        """Warn (once per key) of a training loss grown by orders of magnitude and of non-finite scores."""
        for key, value in scores.items():
            if key in self._warned:
                continue
            if not math.isfinite(value):
                self._warned.add(key)
                warnings.warn(
                    f"score {key} is {value} after epoch {epoch}; the model's outputs or its training have "
                    "diverged: lower lr, add grad_clip, or check the inputs and targets",
                    RuntimeWarning,
                    stacklevel=2,
                )
            elif key.endswith("/loss"):
                first, first_epoch = self._first_losses.setdefault(key, (value, epoch))
                if first != 0 and abs(value) >= DIVERGENCE_FACTOR * abs(first):
                    self._warned.add(key)
                    warnings.warn(
                        f"training loss {key} grew from {first:.3g} (epoch {first_epoch}) to {value:.3g} "
                        f"(epoch {epoch}): training is diverging; lower lr, add grad_clip, or check the "
                        "scale of the task's targets",
                        RuntimeWarning,
                        stacklevel=2,
                    )


@contextlib.contextmanager
def _checking(state: _FirstBatch) -> Iterator[None]:
    token = _first_batch.set(state)
    try:
        yield
    finally:
        _first_batch.reset(token)


def first_batch_loss(task: str, loss_fn: Callable[..., Tensor], output: Any, target: Tensor, marker: Marker) -> Tensor:
    """`loss_fn(output, target)` on a dataset's first batch (under `FitChecks.first_batch`),
    after checking the output against the targets; the class labels of every dataset of
    the run are checked against the head's width.

    Raises:
        ConfigError: naming the task, dataset and split, the mismatch and the fix; also
            when the loss warns that it broadcasts the output against the targets.
    """
    state = _first_batch.get()
    if state is None:
        raise RuntimeError("first_batch_loss runs only under FitChecks.first_batch")
    where = _where(task, state.dataset)
    if isinstance(output, Tensor):
        _check_output(where, task, loss_fn, output, target, marker, state.datasets)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = loss_fn(output, target)
    for warning in caught:
        if "different to the input size" in str(warning.message):  # torch's broadcasting warning
            shapes = f" ({tuple(output.shape)} against {tuple(target.shape)})" if isinstance(output, Tensor) else ""
            raise ConfigError(
                f"{where}: the loss broadcasts the head's output against the targets{shapes}, which pairs every "
                "output with every target; make the head output one value per target, e.g. squeeze its trailing 1"
            )
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return loss


def _where(task: str, dataset: Any) -> str:
    return f"task {task!r} on dataset {getattr(dataset, 'name', '?')!r} (split {getattr(dataset, 'split', '?')!r})"


def _check_output(
    where: str,
    task: str,
    loss_fn: Callable[..., Tensor],
    output: Tensor,
    target: Tensor,
    marker: Marker,
    datasets: Sequence[Any],
) -> None:
    kind, name = loss_kind(loss_fn), _loss_name(loss_fn)
    out, tgt = tuple(output.shape), tuple(target.shape)
    if target.is_floating_point():
        if kind == "class" and tgt != out:
            raise ConfigError(
                f"{where}: the labels are floating point ({target.dtype}, shape {tgt}) but {name} takes integer "
                f"class indices; convert them with .long() (-1 = no label), or give class probabilities of the "
                f"output's shape {out}"
            )
        if kind == "elementwise" and tgt != out:
            raise ConfigError(
                f"{where}: the head outputs shape {out} but the targets have shape {tgt}; {name} needs equal "
                "shapes (it would broadcast them); make the head output one value per target"
            )
        return
    if kind == "elementwise":
        raise ConfigError(
            f"{where}: the targets are {target.dtype} but {name} is a loss on floating-point targets; give float "
            "targets (NaN = no label), or a classification loss such as cross_entropy for class labels"
        )
    if kind != "class":
        return
    if target.dim() == 2 and target.shape[1] == 1 and output.dim() == 2:
        raise ConfigError(
            f"{where}: the class labels have shape {tgt}; give 1-D class indices of shape ({tgt[0]},), "
            "e.g. labels.view(-1)"
        )
    if output.dim() != 2 or target.dim() != 1:
        return  # other layouts (sequences, images) are left to the loss
    classes = output.shape[1]
    _check_class_range(where, name, classes, target, marker)
    for dataset in datasets:  # once per training dataset, so that a class the first batch lacks is seen too
        labels = _class_labels(dataset, task, marker)
        if labels is not None:
            _check_class_range(_where(task, dataset), name, classes, labels, marker)


def _check_class_range(where: str, name: str, classes: int, labels: Tensor, marker: Marker) -> None:
    if classes < 2:
        raise ConfigError(
            f"{where}: the head outputs {classes} score per row but {name} needs one per class (at least 2); "
            "widen the head, or for one logit per row use binary_cross_entropy_with_logits with float 0/1 targets"
        )
    if len(labels) == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low >= 0 and high >= classes:
        raise ConfigError(
            f"{where}: the labels go up to class {high} but the head outputs {classes} scores per row (classes "
            f"0..{classes - 1}); give the head {high + 1} outputs, one per class"
        )
    if low < 0 or high >= classes:
        bad = sorted(labels[(labels < 0) | (labels >= classes)].unique().tolist())
        raise ConfigError(
            f"{where}: class labels must lie in [0, {classes}) or be {resolve(labels, marker)} (no label); found "
            f"{bad[:5]}{' ...' if len(bad) > 5 else ''}; remap them to 0..{classes - 1}"
        )


def _class_labels(dataset: Any, task: str, marker: Marker) -> Tensor | None:
    """The dataset's labelled class labels of `task` where it holds them as one 1-D integer tensor."""
    labels = getattr(dataset, "Y_dict", {}).get(task)
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point():
        return None
    return labels[~missing(labels, marker)]


def loss_kind(loss_fn: Any) -> str | None:
    """The kind of a torch loss: "class" (class-index losses), "elementwise", or None (any other)."""
    while isinstance(loss_fn, functools.partial):
        loss_fn = loss_fn.func
    kind = _LOSS_KINDS.get(type(loss_fn))  # a loss module
    if kind is None and isinstance(loss_fn, FunctionType):
        kind = _LOSS_KINDS.get(loss_fn)
    return kind


def _loss_name(loss_fn: Any) -> str:
    while isinstance(loss_fn, functools.partial):
        loss_fn = loss_fn.func
    return getattr(loss_fn, "__name__", type(loss_fn).__name__)


# --- before the first epoch ---------------------------------------------------------------


def _no_empty_dataset(loaders: Sequence[Any]) -> None:
    for loader in loaders:
        dataset = loader.dataset
        if len(dataset) == 0:
            raise ConfigError(
                f"dataset {dataset.name!r} has no rows in its {dataset.split!r} split; give that split rows, "
                "or leave its dataloader out of fit()"
            )


def _warn_untrained_tasks(model: Any, train: Sequence[Any]) -> None:
    scorers = model.scorers()
    for task in model.task_names:
        if task not in scorers:
            continue  # not scored: an untrained head reports nothing misleading
        marker = marker_of(scorers[task])
        targets = [getattr(loader.dataset, "Y_dict", {}).get(task) for loader in train]
        count = sum(_count_labelled(y, marker) for y in targets if y is not None)
        if count == 0:
            names = sorted({f"{loader.dataset.name}/{loader.dataset.split}" for loader in train})
            warnings.warn(
                f"task {task!r} has no labelled row in the training data ({', '.join(names)}): its head is never "
                "trained, yet it is scored; label some training rows for it, or remove the task",
                UserWarning,
                stacklevel=3,
            )


def _count_labelled(targets: Any, marker: Marker) -> int:
    if not isinstance(targets, Tensor):
        return len(targets)  # ragged labels (a list of tensors): counted as labelled
    return int(labelled_rows(targets, marker).sum())


def _check_checkpoint_metric(key: str, model: Any, train: Sequence[Any], valid: Sequence[Any]) -> None:
    """Raise before training when `key` is none of the scores an evaluation will hold."""
    from mtlkit.metrics import labels_to_tasks

    known = {"model/all/train/loss"}
    open_prefixes = set()  # scores of custom metric functions, whose keys are known only once computed
    for loader in train:
        dataset = loader.dataset
        known.update(
            f"{t}/{dataset.name}/{dataset.split}/loss" for t in getattr(dataset, "Y_dict", {}) if t in model.task_names
        )
    scorers = model.scorers()
    for loader in valid:
        dataset = loader.dataset
        for label, task in labels_to_tasks(getattr(dataset, "Y_dict", {}), model.task_names).items():
            scorer = scorers.get(task)
            if scorer is None or _count_labelled(dataset.Y_dict[label], marker_of(scorer)) == 0:
                continue  # not scored
            prefix = f"{label}/{dataset.name}/{dataset.split}"
            known.update(f"{prefix}/{metric}" for metric in getattr(scorer, "metrics", []))
            if getattr(scorer, "custom_metric_funcs", None):
                open_prefixes.add(prefix)
    if key in known or key.rsplit("/", 1)[0] in open_prefixes:
        return
    close = difflib.get_close_matches(key, sorted(known), n=5, cutoff=0.4)
    raise ConfigError(
        f"checkpoint_metric {key!r} is none of the scores this run computes after each epoch (the training losses "
        f"and the metrics of the validation split); {'close keys' if close else 'they are'}: "
        f"{', '.join(map(repr, close or sorted(known)))}"
    )
