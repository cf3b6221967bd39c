"""scikit-learn's bundled 8×8 handwritten digits with three tasks: digit, parity, ≥ 5."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlkit.data.datasets.base import (
    SPLITS,
    DatasetInfo,
    LoadedDataset,
    TaskInfo,
    import_extra,
    make_datasets,
    split_indices,
    standardize,
)

NAME = "digits"
INPUT_KEY = "x"


def load_digits(seed: int = 0, split_fractions: Sequence[float] = (0.7, 0.15, 0.15)) -> LoadedDataset:
    """1,797 digits as 64 standardised pixel features; tasks `digit` (10 classes),
    `parity` (0 even, 1 odd) and `ge5` (1 when the digit is 5 or more)."""
    sk_datasets = import_extra("sklearn.datasets", "scikit-learn", NAME)
    bunch = sk_datasets.load_digits()
    X = torch.as_tensor(bunch.data, dtype=torch.float32)
    digit = torch.as_tensor(bunch.target, dtype=torch.int64)
    labels = {"digit": digit, "parity": digit % 2, "ge5": (digit >= 5).long()}

    index = split_indices(len(X), split_fractions, seed, NAME)
    X_parts = standardize({split: X[index[split]] for split in SPLITS})
    info = DatasetInfo(
        NAME,
        tasks={
            "digit": TaskInfo.classification(10, INPUT_KEY, "which digit, 0-9"),
            "parity": TaskInfo.classification(2, INPUT_KEY, "0 = even digit, 1 = odd digit"),
            "ge5": TaskInfo.classification(2, INPUT_KEY, "1 when the digit is 5 or more, else 0"),
        },
        input_shapes={INPUT_KEY: (64,)},
        description="UCI optical handwritten digits (scikit-learn copy), 8x8 images flattened, 0-16 counts",
    )
    datasets = make_datasets(
        NAME,
        {split: {INPUT_KEY: X_parts[split]} for split in SPLITS},
        {split: {task: y[index[split]] for task, y in labels.items()} for split in SPLITS},
    )
    return LoadedDataset(info, datasets)
