"""Scoring: the per-task `Scorer`, the MTL summary `delta_m`, and the model scoring loop.

`predict` and `score` drive any model that follows `mtlkit.protocol.MultiTaskModel`
(`task_names`, `task_outputs(X, task_names)`, `scorers()`), so `MultitaskClassifier`,
`MTLModel` and the architectures share one loop. Scores are keyed
`label/dataset/split/metric` as in Snorkel.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mtlkit.data.loader import move_to_device
from mtlkit.labels import AUTO, NO_CLASS, NO_VALUE, Marker, labelled_rows, missing

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


def _torchmetrics() -> Any:
    # Imported on first use: `import torchmetrics` pulls in scipy and matplotlib when they are
    # installed, which would more than double the time of `import mtlkit`.
    import torchmetrics.functional

    return torchmetrics.functional


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
    (for 2-D golds, rows where every entry is the abstain label). Its default,
    ``"auto"``, is mtlkit's label convention (`mtlkit.labels`): -1 for a classification
    scorer, NaN for a regression scorer (so a real target of -1.0 is scored), and by
    the golds' dtype for a scorer with custom metrics only. For classification, rows
    whose prediction is the abstain label are dropped as well, except for `coverage`,
    the fraction of labelled rows with a non-abstain prediction. `abstain_label=None`
    keeps all rows. The front doors leave the same rows out of the task's loss.

    Custom functions `f(golds, preds, probs)` get NumPy arrays (Snorkel's contract, so
    scikit-learn functions plug in; preds/probs may be None) after gold abstains are
    dropped, and return a float (reported under their name) or a dict of floats.
    """

    def __init__(
        self,
        metrics: Sequence[str] | None = None,
        custom_metric_funcs: Mapping[str, CustomMetric] | None = None,
        abstain_label: Marker = AUTO,
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
        if isinstance(abstain_label, str) and abstain_label == AUTO and self.metrics:
            abstain_label = NO_VALUE if self.is_regression else NO_CLASS
        self.abstain_label = abstain_label
        self.beta = beta

    def __repr__(self) -> str:
        return f"Scorer(metrics={self.metrics}, custom_metric_funcs={list(self.custom_metric_funcs)}, abstain_label={self.abstain_label})"

    def _is_abstain(self, values: Tensor) -> Tensor:
        return missing(values, self.abstain_label)

    def labelled(self, golds: Any) -> Tensor:
        """Boolean mask of the rows of `golds` that are not abstains."""
        return labelled_rows(_as_tensor("golds", golds), self.abstain_label)  # type: ignore[arg-type]

    def score(self, golds: Any, preds: Any = None, probs: Any = None) -> dict[str, float]:
        """Every metric of this scorer on one task's golds/preds/probs (tensors, arrays or lists)."""
        golds, preds, probs = _as_tensor("golds", golds), _as_tensor("preds", preds), _as_tensor("probs", probs)
        if len(golds) == 0:
            raise ValueError("Cannot score empty labels")
        for name, values in (("preds", preds), ("probs", probs)):
            if values is not None and len(values) != len(golds):
                raise ValueError(f"Scorer: {name} has {len(values)} rows but golds has {len(golds)}")
        keep = self.labelled(golds)
        if not keep.any():
            raise ValueError(f"Scorer: every gold label is the abstain label {self.abstain_label}; nothing to score")
        golds, preds, probs = (None if v is None else v[keep.to(v.device)] for v in (golds, preds, probs))
        results: dict[str, float] = {}
        if self.metrics:
            compute = self._regression if self.is_regression else self._classification
            results.update(compute(golds, preds, probs))
        arrays = [None if v is None else v.detach().cpu().numpy() for v in (golds, preds, probs)]
        for name, func in self.custom_metric_funcs.items():
            results.update(_custom_result(name, func(*arrays)))
        return results

    def _classification(self, golds: Tensor, preds: Tensor | None, probs: Tensor | None) -> dict[str, float]:
        golds = _as_labels("golds", golds)
        if preds is None:
            if probs is None or probs.dim() != 2:
                raise ValueError("Scorer: classification metrics need preds, or probs of shape [n, num_classes]")
            preds = probs.argmax(dim=1)
        preds = _as_labels("preds", preds).to(golds.device)
        answered = ~self._is_abstain(preds)
        coverage = float(answered.double().mean())
        golds, preds = golds[answered], preds[answered]
        probs = None if probs is None else probs[answered.to(probs.device)].to(golds.device)
        num_classes = self._num_classes(golds, preds, probs)
        results = {}
        for metric in self.metrics:
            if metric == "coverage":
                results[metric] = coverage
                continue
            if len(golds) == 0:
                raise ValueError(f"Scorer: every prediction is the abstain label {self.abstain_label}; cannot compute {metric}")
            results[metric] = _as_float(self._classification_metric(metric, golds, preds, probs, num_classes))
        return results

    @staticmethod
    def _num_classes(golds: Tensor, preds: Tensor, probs: Tensor | None) -> int:
        if probs is not None and probs.dim() == 2:
            num_classes = probs.shape[1]
        else:
            num_classes = max(2, 1 + int(torch.cat([golds, preds]).max()) if len(golds) else 2)
        for name, values in (("golds", golds), ("preds", preds)):
            if len(values) and (values.min() < 0 or values.max() >= num_classes):
                raise ValueError(
                    f"Scorer: {name} hold labels in [{int(values.min())}, {int(values.max())}] but there are "
                    f"{num_classes} classes; labels must lie in [0, {num_classes - 1}] (is the abstain label right?)"
                )
        return num_classes

    def _classification_metric(
        self, metric: str, golds: Tensor, preds: Tensor, probs: Tensor | None, num_classes: int
    ) -> Tensor:
        tmc = _torchmetrics().classification
        binary = num_classes == 2
        if metric == "accuracy":
            return tmc.multiclass_accuracy(preds, golds, num_classes, average="micro")
        if metric == "f1_micro":
            return tmc.multiclass_f1_score(preds, golds, num_classes, average="micro")
        if metric == "f1_macro":
            return tmc.multiclass_f1_score(preds, golds, num_classes, average="macro")
        if metric == "matthews_corrcoef":
            return tmc.binary_matthews_corrcoef(preds, golds) if binary else tmc.multiclass_matthews_corrcoef(preds, golds, num_classes)
        if metric == "roc_auc":
            return self._roc_auc(golds, probs, num_classes)
        if metric == "fbeta":
            if binary:
                return tmc.binary_fbeta_score(preds, golds, beta=self.beta)
            return tmc.multiclass_fbeta_score(preds, golds, beta=self.beta, num_classes=num_classes, average="macro")
        binary_funcs = {"precision": tmc.binary_precision, "recall": tmc.binary_recall, "f1": tmc.binary_f1_score}
        multiclass_funcs = {"precision": tmc.multiclass_precision, "recall": tmc.multiclass_recall, "f1": tmc.multiclass_f1_score}
        if binary:
            return binary_funcs[metric](preds, golds)
        return multiclass_funcs[metric](preds, golds, num_classes, average="macro")

    @staticmethod
    def _roc_auc(golds: Tensor, probs: Tensor | None, num_classes: int) -> Tensor:
        tmc = _torchmetrics().classification
        if probs is None:
            raise ValueError("Scorer: metric 'roc_auc' needs probs")
        missing = sorted(set(range(num_classes)) - set(golds.unique().tolist()))
        if missing:
            # torchmetrics would return a meaningless 0 here; scikit-learn raises too
            raise ValueError(f"Scorer: roc_auc is undefined when gold labels lack classes {missing} of {num_classes}")
        probs = probs.float()
        rows_sum_to_one = probs.dim() == 1 or bool(torch.allclose(probs.sum(dim=1), torch.ones(len(probs)), atol=1e-3))
        if not rows_sum_to_one or bool(((probs < 0) | (probs > 1)).any()):
            # AUC of raw logits ranks by the wrong score (logit 1, not P(class 1)): refuse
            raise ValueError(
                "Scorer: roc_auc needs probabilities (values in [0, 1], rows summing to 1) but got what look "
                "like logits; give the task an output function: Task(output_func=...), an architecture's "
                "output_funcs={task: softmax}, or an MTLModel entry's 'output'"
            )
        if probs.dim() == 1:
            return tmc.binary_auroc(probs, golds)
        if num_classes == 2:
            return tmc.binary_auroc(probs[:, 1], golds)
        return tmc.multiclass_auroc(probs, golds, num_classes, average="macro")

    def _regression(self, golds: Tensor, preds: Tensor | None, probs: Tensor | None) -> dict[str, float]:
        values = preds if preds is not None else probs
        if values is None:
            raise ValueError("Scorer: regression metrics need preds (or probs holding the predicted values)")
        dtype = torch.promote_types(torch.promote_types(values.dtype, golds.dtype), torch.float32)
        values, golds = values.to(golds.device, dtype), golds.to(dtype)
        if values.dim() == golds.dim() + 1 and values.shape[-1] == 1:
            values = values.squeeze(-1)
        if values.shape != golds.shape:
            raise ValueError(f"Scorer: regression preds of shape {tuple(values.shape)} do not match golds of shape {tuple(golds.shape)}")
        tmf = _torchmetrics()
        funcs = {"mse": tmf.mean_squared_error, "mae": tmf.mean_absolute_error, "r2": tmf.r2_score}
        return {metric: _as_float(funcs[metric](values, golds)) for metric in self.metrics}


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
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset.name!r} has no rows in its {dataset.split!r} split: nothing to score")
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
        results["preds"] = {label: _predictions(label, probs[label], task_scorers.get(task)) for label, task in mapping.items()}
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
