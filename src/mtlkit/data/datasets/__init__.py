"""Built-in datasets, ready to train on: `load("penguins", seed=0)`, `available()`.

Every loader returns a `LoadedDataset`: train/valid/test `DictDataset`s, fixed by a
seed, with features standardised on the training split only, and a `DatasetInfo` that
describes each task (classification with its number of classes, or regression; loss;
metric; whether higher is better). See docs/datasets.md for sources and licenses.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from mtlkit.data.datasets.base import DatasetInfo, LoadedDataset, MissingExtraError, TaskInfo
from mtlkit.data.datasets.circles_squares import load_circles_squares
from mtlkit.data.datasets.correlated_regression import load_correlated_regression
from mtlkit.data.datasets.digits import load_digits
from mtlkit.data.datasets.multi_mnist import load_multi_mnist
from mtlkit.data.datasets.penguins import load_penguins
from mtlkit.data.datasets.qm9 import load_qm9
from mtlkit.errors import ConfigError

_LOADERS: dict[str, Callable[..., LoadedDataset]] = {
    "circles_squares": load_circles_squares,
    "correlated_regression": load_correlated_regression,
    "digits": load_digits,
    "multi_mnist": load_multi_mnist,
    "penguins": load_penguins,
    "qm9": load_qm9,
}


def available() -> list[str]:
    """The names `load` accepts, sorted."""
    return sorted(_LOADERS)


def load(name: str, **kwargs: Any) -> LoadedDataset:
    """Load the built-in dataset `name` with its loader's keyword options (e.g. `seed`)."""
    if name not in _LOADERS:
        close = difflib.get_close_matches(name, _LOADERS, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"unknown dataset {name!r}.{hint} Available: {', '.join(available())}.")
    loader = _LOADERS[name]
    options = inspect.signature(loader).parameters
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ConfigError(
            f"dataset {name!r} has no option {', '.join(map(repr, unknown))}; its options are: {', '.join(options)}"
        )
    return loader(**kwargs)


__all__ = [
    "DatasetInfo",
    "LoadedDataset",
    "MissingExtraError",
    "TaskInfo",
    "available",
    "load",
    "load_circles_squares",
    "load_correlated_regression",
    "load_digits",
    "load_multi_mnist",
    "load_penguins",
    "load_qm9",
]
