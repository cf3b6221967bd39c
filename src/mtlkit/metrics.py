"""Scoring: the per-task `Scorer`, Snorkel's `metric_score`, the MTL summary `delta_m`, and
the model scoring loop.

`predict` and `score` drive any model that follows `mtlkit.protocol.MultiTaskModel`
(`task_names`, `task_outputs(X, task_names)`, `scorers()`), so `MultitaskClassifier`,
`MTLModel` and the architectures share one loop. Scores are keyed
`label/dataset/split/metric` as in Snorkel.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mtlkit.data.loader import move_to_device
from mtlkit.labels import AUTO, NO_CLASS, NO_VALUE, Marker, labelled_rows, missing, resolve
from mtlkit.utils import probs_to_preds

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


def _as_tensor(name: str, values: Any) -> Tensor | None:
    if values is None:
        return None
    if isinstance(values, np.ndarray):
        values = np.ascontiguousarray(values)  # torch cannot view negative strides (np.fliplr)
    try:
        return torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"Scorer: cannot turn {name} of type {type(values).__name__} into a tensor") from error


def _as_labels(name: str, values: Tensor) -> Tensor:
    if values.dim() == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.dim() != 1:
        raise ValueError(
            f"Input could not be converted to 1-D class indices: classification {name} has shape "
            f"{tuple(values.shape)}; take the argmax of probabilistic labels first, or use regression metrics."
        )
    if values.is_floating_point() and not torch.equal(values, values.round()):
        raise ValueError(
            f"Input contains at least one non-integer value: classification {name} must be integer class indices"
        )
    return values.long()


class Scorer:
    """Computes named metrics from gold labels, predictions and probabilities (Snorkel's API).

    Classification: `accuracy`, `coverage`, `precision`, `recall`, `f1`, `fbeta` (with
    `beta`), `f1_micro`, `f1_macro`, `matthews_corrcoef`, `roc_auc`. Regression: `mse`,
    `mae`, `r2`; a scorer holds one kind only, and `is_regression` says which. Values
    are Python floats computed in float64 from a `ScoreState`'s sufficient statistics
    (the confusion matrix; per-output error and target sums for regression), except
    `roc_auc`: torchmetrics' AUROC (imported when first scored) of the float64
    probabilities, which it accumulates in float32 (within 1e-6 of scikit-learn's).

    Classes: every label in golds or preds, plus 0..C-1 for probs of width C (0 and 1
    otherwise). With exactly the classes {0, 1}, precision/recall/f1/fbeta are those of
    class 1 and roc_auc uses `probs[:, 1]` (or 1-D probs as class-1 scores). With more
    (where Snorkel's `f1` fails), precision, recall, f1 and fbeta are macro averages over
    the classes present in golds or preds (scikit-learn's `average="macro"`), roc_auc is
    the macro one-vs-rest AUC, and `f1_micro` equals accuracy. A ratio with a zero
    denominator is 0, as in scikit-learn. Without preds, predictions come from probs by
    `mtlkit.utils.probs_to_preds` (ties broken as Snorkel does).

    Abstains: rows whose gold equals `abstain_label` are dropped for every metric
    (for 2-D golds, rows where every entry is the abstain label). Its default,
    ``"auto"``, is mtlkit's label convention (`mtlkit.labels`): -1 for a classification
    scorer, NaN for a regression scorer (so a real target of -1.0 is scored), and by
    the golds' dtype for a scorer with custom metrics only. For classification, rows
    whose prediction is the abstain label are dropped as well. `coverage` is the
    fraction of all rows whose prediction is not the abstain label (-1 when
    `abstain_label` is None), as in Snorkel. `abstain_label=None` scores every row, -1
    as an ordinary class. The front doors leave the same rows out of the task's loss.

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
                raise ValueError(
                    f"Unrecognized metric {metric!r}; choose from {list(METRICS)} or pass custom_metric_funcs"
                )
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
        state = self.state(self.num_classes(golds, preds, probs))
        state.update(golds, preds, probs)
        return state.compute()

    def num_classes(self, golds: Any, preds: Any = None, probs: Any = None) -> int | None:
        """The number of classes C these rows imply (None for a regression scorer or one without metrics).

        The width of 2-D `probs` when given, else 1 + the largest label of the labelled
        golds and of the preds (at least 2). Processes that score shares of one dataset
        agree on the largest C (`ScoreState`).
        """
        if self.is_regression or not self.metrics:
            return None
        golds, preds, probs = _as_tensor("golds", golds), _as_tensor("preds", preds), _as_tensor("probs", probs)
        if probs is not None and probs.dim() == 2:
            return probs.shape[1]
        keep = self.labelled(golds)
        labels = [_as_labels("golds", golds)[keep.to(golds.device)]]
        if preds is not None:
            labels.append(_as_labels("preds", preds).to(golds.device))
        largest = int(torch.cat(labels).max()) if sum(len(v) for v in labels) else 1
        return max(2, 1 + largest)

    def state(self, num_classes: int | None) -> ScoreState:
        """An empty `ScoreState` of this scorer's metrics for `num_classes` classes (see `num_classes`)."""
        return ScoreState(self, num_classes)

    def score_slices(
        self, S: Any, golds: Any, preds: Any = None, probs: Any = None, as_dataframe: bool = False
    ) -> dict[str, dict[str, float]] | Any:
        """`score` on all rows (``"overall"``) and on each slice of `S` (Snorkel's API).

        `S` holds one 0/1 column per slice: a NumPy record array (as Snorkel's slicing
        functions return) or a mapping from slice name to a mask. Returns
        ``{"overall": {...}, slice_name: {...}}``, or with `as_dataframe` a pandas
        DataFrame with one row per slice and one column per metric.
        """
        names = list(S.dtype.names) if getattr(getattr(S, "dtype", None), "names", None) else list(S)
        masks = {name: torch.as_tensor(np.asarray(S[name])).bool() for name in names}
        lengths = {len(v) for v in (golds, preds, probs) if v is not None} | {len(m) for m in masks.values()}
        if len(lengths) != 1:
            raise ValueError("S, golds, preds, and probs must have the same number of elements (rows)")
        golds, preds, probs = _as_tensor("golds", golds), _as_tensor("preds", preds), _as_tensor("probs", probs)
        results = {"overall": self.score(golds, preds, probs)}
        for name, mask in masks.items():
            if not bool(mask.any()):
                raise ValueError(f"score_slices: slice {name!r} holds no row; drop it or check S")
            results[name] = self.score(*(None if v is None else v[mask.to(v.device)] for v in (golds, preds, probs)))
        if not as_dataframe:
            return results
        return _pandas("as_dataframe=True").DataFrame.from_dict(results, orient="index")


class ScoreState:
    """One scorer's metric state over a stream of rows: `update` with batches, `sync` across processes, `compute`.

    The state is sufficient statistics: row counts (Python ints), the confusion matrix
    (classification) and per-output sums of errors and targets (regression) in float64; the rows
    themselves only for `roc_auc` and custom metric functions, which need them. So the
    scores of a dataset split across processes are those of the whole: each process
    updates with its share, `sync` sums the states, every process computes the same
    scores. `Scorer.score` is one `update` and a `compute`.
    """

    def __init__(self, scorer: Scorer, num_classes: int | None) -> None:
        if not scorer.is_regression and scorer.metrics and num_classes is None:
            raise ValueError("ScoreState: a classification scorer needs num_classes (Scorer.num_classes)")
        self.scorer = scorer
        self.num_classes = num_classes
        # labelled rows; all rows and those with an answer (coverage counts the gold-abstain rows too, as Snorkel)
        self.counts = [0, 0, 0]
        size = (num_classes or 0) + 1  # index = label + 1: -1 is an ordinary class when abstain_label is None
        self.confusion = torch.zeros(size, size, dtype=torch.float64)
        self.width = 0  # the width of 2-D probs (0: none seen)
        self.sums: Tensor | None = None  # regression: Σe², Σ|e|, Σy, Σy² per output column
        self.rows: list[list[Tensor | None]] = []  # kept for roc_auc and custom metric functions only

    def update(self, golds: Any, preds: Any = None, probs: Any = None) -> None:
        """Add rows: one task's golds, and preds and/or probs (tensors, arrays or lists)."""
        scorer = self.scorer
        golds, preds, probs = _as_tensor("golds", golds), _as_tensor("preds", preds), _as_tensor("probs", probs)
        if golds is None:
            raise ValueError("Scorer: golds are required")
        for name, values in (("preds", preds), ("probs", probs)):
            if values is not None and len(values) != len(golds):
                raise ValueError(f"Scorer: {name} has {len(values)} rows but golds has {len(golds)}")
        keep = scorer.labelled(golds)
        self.counts[0] += int(keep.sum())
        keeps_rows = bool(scorer.custom_metric_funcs) or "roc_auc" in scorer.metrics
        if not keeps_rows and not scorer.is_regression:  # the confusion matrix needs no copy of the labelled rows
            if scorer.metrics:
                self._update_classification(golds, preds, probs, keep)
            return
        kept_golds, kept_preds, kept_probs = (
            None if v is None else v[keep.to(v.device)] for v in (golds, preds, probs)
        )
        if keeps_rows:
            self.rows.append([None if v is None else v.detach().cpu() for v in (kept_golds, kept_preds, kept_probs)])
        if not scorer.metrics:
            return
        if scorer.is_regression:
            self._update_regression(kept_golds, kept_preds, kept_probs)  # type: ignore[arg-type]  # golds are given
        else:
            self._update_classification(golds, preds, probs, keep)

    def _update_classification(self, golds: Tensor, preds: Tensor | None, probs: Tensor | None, keep: Tensor) -> None:
        scorer = self.scorer
        golds = _as_labels("golds", golds)
        if preds is None:
            if probs is None or probs.dim() != 2:
                metric = scorer.metrics[0]
                raise ValueError(
                    f"Metric {metric!r} requires access to preds (or to probs of shape [n, num_classes] to derive them)"
                )
            preds = probs_to_preds(probs)
        preds = _as_labels("preds", preds).to(golds.device)
        marker = resolve(preds, scorer.abstain_label)
        no_answer = preds == (NO_CLASS if marker is None else marker)
        answered = int(no_answer.logical_not_().sum())  # `no_answer` now holds the answered rows
        self.counts[1] += len(preds)
        self.counts[2] += answered
        # the rows scored: labelled, and predicted (the abstains are the rows without an answer, if any)
        kept = keep.to(golds.device) & no_answer if marker is not None else keep.to(golds.device)
        golds, preds = golds[kept], preds[kept]
        C = int(self.num_classes or 0)
        if probs is not None and probs.dim() == 2:
            self.width = probs.shape[1]
            C = probs.shape[1]
        for name, values in (("golds", golds), ("preds", preds)):
            if not len(values):
                continue
            low, high = torch.aminmax(values)
            if int(low) < -1 or int(high) >= C:
                columns = (
                    f"probs have {C} columns" if probs is not None and probs.dim() == 2 else f"there are {C} classes"
                )
                raise ValueError(
                    f"Scorer: {name} hold label {int(high) if int(high) >= C else int(low)} but "
                    f"{columns}; labels must lie in [0, {C - 1}] (is the abstain label right?)"
                )
        size = self.confusion.shape[1]
        index = golds.cpu() * size + preds.cpu() + (size + 1)  # (gold + 1, pred + 1) in row-major order
        self.confusion += torch.bincount(index, minlength=self.confusion.numel()).reshape(self.confusion.shape).double()

    def _update_regression(self, golds: Tensor, preds: Tensor | None, probs: Tensor | None) -> None:
        values = preds if preds is not None else probs
        if values is None:
            raise ValueError("Scorer: regression metrics need preds (or probs holding the predicted values)")
        values, golds = values.to(golds.device, torch.float64), golds.to(torch.float64)
        if values.dim() == golds.dim() + 1 and values.shape[-1] == 1:
            values = values.squeeze(-1)
        if values.shape != golds.shape:
            raise ValueError(
                f"Scorer: regression preds of shape {tuple(values.shape)} do not match golds of shape {tuple(golds.shape)}"
            )
        golds, errors = golds.reshape(len(golds), -1).cpu(), (values - golds).reshape(len(golds), -1).cpu()
        sums = torch.stack([(errors**2).sum(0), errors.abs().sum(0), golds.sum(0), (golds**2).sum(0)])
        self.sums = sums if self.sums is None else self.sums + sums

    def sync(self) -> None:
        """Sum the states over the processes of the default torch.distributed group (every one must call it)."""
        import torch.distributed as dist

        counts, width = torch.tensor(self.counts, dtype=torch.float64), torch.tensor([self.width], dtype=torch.float64)
        dist.all_reduce(counts)
        dist.all_reduce(self.confusion)
        dist.all_reduce(width, op=dist.ReduceOp.MAX)
        self.counts, self.width = [int(n) for n in counts.tolist()], int(width)
        if self.scorer.is_regression and self.scorer.metrics:
            columns = torch.tensor([0 if self.sums is None else self.sums.shape[1]], dtype=torch.float64)
            dist.all_reduce(columns, op=dist.ReduceOp.MAX)
            sums = torch.zeros(4, int(columns), dtype=torch.float64) if self.sums is None else self.sums
            dist.all_reduce(sums)
            self.sums = sums
        if self.scorer.custom_metric_funcs or "roc_auc" in self.scorer.metrics:
            parts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, self.rows)
            self.rows = [rows for part in parts for rows in part]

    def compute(self) -> dict[str, float]:
        """The scores of every row added (and, after `sync`, of every process's rows)."""
        scorer = self.scorer
        labelled, rows, answered = self.counts
        if labelled == 0:
            raise ValueError(f"Scorer: every gold label is the abstain label {scorer.abstain_label}; nothing to score")
        results: dict[str, float] = {}
        if scorer.metrics and scorer.is_regression:
            results.update(self._regression(labelled))
        elif scorer.metrics:
            results.update(self._classification(rows, answered))
        if scorer.custom_metric_funcs:
            columns = [[row[k] for row in self.rows] for k in range(3)]
            arrays = [_cat_or_none(col) for col in columns]
            for name, func in scorer.custom_metric_funcs.items():
                results.update(_custom_result(name, func(*arrays)))
        return results

    def _classification(self, rows: int, answered: int) -> dict[str, float]:
        scorer = self.scorer
        width = self.width or 2
        present = (self.confusion.sum(0) + self.confusion.sum(1)) > 0
        present[1 : width + 1] = True  # 0..width-1: the columns of probs (else 0 and 1)
        classes = torch.arange(-1, len(present) - 1)[present]
        matrix = self.confusion[present][:, present]
        results = {}
        for metric in scorer.metrics:
            if metric == "coverage":
                results[metric] = answered / rows
                continue
            if float(matrix.sum()) == 0:
                raise ValueError(
                    f"Scorer: every prediction is the abstain label {scorer.abstain_label}; cannot compute {metric}"
                )
            if metric == "roc_auc":
                golds, probs = self._answered_rows()
                results[metric] = _roc_auc(golds, probs, classes)
            else:
                results[metric] = _from_confusion(metric, matrix, classes, scorer.beta)
        return results

    def _answered_rows(self) -> tuple[Tensor, Tensor | None]:
        """The kept rows' golds and probs (gold and predicted abstains dropped), for roc_auc."""
        golds = torch.cat([_as_labels("golds", row[0]) for row in self.rows])  # type: ignore[arg-type]
        if any(row[2] is None for row in self.rows):
            return golds, None
        probs = torch.cat([row[2] for row in self.rows])  # type: ignore[misc]
        preds = [row[1] if row[1] is not None else probs_to_preds(row[2]) for row in self.rows]  # type: ignore[arg-type]
        answered = ~self.scorer._is_abstain(torch.cat([_as_labels("preds", p) for p in preds]))
        return golds[answered], probs[answered]

    def _regression(self, labelled: int) -> dict[str, float]:
        if self.sums is None:
            raise ValueError("Scorer: regression metrics need preds (or probs holding the predicted values)")
        squared, absolute, total, total_squared = self.sums
        n = float(labelled)
        residual = squared.sum() / (n * len(squared))
        spread = total_squared - total**2 / n  # Σ (y - ȳ)² per output
        values = {
            "mse": float(residual),
            "mae": float(absolute.sum() / (n * len(absolute))),
            "r2": float((1 - squared / spread).mean()),
        }
        return {metric: values[metric] for metric in self.scorer.metrics}


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))


def _from_confusion(metric: str, matrix: Tensor, classes: Tensor, beta: float) -> float:
    """accuracy, precision, recall, f1, fbeta, f1_micro, f1_macro or matthews_corrcoef from a confusion matrix."""
    n, correct = matrix.sum(), matrix.trace()
    if metric in ("accuracy", "f1_micro"):
        return float(correct / n)
    gold_counts, pred_counts = matrix.sum(dim=1), matrix.sum(dim=0)
    if metric == "matthews_corrcoef":  # Gorodkin's multiclass form, which reduces to the binary MCC
        cov_gp = correct * n - gold_counts @ pred_counts
        cov_pp, cov_gg = n * n - pred_counts @ pred_counts, n * n - gold_counts @ gold_counts
        return float(cov_gp / torch.sqrt(cov_pp * cov_gg)) if float(cov_pp * cov_gg) > 0 else 0.0
    tp = matrix.diagonal()
    fp, fn = pred_counts - tp, gold_counts - tp
    if metric == "precision":
        per_class = _ratio(tp, tp + fp)
    elif metric == "recall":
        per_class = _ratio(tp, tp + fn)
    else:
        b2 = 1.0 if metric in ("f1", "f1_macro") else beta**2
        per_class = _ratio((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp)
    if metric != "f1_macro" and classes.tolist() == [0, 1]:
        return float(per_class[1])
    present = (gold_counts + pred_counts) > 0
    return float(per_class[present].mean())


def _roc_auc(golds: Tensor, probs: Tensor | None, classes: Tensor) -> float:
    """torchmetrics' AUROC of float64 probs: class 1's for two classes, else the macro one-vs-rest AUC."""
    if probs is None:
        raise ValueError("Scorer: metric 'roc_auc' needs probs")
    if bool((classes < 0).any()):
        raise ValueError(f"Scorer: roc_auc has no probability column for the negative labels in {classes.tolist()}")
    probs = probs.to(torch.float64)  # ranks scores that a lower precision would tie
    width = probs.shape[1] if probs.dim() == 2 else 2
    missing = sorted(set(range(width)) - set(golds.unique().tolist()))
    if missing:
        # scikit-learn raises too: with a class absent from the golds, its AUC is undefined
        raise ValueError(f"Scorer: roc_auc is undefined when gold labels lack classes {missing} of {width}")
    rows_sum_to_one = probs.dim() == 1 or bool(
        torch.allclose(probs.sum(dim=1), torch.ones_like(probs[:, 0]), atol=1e-3)
    )
    if not rows_sum_to_one or bool(((probs < 0) | (probs > 1)).any()):
        # AUC of raw logits ranks by the wrong score (logit 1, not P(class 1)): refuse
        raise ValueError(
            "Scorer: roc_auc needs probabilities (values in [0, 1], rows summing to 1) but got what look "
            "like logits; give the task an output function: Task(output_func=...), an architecture's "
            "output_funcs={task: softmax}, or an MTLModel entry's 'output'"
        )
    # Imported here, not at the top: loading torchmetrics takes seconds, and only this metric needs it.
    from torchmetrics.functional.classification import binary_auroc, multiclass_auroc

    if width == 2:
        scores = probs if probs.dim() == 1 else probs[:, 1]
        return float(binary_auroc(scores, (golds == 1).long()))
    return float(multiclass_auroc(probs, golds.long(), num_classes=width, average="macro"))


def metric_score(
    golds: Any = None,
    preds: Any = None,
    probs: Any = None,
    metric: str = "accuracy",
    filter_dict: Mapping[str, Sequence[int]] | None = None,
    **kwargs: Any,
) -> float:
    """One metric of golds/preds/probs (Snorkel's `metric_score`), after dropping filtered rows.

    `filter_dict` maps "golds", "preds" or "probs" to values: rows where that array holds
    one of them are dropped (``{"golds": [-1], "preds": [-1]}`` drops abstains). No other
    row is dropped: -1 is an ordinary class unless filtered (it still counts as "no
    answer" for `coverage`). The only keyword option is `beta` (for "fbeta").
    """
    if metric not in METRICS:
        raise ValueError(f"The metric you provided ({metric!r}) is not one of {list(METRICS)}")
    unknown = set(kwargs) - {"beta"}
    if unknown:
        raise TypeError(f"metric_score takes no option {sorted(unknown)}; the only option is beta (for fbeta)")
    arrays = {"golds": golds, "preds": preds, "probs": probs}
    arrays = {k: _as_tensor(k, v) for k, v in arrays.items()}
    for name in ("golds", "preds"):
        if arrays[name] is not None and metric not in REGRESSION_METRICS:
            _as_labels(name, arrays[name])
    if filter_dict:
        if set(filter_dict) - set(arrays):
            raise ValueError(f"filter_dict must only include keys in {list(arrays)}, got {sorted(filter_dict)}")
        rows = next(v for v in arrays.values() if v is not None)
        keep = torch.ones(len(rows), dtype=torch.bool)
        for name, values in filter_dict.items():
            if arrays[name] is not None:
                column = arrays[name] if arrays[name].dim() == 1 else arrays[name].reshape(len(rows), -1)[:, 0]
                keep &= ~torch.isin(column, torch.as_tensor(list(values), dtype=column.dtype))
        arrays = {k: None if v is None else v[keep] for k, v in arrays.items()}
    if arrays["golds"] is None:
        raise ValueError(f"Metric {metric!r} requires access to golds")
    if metric == "coverage" and arrays["preds"] is None:
        raise ValueError("Metric 'coverage' requires access to preds")
    scorer = Scorer(metrics=[metric], abstain_label=None, beta=kwargs.get("beta", 1.0))
    return scorer.score(arrays["golds"], arrays["preds"], arrays["probs"])[metric]


def _cat_or_none(column: list[Tensor | None]) -> Any:
    """One column of the kept rows as a numpy array (for custom metric functions), or None where a batch lacked it."""
    present = [v for v in column if v is not None]
    return torch.cat(present).numpy() if len(present) == len(column) else None


def _custom_result(name: str, value: Any) -> dict[str, float]:
    items = value.items() if isinstance(value, Mapping) else [(name, value)]
    results = {}
    for key, item in items:
        try:
            results[key] = float(item)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"custom metric {name!r} returned {key}={item!r}; return a float or a dict of floats"
            ) from error
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
            raise ValueError(
                f"delta_m: no known direction for metric {metric!r} of task {task!r}; pass higher_is_better"
            )
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
        task = remap_labels.get(label, label if label in task_names else None)
        if task is None:
            continue
        if task not in task_names:
            raise ValueError(
                f"remap_labels maps label {label!r} to task {task!r}, which the model does not have; tasks: {sorted(task_names)}"
            )
        mapping[label] = task
    return mapping


def _model_device(model: Any) -> torch.device | None:
    if isinstance(model, nn.Module):
        parameter = next(model.parameters(), None)
        return None if parameter is None else parameter.device
    return None


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """The model (an `nn.Module`) in eval mode within the block, then back in the mode it had."""
    was_training = model.training if isinstance(model, nn.Module) else None
    if was_training is not None:
        model.eval()
    try:
        yield
    finally:
        if was_training is not None:
            model.train(was_training)


def _dataset_of(dataloader: DataLoader) -> Any:
    dataset: Any = dataloader.dataset  # duck-typed: checked for a DictDataset's attributes below
    for attribute in ("name", "split", "Y_dict"):
        if not hasattr(dataset, attribute):
            raise TypeError(
                f"scoring needs dataloaders over a DictDataset (with name, split, Y_dict); "
                f"got a dataset of type {type(dataset).__name__} without {attribute!r}"
            )
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset.name!r} has no rows in its {dataset.split!r} split: nothing to score")
    return dataset


def _collect(
    model: Any, dataloader: DataLoader, mapping: Mapping[str, str]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Gold labels and task outputs of every labelled task over one dataloader (no grad; the caller sets eval mode)."""
    tasks = list(dict.fromkeys(mapping.values()))
    golds: dict[str, list[Tensor]] = defaultdict(list)
    outputs: dict[str, list[Tensor]] = defaultdict(list)
    device = _model_device(model)
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
                        f"label {label!r} has {len(gold)} rows in a batch of dataset {_dataset_of(dataloader).name!r} "
                        f"but task {task!r} returned {len(output)}; outputs need one row per label row"
                    )
                golds[label].append(gold)
                outputs[label].append(output)
    return {k: torch.cat(v) for k, v in golds.items()}, {k: torch.cat(v) for k, v in outputs.items()}


def _predictions(label: str, outputs: Tensor, scorer: Scorer | None) -> Tensor:
    if scorer is not None and scorer.is_regression:
        return outputs
    if outputs.dim() < 2:
        raise ValueError(
            f"task outputs for label {label!r} are 1-D; a classifier's outputs must be [n, num_classes] "
            f"probabilities (give the task a regression Scorer if it predicts values)"
        )
    if outputs.shape[-1] < 2:
        if scorer is None:
            return outputs  # one column and no Scorer to say what it is: nothing scores these
        raise ValueError(
            f"task outputs for label {label!r} have one column; a classifier's outputs must be [n, num_classes >= 2] "
            f"probabilities (give the task a regression Scorer if it predicts values)"
        )
    return probs_to_preds(outputs.reshape(-1, outputs.shape[-1])).reshape(outputs.shape[:-1])


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
    of the outputs with ties (within 1e-5) broken by Snorkel's deterministic hash of the
    row number (`mtlkit.utils.probs_to_preds`), or the outputs themselves for tasks whose Scorer is a regression
    scorer (`scorers` overrides `model.scorers()`).
    """
    with _eval_mode(model):
        return _predict(model, dataloader, return_preds, remap_labels, scorers)


def _predict(
    model: Any,
    dataloader: DataLoader,
    return_preds: bool,
    remap_labels: Mapping[str, str | None] | None,
    scorers: Mapping[str, Scorer] | None,
) -> dict[str, dict[str, Tensor]]:
    """`predict`, with the model already in eval mode."""
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
    seen: set[tuple[str, str, str]] = set()
    with _eval_mode(model):
        for dataloader in dataloaders:
            dataset = _dataset_of(dataloader)
            mapping = labels_to_tasks(dataset.Y_dict.keys(), model.task_names, remap_labels)
            for label in mapping:  # two loaders may share a dataset name and split if their labels differ (Snorkel)
                if (label, dataset.name, dataset.split) in seen:
                    raise ValueError(
                        f"two dataloaders both score label {label!r} as dataset {dataset.name!r}, "
                        f"split {dataset.split!r}; give them different names"
                    )
                seen.add((label, dataset.name, dataset.split))
            results = _predict(model, dataloader, True, remap_labels, task_scorers)
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


def _pandas(what: str) -> Any:
    try:
        import pandas
    except ImportError as error:
        raise ImportError(f"{what} needs pandas (pip install pandas); leave it False for a dict") from error
    return pandas


def _to_dataframe(scores: Mapping[str, float]) -> Any:
    rows = [(*key.split("/", 3), value) for key, value in scores.items()]
    return _pandas("as_dataframe=True").DataFrame(rows, columns=["label", "dataset", "split", "metric", "score"])
