"""Your own data from a table file: CSV or Parquet (pandas, the `tables` extra) or NumPy `.npz`.

`load_table` reads the file, turns the named feature columns into one input `x`, each
target column into a task (classification over its listed `classes`, or regression),
assigns rows to train/valid/test (a split column, or random fractions fixed by a seed),
and returns a `LoadedDataset` like the built-in datasets. A missing label becomes `-1`
(classification) or `NaN` (regression), the "no label" markers of every front door.
In an `.npz` file the "columns" are its arrays: 1-D arrays, (N, k) arrays (k features)
or, as the only feature, one (N, C, H, W) image array.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtlkit.data.dataset import DictDataset
from mtlkit.data.datasets.base import SPLITS, DatasetInfo, LoadedDataset, TaskInfo, split_indices, standardize
from mtlkit.errors import ConfigError

FORMATS = (".csv", ".parquet", ".npz")
INPUT_KEY = "x"
KINDS = ("classification", "regression")
TARGET_KEYS = ("kind", "classes", "column", "missing")
SPLIT_KEYS = ("column", "fractions", "seed")
TABLES_HINT = 'pip install "mtlkit[tables]"'


def check_table_spec(
    path: str | Path,
    targets: Mapping[str, Any] | None,
    split: Mapping[str, Any] | None = None,
) -> None:
    """Check the settings of a table before reading it; errors name the `data.` key and the fix."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"data.path: {str(path)!r} is not a table file; use one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise ConfigError(f"data.path: no file {str(path)!r} (a relative path is read from the config file's folder)")
    if not isinstance(targets, Mapping) or not targets:
        raise ConfigError(
            "data.targets: name each task column and its kind, "
            "e.g. {price: {kind: regression}, type: {kind: classification, classes: [flat, house]}}"
        )
    for task, spec in targets.items():
        _target_spec(str(task), spec)
    _split_spec(split)


def load_table(
    path: str | Path,
    targets: Mapping[str, Any],
    features: Sequence[str] | None = None,
    split: Mapping[str, Any] | None = None,
    missing: Any = None,
    standardize_values: bool = True,
    name: str | None = None,
    seed: int = 0,
) -> LoadedDataset:
    """A `LoadedDataset` from the table at `path`; the keys are those of `data:` in a config (docs/config.md).

    `targets` maps each task name to `{kind, classes, column, missing}`; `features` lists
    the input columns (default: every column that is not a target or the split column);
    `split` is `{column: ...}` (values train/valid/test) or `{fractions: [..], seed: ..}`
    (default fractions 0.7/0.15/0.15 with `seed`); `missing` is how a missing label is
    written (besides an empty cell or NaN). With `standardize_values`, features and
    regression targets are standardised with the training rows' statistics.
    """
    path = Path(path)
    check_table_spec(path, targets, split)
    columns = read_columns(path)
    n = len(next(iter(columns.values())))
    specs = {str(task): _target_spec(str(task), spec) for task, spec in targets.items()}
    split = dict(split or {})
    split_column = split.get("column")
    used = {spec["column"] for spec in specs.values()} | ({split_column} if split_column else set())
    for column in used:
        key = "data.split.column" if column == split_column else "data.targets"
        if getattr(_column(columns, column, path, key), "ndim", 1) != 1:
            raise ConfigError(f"{key}: array {column!r} of {path.name} must be one-dimensional (one value per row)")
    feature_names = list(features) if features is not None else [c for c in columns if c not in used]
    if not feature_names:
        raise ConfigError(f"data.features: {path} has no column left for features; its columns: {list(columns)}")
    clash = [c for c in feature_names if c in used]
    if clash:
        raise ConfigError(f"data.features: column {clash[0]!r} is a target or the split column; leave it out")
    X = _features(columns, feature_names, path)
    index = _split_rows(columns, split, n, seed, path)

    labels: dict[str, Tensor] = {}
    tasks: dict[str, TaskInfo] = {}
    for task, spec in specs.items():
        marker = spec.get("missing", missing)
        values = _column(columns, spec["column"], path, "data.targets")
        if spec["kind"] == "classification":
            labels[task] = _class_labels(values, spec["classes"], marker, task, spec["column"])
            tasks[task] = TaskInfo.classification(len(spec["classes"]), INPUT_KEY, _describe(spec["classes"]))
        else:
            y = _regression_targets(values, marker, task, spec["column"])
            mean, std = _nan_stats(y[index["train"]], task) if standardize_values else (0.0, 1.0)
            labels[task] = (y - mean) / std
            tasks[task] = TaskInfo.regression(INPUT_KEY, mean, std, description=f"column {spec['column']!r}")

    present = [s for s in SPLITS if len(index[s])]
    X_parts = {s: X[index[s]] for s in present}
    if standardize_values:
        X_parts = standardize(X_parts, per_feature=X.dim() == 2)
    name = name or path.stem
    info = DatasetInfo(name, tasks, {INPUT_KEY: tuple(X.shape[1:])}, description=f"table {path}")
    datasets = tuple(
        DictDataset(name, s, {INPUT_KEY: X_parts[s]}, {t: y[index[s]] for t, y in labels.items()}) for s in present
    )
    return LoadedDataset(info, datasets)


def read_columns(path: str | Path) -> dict[str, Any]:
    """The file's columns (or `.npz` arrays) as NumPy arrays of equal length, by name."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        numpy = _import("numpy", "numpy", path)
        try:
            with numpy.load(path, allow_pickle=False) as archive:
                columns = {key: archive[key] for key in archive.files}
        except (ValueError, OSError) as err:
            raise ConfigError(f"data.path: cannot read {path} as a NumPy .npz archive: {err}") from err
    else:
        pandas = _import("pandas", "pandas", path)
        if suffix == ".parquet":
            _import("pyarrow", "pyarrow", path)
        try:
            frame = pandas.read_csv(path) if suffix == ".csv" else pandas.read_parquet(path)
        except (ValueError, OSError) as err:  # pandas' parser errors are ValueErrors
            raise ConfigError(f"data.path: cannot read {path}: {err}") from err
        columns = {str(c): frame[c].to_numpy() for c in frame.columns}
    if not columns:
        raise ConfigError(f"data.path: {path} holds no columns")
    lengths = {key: len(value) if getattr(value, "ndim", 0) else 0 for key, value in columns.items()}
    n = max(lengths.values())
    if n == 0:
        raise ConfigError(f"data.path: {path} holds no rows")
    short = [key for key, length in lengths.items() if length != n]
    if short:
        raise ConfigError(f"data.path: array {short[0]!r} of {path} has {lengths[short[0]]} rows, others have {n}")
    return columns


def _import(module: str, package: str, path: Path) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise ConfigError(f"data.path: reading {path.name} needs the {package!r} package: {TABLES_HINT}") from err


def _target_spec(task: str, spec: Any) -> dict[str, Any]:
    where = f"data.targets.{task}"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: give a mapping such as {{kind: regression}}, got {spec!r}")
    unknown = [k for k in spec if k not in TARGET_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(TARGET_KEYS)}")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind: give one of {', '.join(KINDS)}, got {kind!r}")
    column = spec.get("column", task)
    if not isinstance(column, str):
        raise ConfigError(f"{where}.column: a column name (a string), got {column!r}")
    result = {"kind": kind, "column": column}
    if "missing" in spec:
        result["missing"] = spec["missing"]
    classes = spec.get("classes")
    if kind == "regression":
        if classes is not None:
            raise ConfigError(
                f"{where}.classes: a regression target has no classes; remove it or use kind: classification"
            )
        return result
    if isinstance(classes, int) and not isinstance(classes, bool) and classes >= 2:
        classes = list(range(classes))
    if not isinstance(classes, (list, tuple)) or len(classes) < 2:
        raise ConfigError(
            f"{where}.classes: list the values of the column in class order (e.g. [flat, house, villa]), "
            f"or give their number C for labels 0..C-1; got {classes!r}"
        )
    keys = [_key(c) for c in classes]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{where}.classes: {list(classes)} names a class twice")
    result["classes"] = list(classes)
    return result


def _split_spec(split: Any) -> None:
    if split is None:
        return
    if not isinstance(split, Mapping):
        raise ConfigError(
            f"data.split: give {{column: NAME}} (values train/valid/test) or {{fractions: [0.7, 0.15, 0.15], seed: 0}}, "
            f"got {split!r}"
        )
    unknown = [k for k in split if k not in SPLIT_KEYS]
    if unknown:
        raise ConfigError(f"data.split: unknown key {unknown[0]!r}; allowed: {', '.join(SPLIT_KEYS)}")
    if "column" in split and ({"fractions", "seed"} & set(split)):
        raise ConfigError("data.split: give either 'column' or 'fractions' (with 'seed'), not both")
    if "column" in split and not isinstance(split["column"], str):
        raise ConfigError(f"data.split.column: a column name (a string), got {split['column']!r}")
    fractions = split.get("fractions", (0.7, 0.15, 0.15))
    if not isinstance(fractions, (list, tuple)) or not all(_is_number(f) for f in fractions):
        raise ConfigError(f"data.split.fractions: three numbers (train, valid, test), got {fractions!r}")
    seed = split.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"data.split.seed: an integer, got {seed!r}")


def _split_rows(
    columns: Mapping[str, Any], split: Mapping[str, Any], n: int, seed: int, path: Path
) -> dict[str, Tensor]:
    column = split.get("column")
    if column is None:
        fractions = tuple(float(f) for f in split.get("fractions", (0.7, 0.15, 0.15)))
        try:
            return split_indices(n, fractions, split.get("seed", seed), path.name)
        except ConfigError as err:
            raise ConfigError(f"data.split.fractions: {err}") from err
    values = [str(_key(v)) for v in columns[column]]
    unknown = sorted({v for v in values if v not in SPLITS})
    if unknown:
        row = next(i for i, v in enumerate(values) if v not in SPLITS)
        raise ConfigError(
            f"data.split.column: column {column!r} of {path.name} holds {unknown[0]!r} (row {row}); "
            f"each row must say train, valid or test"
        )
    index = {s: torch.tensor([i for i, v in enumerate(values) if v == s], dtype=torch.int64) for s in SPLITS}
    for required in ("train", "valid"):
        if not len(index[required]):
            raise ConfigError(f"data.split.column: column {column!r} of {path.name} marks no row {required!r}")
    return index


def _column(columns: Mapping[str, Any], column: str, path: Path, key: str) -> Any:
    if column not in columns:
        close = [c for c in columns if c.lower() == column.lower()]
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{key}: {path.name} has no column {column!r}.{hint} Its columns: {list(columns)}")
    return columns[column]


def _features(columns: Mapping[str, Any], names: Sequence[str], path: Path) -> Tensor:
    parts = []
    for name in names:
        values = _column(columns, name, path, "data.features")
        try:
            tensor = torch.as_tensor(values.astype("float32"))
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"data.features: column {name!r} of {path.name} is not numeric ({err}); "
                f"encode it as numbers (e.g. one column per category) or leave it out of data.features"
            ) from err
        bad = ~torch.isfinite(tensor.reshape(len(tensor), -1)).all(dim=1)
        if bool(bad.any()):
            row = int(bad.nonzero()[0])
            raise ConfigError(
                f"data.features: column {name!r} of {path.name} has a missing or infinite value in row {row}; "
                f"fill it in or drop the row (only labels may be missing)"
            )
        if tensor.dim() > 2 and len(names) > 1:
            raise ConfigError(
                f"data.features: array {name!r} has shape {tuple(tensor.shape)}; an image array must be the only feature"
            )
        parts.append(tensor if tensor.dim() != 1 else tensor[:, None])
    return parts[0] if parts[0].dim() > 2 else torch.cat(parts, dim=1)


def _class_labels(values: Any, classes: Sequence[Any], missing: Any, task: str, column: str) -> Tensor:
    lookup = {_key(c): i for i, c in enumerate(classes)}
    markers = _markers(missing)
    labels = []
    for row, value in enumerate(values):
        key = _key(value)
        if key in lookup:
            labels.append(lookup[key])
        elif _is_blank(value) or key in markers:
            labels.append(-1)
        else:
            raise ConfigError(
                f"data.targets.{task}: column {column!r} holds {value!r} in row {row}, which is not one of the classes "
                f"{list(classes)}; add it to classes, or set data.targets.{task}.missing if it means 'no label'"
                + (
                    " (YAML reads unquoted yes/no/on/off as booleans: quote them)"
                    if any(isinstance(c, bool) for c in classes)
                    else ""
                )
            )
    return torch.tensor(labels, dtype=torch.int64)


def _regression_targets(values: Any, missing: Any, task: str, column: str) -> Tensor:
    markers = _markers(missing)
    targets = []
    for row, value in enumerate(values):
        if _is_blank(value) or _key(value) in markers:
            targets.append(math.nan)
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise ConfigError(
                f"data.targets.{task}: column {column!r} holds {value!r} in row {row}, which is not a finite number; "
                f"fix it, or set data.targets.{task}.missing if it means 'no label'"
            )
        targets.append(number)
    return torch.tensor(targets, dtype=torch.float32)


def _nan_stats(train: Tensor, task: str) -> tuple[float, float]:
    """Mean and standard deviation of the labelled training targets (std 1 for a constant target)."""
    labelled = train[~train.isnan()].double()
    if not len(labelled):
        raise ConfigError(
            f"data.targets.{task}: no training row has a label, so the target cannot be standardised; "
            f"label some training rows or set data.standardize: false"
        )
    std = labelled.std(unbiased=False).item()
    return labelled.mean().item(), std if std > 0 else 1.0


def _markers(missing: Any) -> set[Any]:
    if missing is None:
        return set()
    return {_key(m) for m in (missing if isinstance(missing, (list, tuple)) else [missing])}


def _key(value: Any) -> Any:
    """A hashable, type-tolerant form of a cell: numpy scalars as Python, 1.0 as 1, text stripped."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if number.is_integer() else number
    return value


def _is_blank(value: Any) -> bool:
    """An empty cell: None, NaN (pandas' reading of an empty CSV cell) or an empty string."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    try:
        return math.isnan(value)
    except TypeError:
        return False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _describe(classes: Sequence[Any]) -> str:
    return ", ".join(f"{c}={i}" for i, c in enumerate(classes)) + ", -1 = no label"
