"""Scoring: the per-task `Scorer`, the MTL summary `delta_m`, and the model scoring loop.

`predict` and `score` drive any model that follows `mtlkit.training.protocol.MultiTaskModel`
(`task_names`, `task_outputs(X, task_names)`, `scorers()`), so `MultitaskClassifier`,
`MTLModel` and the architectures share one loop. Scores are keyed
`label/dataset/split/metric` as in Snorkel.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mtlkit.data.loader import move_to_device

CLASSIFICATION_METRICS = (
    "accuracy",
    "coverage",
    "precision",
    "recall",
    "f1",
    "f1_micro",
    "f1_macro",
    "fbeta",
    "matthews_corrcoef",
    "roc_auc",
)
REGRESSION_METRICS = ("mse", "mae", "r2")
METRICS = CLASSIFICATION_METRICS + REGRESSION_METRICS

HIGHER_IS_BETTER: dict[str, bool] = {name: True for name in CLASSIFICATION_METRICS} | {
    "mse": False,
    "mae": False,
    "r2": True,
}

CustomMetric = Callable[..., Any]  # (golds, preds, probs) as NumPy arrays -> float or {name: float}


def _as_float(value: Tensor) -> float:
    """A metric tensor as a Python float; float32 values (torchmetrics' precision) are given
    as the shortest decimal that identifies them, so 3/5 reads 0.6, not 0.6000000238."""
    if value.dtype == torch.float32:
        return float(str(np.float32(value.item())))
    return float(value)


def _as_tensor(name: str, values: Any) -> Tensor | None:
    if values is None:
        return None
    try:
        return torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"Scorer: cannot turn {name} of type {type(values).__name__} into a tensor") from error


def _as_labels(name: str, values: Tensor) -> Tensor:
    if values.dim() != 1:
        raise ValueError(
            f"Scorer: classification {name} must be 1-D class indices, got shape {tuple(values.shape)}; "
            f"take the argmax of probabilistic labels first, or use regression metrics."
        )
    if values.is_floating_point():
        if not torch.equal(values, values.round()):
            raise ValueError(f"Scorer: classification {name} must be integer class indices, got non-integral values")
    return values.long()


class Scorer:
    """Computes named metrics from gold labels, predictions and probabilities (Snorkel's API).

    Metrics are computed with `torchmetrics`. Classification: `accuracy`, `coverage`,
    `precision`, `recall`, `f1`, `fbeta` (with `beta`), `f1_micro`, `f1_macro`,
    `matthews_corrcoef`, `roc_auc`. Regression: `mse`, `mae`, `r2`; a scorer holds
    one kind only, and `is_regression` says which.

    Binary vs multiclass is decided by the number of classes C: the width of `probs`
    when given, else 1 + the largest label in golds/preds (at least 2). With C = 2,
    precision/recall/f1/fbeta are those of class 1 and roc_auc uses `probs[:, 1]` (or
    1-D probs as class-1 scores). With C > 2 (where Snorkel's `f1` fails), precision,
    recall, f1 and fbeta are macro averages over the classes present in golds or
    preds (scikit-learn's `average="macro"`), roc_auc is the macro one-vs-rest AUC,
    `f1_micro` equals accuracy. `f1_micro`/`f1_macro` treat C = 2 as two classes.

    Abstains: rows whose gold equals `abstain_label` are dropped for every metric
    (for 2-D golds, rows where every entry is the abstain label; `float("nan")`
    marks missing regression targets). For classification, rows whose prediction is
    the abstain label are dropped as well, except for `coverage`, the fraction of
    labelled rows with a non-abstain prediction. `abstain_label=None` keeps all rows.

    Custom functions `f(golds, preds, probs)` get NumPy arrays (Snorkel's contract, so
    scikit-learn functions plug in; preds/probs may be None) after gold abstains are
    dropped, and return a float (reported under their name) or a dict of floats.
    """

    def __init__(
        self,
        metrics: Sequence[str] | None = None,
        custom_metric_funcs: Mapping[str, CustomMetric] | None = None,
        abstain_label: int | float | None = -1,
        *,
        beta: float = 1.0,
    ) -> None:
        self.metrics = list(metrics or [])
        for metric in self.metrics:
            if metric not in METRICS:
                raise ValueError(f"Unrecognized metric {metric!r}; choose from {list(METRICS)} or pass custom_metric_funcs")
        kinds = {metric in REGRESSION_METRICS for metric in self.metrics}
        if len(kinds) > 1:
            raise ValueError(
                f"Scorer metrics {self.metrics} mix classification and regression metrics; "
                f"a task is one or the other: use {list(REGRESSION_METRICS)} for regression"
            )
        self.is_regression = kinds == {True}
        self.custom_metric_funcs = dict(custom_metric_funcs or {})
        self.abstain_label = abstain_label
        self.beta = beta

    def __repr__(self) -> str:
        return f"Scorer(metrics={self.metrics}, custom_metric_funcs={list(self.custom_metric_funcs)}, abstain_label={self.abstain_label})"

    def _is_abstain(self, values: Tensor) -> Tensor:
        if self.abstain_label is None:
            return torch.zeros(values.shape, dtype=torch.bool, device=values.device)
        if isinstance(self.abstain_label, float) and math.isnan(self.abstain_label):
            return torch.isnan(values) if values.is_floating_point() else torch.zeros_like(values, dtype=torch.bool)
        return values == self.abstain_label

    def labelled(self, golds: Any) -> Tensor:
        """Boolean mask of the rows of `golds` that are not abstains."""
        golds = _as_tensor("golds", golds)
        abstain = self._is_abstain(golds)
        return ~abstain if golds.dim() <= 1 else ~abstain.flatten(1).all(dim=1)

    def score(self, golds: Any, preds: Any = None, probs: Any = None) -> dict[str, float]:
        """Every metric of this scorer on one task's golds/preds/probs (tensors, arrays or lists)."""
        golds, preds, probs = _as_tensor("golds", golds), _as_tensor("preds", preds), _as_tensor("probs", probs)
        if len(golds) == 0:
            raise ValueError("Cannot score empty labels")
        for name, values in (("preds", preds), ("probs", probs)):
            if values is not None and len(values) != len(golds):
                raise ValueError(f"Scorer: {name} has {len(values)} rows but golds has {len(golds)}")
        state = self.state(self.num_classes(golds, preds, probs))
        state.update(golds, preds, probs)
        return state.compute()

    def num_classes(self, golds: Any, preds: Any = None, probs: Any = None) -> int | None:
        """The number of classes C these rows imply (None for a regression scorer or one without metrics).

        The width of `probs` when given, else 1 + the largest label in golds/preds (at least 2).
        """
        if self.is_regression or not self.metrics:
            return None
        golds, preds, probs = _as_tensor("golds", golds), _as_tensor("preds", preds), _as_tensor("probs", probs)
        if probs is not None and probs.dim() == 2:
            return probs.shape[1]
        golds, preds, _ = self._answered(*self._labelled_rows(golds, preds, probs))
        return max(2, 1 + int(torch.cat([golds, preds]).max()) if len(golds) else 2)

    def state(self, num_classes: int | None) -> ScoreState:
        """An empty `ScoreState` of this scorer's metrics for `num_classes` classes (see `num_classes`)."""
        return ScoreState(self, num_classes)

    def _labelled_rows(self, golds: Tensor, preds: Tensor | None, probs: Tensor | None) -> tuple:
        """The rows whose gold is not an abstain."""
        keep = self.labelled(golds)
        return tuple(None if v is None else v[keep.to(v.device)] for v in (golds, preds, probs))

    def _answered(self, golds: Tensor, preds: Tensor | None, probs: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Classification rows whose prediction is not an abstain: golds, preds (argmax of probs if None), probs."""
        golds = _as_labels("golds", golds)
        if preds is None:
            if probs is None or probs.dim() != 2:
                raise ValueError("Scorer: classification metrics need preds, or probs of shape [n, num_classes]")
            preds = probs.argmax(dim=1)
        preds = _as_labels("preds", preds).to(golds.device)
        answered = ~self._is_abstain(preds)
        probs = None if probs is None else probs[answered.to(probs.device)].to(golds.device)
        return golds[answered], preds[answered], probs


class ScoreState:
    """One scorer's metric state over a stream of rows: `update` with batches, `sync` across processes, `compute`.

    The state is torchmetrics' (confusion counts, error sums; the rows themselves only for
    `roc_auc` and for custom metric functions, which need them) plus row counts, so the
    scores over a dataset split across processes are those over the whole: each process
    updates with its share, `sync` reduces the states (torchmetrics' sync), every process
    computes the same scores. `Scorer.score` is one update and a compute.
    """

    def __init__(self, scorer: Scorer, num_classes: int | None) -> None:
        if not scorer.is_regression and scorer.metrics and num_classes is None:
            raise ValueError("ScoreState: a classification scorer needs num_classes (Scorer.num_classes)")
        self.scorer = scorer
        self.num_classes = num_classes
        self.counts = torch.zeros(2, dtype=torch.float64)  # labelled rows, rows with a non-abstain prediction
        self.class_counts = torch.zeros(num_classes or 0, dtype=torch.float64)  # answered golds per class
        self.metrics = {name: self._metric(name) for name in scorer.metrics if name != "coverage"}
        self.rows: list[list[Tensor | None]] = []  # kept for custom metric functions only
        self.dtype: torch.dtype | None = None  # regression: the dtype the values are scored in

    def update(self, golds: Any, preds: Any = None, probs: Any = None) -> None:
        """Add rows (one task's golds, and preds and/or probs); gold abstains are left out."""
        scorer = self.scorer
        golds, preds, probs = _as_tensor("golds", golds), _as_tensor("preds", preds), _as_tensor("probs", probs)
        golds, preds, probs = scorer._labelled_rows(golds, preds, probs)
        self.counts[0] += len(golds)
        if scorer.custom_metric_funcs:
            self.rows.append([None if v is None else v.detach().cpu() for v in (golds, preds, probs)])
        if not scorer.metrics or len(golds) == 0:
            return
        if scorer.is_regression:
            self._update_regression(golds, preds, probs)
            return
        golds, preds, probs = scorer._answered(golds, preds, probs)
        self.counts[1] += len(golds)
        for name, values in (("golds", golds), ("preds", preds)):
            if len(values) and (values.min() < 0 or values.max() >= self.num_classes):
                raise ValueError(
                    f"Scorer: {name} hold labels in [{int(values.min())}, {int(values.max())}] but there are "
                    f"{self.num_classes} classes; labels must lie in [0, {self.num_classes - 1}] (is the abstain label right?)"
                )
        if len(golds) == 0:
            return
        self.class_counts += torch.bincount(golds.cpu(), minlength=self.num_classes).double()
        for name, metric in self.metrics.items():
            if name == "roc_auc":
                metric.update(*self._auroc_input(golds, probs))
            else:
                metric.update(preds.cpu(), golds.cpu())

    def sync(self) -> None:
        """Reduce the state over the processes of the default torch.distributed group (every one must call it)."""
        import torch.distributed as dist

        counts = torch.cat([self.counts, self.class_counts])
        dist.all_reduce(counts)
        self.counts, self.class_counts = counts[:2], counts[2:]
        if self.scorer.is_regression and self.metrics:
            # The dtype of the values decides the state's; a process without rows learns it here.
            dtypes: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(dtypes, self.dtype)
            self.dtype = next((d for d in dtypes if d is not None), None)
            for metric in self.metrics.values():
                metric.set_dtype(self.dtype or torch.float32)
        if "roc_auc" in self.metrics and not self.metrics["roc_auc"].target:
            # A process without rows: empty rows of the right dtypes (torchmetrics would gather float targets).
            auroc = self.metrics["roc_auc"]
            auroc.preds.append(torch.empty((0,) if self.num_classes == 2 else (0, self.num_classes)))
            auroc.target.append(torch.empty(0, dtype=torch.long))
        for metric in self.metrics.values():
            metric.sync(should_sync=True, distributed_available=lambda: True)
        if self.scorer.custom_metric_funcs:
            parts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, self.rows)
            self.rows = [rows for part in parts for rows in part]

    def compute(self) -> dict[str, float]:
        """The scores of every row added (and, after `sync`, of every process's rows)."""
        scorer = self.scorer
        labelled, answered = (int(n) for n in self.counts.tolist())
        if labelled == 0:
            raise ValueError(f"Scorer: every gold label is the abstain label {scorer.abstain_label}; nothing to score")
        results: dict[str, float] = {}
        for name in scorer.metrics:
            if name == "coverage":
                results[name] = answered / labelled
                continue
            if not scorer.is_regression and answered == 0:
                raise ValueError(f"Scorer: every prediction is the abstain label {scorer.abstain_label}; cannot compute {name}")
            if name == "roc_auc":
                missing = [c for c, n in enumerate(self.class_counts.tolist()) if n == 0]
                if missing:
                    # torchmetrics would return a meaningless 0 here; scikit-learn raises too
                    raise ValueError(f"Scorer: roc_auc is undefined when gold labels lack classes {missing} of {self.num_classes}")
            results[name] = _as_float(self.metrics[name].compute())
        if scorer.custom_metric_funcs:
            columns = [[row[k] for row in self.rows] for k in range(3)]
            arrays = [None if any(v is None for v in col) else torch.cat(col).numpy() for col in columns]
            for name, func in scorer.custom_metric_funcs.items():
                results.update(_custom_result(name, func(*arrays)))
        return results

    def _metric(self, name: str) -> Any:
        """The torchmetrics object that computes `name` (the scorer's binary/multiclass choice by num_classes)."""
        import torchmetrics.classification as tmc
        import torchmetrics.regression as tmr

        if self.scorer.is_regression:
            return {"mse": tmr.MeanSquaredError, "mae": tmr.MeanAbsoluteError, "r2": tmr.R2Score}[name](sync_on_compute=False)
        C, beta, options = self.num_classes, self.scorer.beta, {"sync_on_compute": False}
        binary = C == 2
        if name == "accuracy":
            return tmc.MulticlassAccuracy(C, average="micro", **options)
        if name in ("f1_micro", "f1_macro"):
            return tmc.MulticlassF1Score(C, average=name[3:], **options)
        if name == "matthews_corrcoef":
            return tmc.BinaryMatthewsCorrCoef(**options) if binary else tmc.MulticlassMatthewsCorrCoef(C, **options)
        if name == "roc_auc":
            return tmc.BinaryAUROC(**options) if binary else tmc.MulticlassAUROC(C, average="macro", **options)
        if name == "fbeta":
            if binary:
                return tmc.BinaryFBetaScore(beta, **options)
            return tmc.MulticlassFBetaScore(beta, C, average="macro", **options)
        if binary:
            return {"precision": tmc.BinaryPrecision, "recall": tmc.BinaryRecall, "f1": tmc.BinaryF1Score}[name](**options)
        classes = {"precision": tmc.MulticlassPrecision, "recall": tmc.MulticlassRecall, "f1": tmc.MulticlassF1Score}
        return classes[name](C, average="macro", **options)

    def _auroc_input(self, golds: Tensor, probs: Tensor | None) -> tuple[Tensor, Tensor]:
        """(scores, golds) for the AUROC metric, refusing what is not probabilities."""
        if probs is None:
            raise ValueError("Scorer: metric 'roc_auc' needs probs")
        probs = probs.float().cpu()
        rows_sum_to_one = probs.dim() == 1 or bool(torch.allclose(probs.sum(dim=1), torch.ones(len(probs)), atol=1e-3))
        if not rows_sum_to_one or bool(((probs < 0) | (probs > 1)).any()):
            # AUC of raw logits ranks by the wrong score (logit 1, not P(class 1)): refuse
            raise ValueError(
                "Scorer: roc_auc needs probabilities (values in [0, 1], rows summing to 1) but got what look "
                "like logits; give the task an output function: Task(output_func=...), an architecture's "
                "output_funcs={task: softmax}, or an MTLModel entry's 'output'"
            )
        if probs.dim() == 2 and self.num_classes == 2:
            probs = probs[:, 1]
        return probs, golds.cpu()

    def _update_regression(self, golds: Tensor, preds: Tensor | None, probs: Tensor | None) -> None:
        values = preds if preds is not None else probs
        if values is None:
            raise ValueError("Scorer: regression metrics need preds (or probs holding the predicted values)")
        dtype = torch.promote_types(torch.promote_types(values.dtype, golds.dtype), torch.float32)
        values, golds = values.to(golds.device, dtype), golds.to(dtype)
        if values.dim() == golds.dim() + 1 and values.shape[-1] == 1:
            values = values.squeeze(-1)
        if values.shape != golds.shape:
            raise ValueError(f"Scorer: regression preds of shape {tuple(values.shape)} do not match golds of shape {tuple(golds.shape)}")
        if self.dtype != dtype:
            self.dtype = torch.promote_types(self.dtype, dtype) if self.dtype is not None else dtype
            for metric in self.metrics.values():
                metric.set_dtype(self.dtype)
        for metric in self.metrics.values():
            metric.update(values.cpu(), golds.cpu())


def _custom_result(name: str, value: Any) -> dict[str, float]:
    items = value.items() if isinstance(value, Mapping) else [(name, value)]
    results = {}
    for key, item in items:
        try:
            results[key] = float(item)
        except (TypeError, ValueError) as error:
            raise TypeError(f"custom metric {name!r} returned {key}={item!r}; return a float or a dict of floats") from error
    return results


def delta_m(
    results: Mapping[str, Mapping[str, float]],
    baselines: Mapping[str, Mapping[str, float]],
    higher_is_better: Mapping[str, bool] | Mapping[str, Mapping[str, bool]] | None = None,
) -> float:
    r"""The multi-task summary Δm, in percent (Maninis et al., 2019, https://arxiv.org/abs/1904.08918).

    .. math:: \Delta m = \frac{100}{T} \sum_{t=1}^{T} \frac{1}{|M_t|} \sum_{m \in M_t}
              s_{t,m} \, \frac{M_{t,m} - B_{t,m}}{|B_{t,m}|}

    where T is the number of tasks in `baselines`, M_t the metrics of task t in
    `baselines[t]`, M the multi-task result, B the (single-task) baseline and
    s = +1 when higher is better, -1 otherwise. Each task weighs the same however many
    metrics it has (LibMTL's convention). Departure: the denominator is |B| so that a
    negative baseline (r2, MCC) keeps the sign meaning "better". `higher_is_better` is
    keyed by metric name (`{"mse": False}`) or by task then metric; when None, the
    direction of the built-in metric names is used. Extra entries in `results` are
    ignored.
    """
    if not baselines:
        raise ValueError("delta_m: baselines is empty; give {task: {metric: value}} for at least one task")
    task_gains = []
    for task, task_baselines in baselines.items():
        if not task_baselines:
            raise ValueError(f"delta_m: baselines[{task!r}] has no metrics")
        if task not in results:
            raise ValueError(f"delta_m: results have no task {task!r}, but baselines do")
        gains = []
        for metric, baseline in task_baselines.items():
            if metric not in results[task]:
                raise ValueError(f"delta_m: results[{task!r}] has no metric {metric!r}, but baselines do")
            baseline = float(baseline)
            if baseline == 0:
                raise ValueError(f"delta_m: baseline {task}/{metric} is 0; a relative gain over it is undefined")
            sign = 1.0 if _higher_is_better(higher_is_better, task, metric) else -1.0
            gains.append(sign * (float(results[task][metric]) - baseline) / abs(baseline))
        task_gains.append(sum(gains) / len(gains))
    return 100.0 * sum(task_gains) / len(task_gains)


def _higher_is_better(directions: Mapping[str, Any] | None, task: str, metric: str) -> bool:
    if directions is None:
        if metric not in HIGHER_IS_BETTER:
            raise ValueError(f"delta_m: no known direction for metric {metric!r} of task {task!r}; pass higher_is_better")
        return HIGHER_IS_BETTER[metric]
    by_metric = directions[task] if isinstance(directions.get(task), Mapping) else directions
    if metric not in by_metric:
        raise ValueError(f"delta_m: higher_is_better says nothing about {task}/{metric}; add {metric!r}: True/False")
    return bool(by_metric[metric])


# --- the scoring loop shared by every model kind ---------------------------------------


def labels_to_tasks(
    label_names: Iterable[str], task_names: Iterable[str], remap_labels: Mapping[str, str | None] | None = None
) -> dict[str, str]:
    """Which task scores each label: the task of the same name, unless `remap_labels`
    maps the label to another task or to None (then the label is not scored)."""
    task_names = set(task_names)
    remap_labels = remap_labels or {}
    mapping = {}
    for label in label_names:
        if label in remap_labels:
            task = remap_labels[label]
        else:
            task = label if label in task_names else None
        if task is None:
            continue
        if task not in task_names:
            raise ValueError(f"remap_labels maps label {label!r} to task {task!r}, which the model does not have; tasks: {sorted(task_names)}")
        mapping[label] = task
    return mapping


def _model_device(model: Any) -> torch.device | None:
    if isinstance(model, nn.Module):
        parameter = next(model.parameters(), None)
        return None if parameter is None else parameter.device
    return None


def _dataset_of(dataloader: DataLoader) -> Any:
    dataset = dataloader.dataset
    for attribute in ("name", "split", "Y_dict"):
        if not hasattr(dataset, attribute):
            raise TypeError(
                f"scoring needs dataloaders over a DictDataset (with name, split, Y_dict); "
                f"got a dataset of type {type(dataset).__name__} without {attribute!r}"
            )
    return dataset


def _collect(model: Any, dataloader: DataLoader, mapping: Mapping[str, str]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Gold labels and task outputs of every labelled task over one dataloader (no grad, eval mode)."""
    tasks = list(dict.fromkeys(mapping.values()))
    golds: dict[str, list[Tensor]] = defaultdict(list)
    outputs: dict[str, list[Tensor]] = defaultdict(list)
    device = _model_device(model)
    was_training = model.training if isinstance(model, nn.Module) else None
    if was_training is not None:
        model.eval()
    try:
        with torch.no_grad():
            for X, Y in dataloader:
                if device is not None:
                    X = move_to_device(X, device)
                task_outputs = model.task_outputs(X, tasks) if tasks else {}
                for label, task in mapping.items():
                    if task not in task_outputs:
                        raise KeyError(f"task_outputs returned no output for task {task!r} (label {label!r})")
                    output, gold = task_outputs[task].detach(), Y[label].to(task_outputs[task].device)
                    if gold.dim() == 2 and output.dim() == 3:  # token-level task: one row per position
                        gold, output = gold.reshape(-1), output.reshape(-1, output.shape[-1])
                    if len(gold) != len(output):
                        raise ValueError(
                            f"label {label!r} has {len(gold)} rows in a batch of dataset {dataloader.dataset.name!r} "
                            f"but task {task!r} returned {len(output)}; outputs need one row per label row"
                        )
                    golds[label].append(gold)
                    outputs[label].append(output)
    finally:
        if was_training is not None:
            model.train(was_training)
    return {k: torch.cat(v) for k, v in golds.items()}, {k: torch.cat(v) for k, v in outputs.items()}


def _predictions(label: str, outputs: Tensor, scorer: Scorer | None) -> Tensor:
    if scorer is not None and scorer.is_regression:
        return outputs
    if outputs.dim() < 2:
        raise ValueError(
            f"task outputs for label {label!r} are 1-D; a classifier's outputs must be [n, num_classes] "
            f"probabilities (give the task a regression Scorer if it predicts values)"
        )
    return outputs.argmax(dim=-1)


def predict(
    model: Any,
    dataloader: DataLoader,
    return_preds: bool = False,
    remap_labels: Mapping[str, str | None] | None = None,
    scorers: Mapping[str, Scorer] | None = None,
) -> dict[str, dict[str, Tensor]]:
    """Gold labels, task outputs and (with `return_preds`) predictions for one dataloader.

    Returns Snorkel's `{"golds": {label: Tensor}, "probs": {label: Tensor}, "preds": {...}}`,
    keyed by label name, tensors on the model's output device. Predictions are the argmax
    of the outputs, or the outputs themselves for tasks whose Scorer is a regression
    scorer (`scorers` overrides `model.scorers()`).
    """
    dataset = _dataset_of(dataloader)
    mapping = labels_to_tasks(dataset.Y_dict.keys(), model.task_names, remap_labels)
    golds, probs = _collect(model, dataloader, mapping)
    results = {"golds": golds, "probs": probs}
    if return_preds:
        task_scorers = dict(model.scorers()) if scorers is None else dict(scorers)
        results["preds"] = {
            label: _predictions(label, probs[label], task_scorers.get(task))
            for label, task in mapping.items()
            if label in probs  # none for an empty loader
        }
    return results


def score(
    model: Any,
    dataloaders: Sequence[DataLoader],
    remap_labels: Mapping[str, str | None] | None = None,
    as_dataframe: bool = False,
    scorers: Mapping[str, Scorer] | None = None,
) -> dict[str, float] | Any:
    """Score every labelled task of every dataloader: `{"label/dataset/split/metric": value}`.

    Tasks use `model.scorers()` (or `scorers`); a task without a Scorer, or whose labels
    in a dataloader are all abstains, gets no entry. `as_dataframe=True` returns a
    pandas DataFrame with columns label, dataset, split, metric, score (pandas is optional).
    """
    task_scorers = dict(model.scorers()) if scorers is None else dict(scorers)
    scores: dict[str, float] = {}
    seen: set[tuple[str, str]] = set()
    for dataloader in dataloaders:
        dataset = _dataset_of(dataloader)
        if (dataset.name, dataset.split) in seen:
            raise ValueError(f"two dataloaders both score as dataset {dataset.name!r}, split {dataset.split!r}; give them different names")
        seen.add((dataset.name, dataset.split))
        mapping = labels_to_tasks(dataset.Y_dict.keys(), model.task_names, remap_labels)
        results = predict(model, dataloader, return_preds=True, remap_labels=remap_labels, scorers=task_scorers)
        scores.update(score_predictions(results, mapping, task_scorers, f"{dataset.name}/{dataset.split}"))
    return _to_dataframe(scores) if as_dataframe else scores


def score_predictions(
    results: Mapping[str, Mapping[str, Tensor]],
    mapping: Mapping[str, str],
    scorers: Mapping[str, Scorer],
    where: str,
) -> dict[str, float]:
    """Score `predict`'s golds/preds/probs: `{"label/<where>/metric": value}` for each label mapped to a task.

    A label without a Scorer for its task, without golds, or whose golds are all abstains gets no entry.
    """
    scores: dict[str, float] = {}
    for label, task in mapping.items():
        scorer = scorers.get(task)
        golds = results["golds"].get(label)
        if scorer is None or golds is None or not scorer.labelled(golds).any():
            continue
        for metric, value in scorer.score(golds, results["preds"].get(label), results["probs"].get(label)).items():
            scores[f"{label}/{where}/{metric}"] = value
    return scores


def _to_dataframe(scores: Mapping[str, float]) -> Any:
    try:
        import pandas as pd
    except ImportError as error:
        raise ImportError("as_dataframe=True needs pandas (pip install pandas), or leave as_dataframe=False for a dict") from error
    rows = [(*key.split("/", 3), value) for key, value in scores.items()]
    return pd.DataFrame(rows, columns=["label", "dataset", "split", "metric", "score"])
