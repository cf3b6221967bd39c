"""The MMoE synthetic benchmark: two regression tasks whose relatedness is one number."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from mtlkit.data.datasets.base import (
    SPLITS,
    DatasetInfo,
    LoadedDataset,
    TaskInfo,
    make_datasets,
    split_indices,
    standardize,
    train_stats,
)
from mtlkit.data.synthetic import correlated_regression

NAME = "correlated_regression"
INPUT_KEY = "x"


def load_correlated_regression(
    n: int = 10_000,
    dim: int = 100,
    correlation: float = 0.5,
    seed: int = 0,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> LoadedDataset:
    """`n` points of `mtlkit.data.synthetic.correlated_regression` (Ma et al., KDD 2018);
    tasks `task1`, `task2` whose weight vectors have cosine `correlation`. Inputs and
    targets are standardised with the training split."""
    x, *targets = correlated_regression(n, dim, correlation, seed)
    index = split_indices(n, split_fractions, seed, NAME)
    X_parts = standardize({split: x[index[split]] for split in SPLITS})
    tasks: dict[str, TaskInfo] = {}
    Y_parts: dict[str, dict[str, Tensor]] = {split: {} for split in SPLITS}
    for number, y in enumerate(targets, start=1):
        task, y = f"task{number}", y.squeeze(1)
        mean, std = train_stats(y[index["train"]])
        description = f"MMoE synthetic task {number}"
        tasks[task] = TaskInfo.regression(INPUT_KEY, mean.item(), std.item(), description=description)
        for split in SPLITS:
            Y_parts[split][task] = (y[index[split]] - mean) / std
    info = DatasetInfo(
        NAME,
        tasks=tasks,
        input_shapes={INPUT_KEY: (dim,)},
        description=f"MMoE synthetic regression, task correlation {correlation}",
    )
    datasets = make_datasets(NAME, {split: {INPUT_KEY: X_parts[split]} for split in SPLITS}, Y_parts)
    return LoadedDataset(info, datasets)
