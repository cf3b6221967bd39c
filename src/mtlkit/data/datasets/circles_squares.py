"""The Snorkel multi-task tutorial's two toy datasets: points labelled by a circle or a square.

Unlike the other built-ins, each task has its own dataset, as in the tutorial:
`CircleDataset` (X key `circle_data`, task `circle_task`) and `SquareDataset`
(`square_data`, `square_task`), so every split holds two `DictDataset`s.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlkit.data.dataset import DictDataset
from mtlkit.data.datasets.base import SPLITS, DatasetInfo, LoadedDataset, TaskInfo, make_datasets, standardize
from mtlkit.data.tutorial import make_circle_dataset, make_square_dataset

NAME = "circles_squares"


def load_circles_squares(
    n: int = 1000, r: float = 1.0, seed: int = 0, split_fractions: Sequence[float] = (0.8, 0.1, 0.1)
) -> LoadedDataset:
    """`n` points in [-1, 1]² per dataset; `circle_task` is 1 inside the circle of radius `r`,
    `square_task` 1 inside the centred square of side `r`. Coordinates are standardised
    with each dataset's training points."""
    # One seed gives the two datasets different points: draw a sub-seed for each.
    circle_seed, square_seed = torch.randint(2**62, (2,), generator=torch.Generator().manual_seed(seed)).tolist()
    makers = {
        "CircleDataset": ("circle", make_circle_dataset(n, r, split_fractions, circle_seed)),
        "SquareDataset": ("square", make_square_dataset(n, r, split_fractions, square_seed)),
    }
    datasets: list[DictDataset] = []
    for dataset_name, (shape, parts) in makers.items():
        X_parts = standardize(dict(zip(SPLITS, (X for X, _ in parts))))
        datasets += make_datasets(
            dataset_name,
            {split: {f"{shape}_data": X_parts[split]} for split in SPLITS},
            {split: {f"{shape}_task": Y} for split, (_, Y) in zip(SPLITS, parts)},
        )
    info = DatasetInfo(
        NAME,
        tasks={
            "circle_task": TaskInfo.classification(2, "circle_data", f"1 inside the circle of radius {r}"),
            "square_task": TaskInfo.classification(2, "square_data", f"1 inside the centred square of side {r}"),
        },
        input_shapes={"circle_data": (2,), "square_data": (2,)},
        description="Snorkel multi-task tutorial: two point sets, each labelled for one task",
    )
    ordered = sorted(datasets, key=lambda ds: SPLITS.index(ds.split))
    return LoadedDataset(info, tuple(ordered))
