"""Datasets ready to train on: `load("penguins", seed=0)`, `available()`, `register_dataset(name, loader)`.

Every loader returns a `LoadedDataset`: train/valid/test `DictDataset`s, fixed by a
seed, with features standardised on the training split only, and a `DatasetInfo` that
describes each task (classification with its number of classes, or regression; loss;
metric; whether higher is better). See docs/datasets.md for sources and licenses.
Your own data: `register_dataset` (Python), `load_factory("mypkg.data:make")` (the
`data: {factory: ...}` of a config) or a table file (`mtlkit.data.tables`).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
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
    """The names `load` accepts (built-in and registered), sorted."""
    return sorted(_LOADERS)


def register_dataset(name: str, loader: Callable[..., LoadedDataset], overwrite: bool = False) -> None:
    """Make `loader` available as `load(name, **options)` and as `data: {name: ...}` in configs.

    `loader` returns a `LoadedDataset`; when it takes a `seed` keyword, runs pass the
    experiment's seed. A name already taken raises `ConfigError` unless `overwrite=True`.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"register_dataset: the name must be a non-empty string, got {name!r}")
    if not callable(loader):
        raise ConfigError(f"register_dataset({name!r}): the loader must be callable, got {type(loader).__name__}")
    if name in _LOADERS and not overwrite:
        raise ConfigError(f"register_dataset: {name!r} is already a dataset; pick another name or pass overwrite=True")
    _LOADERS[name] = loader


def load(name: str, **kwargs: Any) -> LoadedDataset:
    """Load the dataset `name` with its loader's keyword options (e.g. `seed`)."""
    if name not in _LOADERS:
        close = difflib.get_close_matches(name, _LOADERS, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"unknown dataset {name!r}.{hint} Available: {', '.join(available())}.")
    return _call(_LOADERS[name], f"dataset {name!r}", kwargs)


def resolve_factory(spec: str) -> Callable[..., LoadedDataset]:
    """The function named by `"package.module:function"` (the current directory is importable too)."""
    module_name, sep, attr = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or not module_name or not attr:
        raise ConfigError(f"data.factory: write it as 'package.module:function', got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # `mtlkit train` run next to the user's module finds it, as `python -m` does
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"data.factory: cannot import {module_name!r} ({err}); install it, or run from its folder or set PYTHONPATH"
        ) from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"data.factory: module {module_name!r} has no function {attr!r}")
    return factory


def load_factory(spec: str, **kwargs: Any) -> LoadedDataset:
    """Call the factory `"package.module:function"` with its keyword options; it must return a `LoadedDataset`."""
    loaded = _call(resolve_factory(spec), f"data.factory {spec!r}", kwargs)
    if not isinstance(loaded, LoadedDataset):
        raise ConfigError(
            f"data.factory {spec!r} returned {type(loaded).__name__}; return a mtlkit.data.datasets.LoadedDataset "
            f"(DatasetInfo describing the tasks, and the DictDatasets of each split)"
        )
    return loaded


def _call(loader: Callable[..., LoadedDataset], what: str, kwargs: dict[str, Any]) -> LoadedDataset:
    """`loader(**kwargs)`, dropping a `seed` it does not take; any other unknown option is a ConfigError."""
    options = inspect.signature(loader).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in options.values())
    if not takes_any:
        kwargs = {k: v for k, v in kwargs.items() if k != "seed" or "seed" in options}
        unknown = sorted(set(kwargs) - set(options))
        if unknown:
            raise ConfigError(
                f"{what} has no option {', '.join(map(repr, unknown))}; its options are: {', '.join(options)}"
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
    "load_factory",
    "load_multi_mnist",
    "load_penguins",
    "load_qm9",
    "register_dataset",
    "resolve_factory",
]
