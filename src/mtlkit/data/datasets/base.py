"""What every built-in dataset shares: task metadata records, splits, standardisation.

A loader returns a `LoadedDataset`: its `DictDataset`s (one per split, or several per
split when different datasets label different tasks) and a `DatasetInfo` that says, for
each task, whether it is classification or regression, which loss and which metric fit.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import torch
from torch import Tensor

from mtlkit.data.dataset import DictDataset
from mtlkit.errors import ConfigError

SPLITS = ("train", "valid", "test")
EXTRA_HINT = 'pip install "mtlkit[datasets]"'


class MissingExtraError(ImportError):
    """A built-in dataset needs a package of the `datasets` extra that is not installed."""


@dataclass(frozen=True)
class TaskInfo:
    """How to train and score one task.

    `kind` is "classification" (labels: int64, shape (N,), class indices in `[0, num_classes)`,
    `-1` = no label) or "regression" (float32 targets of shape (N,), standardised with the training
    split's `target_mean` / `target_std`: multiply a prediction by `target_std` and add
    `target_mean` to get the original `unit`). `loss` and `metric` are names:
    "cross_entropy" / "mse" and "accuracy" / "mae".
    """

    kind: Literal["classification", "regression"]
    input_key: str
    loss: str
    metric: str
    higher_is_better: bool
    num_classes: int | None = None
    target_mean: float | None = None
    target_std: float | None = None
    unit: str = ""
    description: str = ""

    @classmethod
    def classification(cls, num_classes: int, input_key: str, description: str = "") -> TaskInfo:
        """A `num_classes`-way task: cross-entropy loss, scored by accuracy."""
        return cls("classification", input_key, "cross_entropy", "accuracy", True, num_classes, description=description)

    @classmethod
    def regression(
        cls, input_key: str, target_mean: float, target_std: float, unit: str = "", description: str = ""
    ) -> TaskInfo:
        """A scalar regression task on standardised targets: MSE loss, scored by mean absolute error."""
        return cls("regression", input_key, "mse", "mae", False, None, target_mean, target_std, unit, description)


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's tasks (name -> `TaskInfo`) and per-example input shapes (X_dict key -> shape)."""

    name: str
    tasks: dict[str, TaskInfo]
    input_shapes: dict[str, tuple[int, ...]]
    description: str = ""


@dataclass(frozen=True)
class LoadedDataset:
    """The `DictDataset`s of one built-in dataset, in split order train, valid, test."""

    info: DatasetInfo
    datasets: tuple[DictDataset, ...]

    def split(self, split: str) -> list[DictDataset]:
        """The `DictDataset`s of `split` ("train", "valid" or "test")."""
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r} for dataset {self.info.name!r}; use one of {', '.join(SPLITS)}")
        return [ds for ds in self.datasets if ds.split == split]


def import_extra(module: str, package: str, dataset: str) -> ModuleType:
    """Import `module` or raise `MissingExtraError` naming the package and the extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise MissingExtraError(
            f"the {dataset!r} dataset needs the {package!r} package, which is not installed: {EXTRA_HINT}"
        ) from err


def split_indices(n: int, fractions: Sequence[float], seed: int, dataset: str) -> dict[str, Tensor]:
    """A random partition of `range(n)` into train/valid/test index tensors, fixed by `seed`."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(
            f"split_fractions of dataset {dataset!r} must be three non-negative numbers "
            f"(train, valid, test) summing to 1, got {tuple(fractions)}"
        )
    n_valid, n_test = round(n * fractions[1]), round(n * fractions[2])
    sizes = {"train": n - n_valid - n_test, "valid": n_valid, "test": n_test}
    for split, size in sizes.items():
        if size < 1:
            raise ConfigError(
                f"split_fractions {tuple(fractions)} leave the {split!r} split of dataset {dataset!r} empty "
                f"({n} examples); give it a larger fraction or use more examples"
            )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return dict(zip(SPLITS, order.split(list(sizes.values()))))


def train_stats(train: Tensor, per_feature: bool = True) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of `train` (over rows, or over everything with `per_feature=False`).

    A constant feature gets standard deviation 1, so it is only centred: dividing by a
    rounding-level deviation would turn it into noise.
    """
    values = train.double() if per_feature else train.double().reshape(-1)
    mean, std = values.mean(dim=0), values.std(dim=0, unbiased=False)
    constant = values.amax(dim=0) == values.amin(dim=0)
    std = torch.where(constant, torch.ones_like(std), std)
    return mean.to(train.dtype), std.to(train.dtype)


def standardize(parts: dict[str, Tensor], per_feature: bool = True) -> dict[str, Tensor]:
    """Standardise every split of `parts` with the statistics of `parts["train"]` only."""
    mean, std = train_stats(parts["train"], per_feature)
    return {split: (values - mean) / std for split, values in parts.items()}


def make_datasets(
    name: str, X_parts: dict[str, dict[str, Tensor]], Y_parts: dict[str, dict[str, Tensor]]
) -> tuple[DictDataset, ...]:
    """One `DictDataset(name, split, X_dict, Y_dict)` per split, in split order."""
    return tuple(DictDataset(name, split, X_parts[split], Y_parts[split]) for split in SPLITS)
