"""An experiment in one YAML file: data, model, weighting and trainer settings.

The schema, every key with its default and a worked example: docs/config.md.

```yaml
name: digits-hps-ew
seed: 0
data: {name: digits, batch_size: 64, options: {}, tasks: null}   # or path: table.csv, or factory: pkg.mod:fn
model:
  architecture: hps            # or `graph:` with a torchMTL-style node list
  encoder: {type: auto, hidden: [128, 64]}
  options: {}                  # the architecture's keyword options (num_experts, ...)
  rep_grad: false
weighting: ew                  # or {name: cagrad, c: 0.4}
trainer: {n_epochs: 20, lr: 0.001}
```

`load_config` reads the file with a safe loader, applies `key=value` overrides
(dotted paths, values parsed as YAML) and validates every key before anything runs:
an unknown key or value is a `ConfigError` naming it and listing what is allowed.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from mtlkit.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading `1e-3` as a float (YAML 1.1 needs `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

ARCHITECTURES = ("hps", "cross_stitch", "mmoe", "mtan", "cgc", "ple", "dselect_k", "ltb")


TABLE_KEYS = ("features", "targets", "split", "missing", "standardize")


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from, the batch size and (optionally) a task subset.

    One source: `name` (a built-in or registered dataset, with loader `options`), `path`
    (a CSV, Parquet or .npz table, described by `features`, `targets`, `split`, `missing`,
    `standardize`) or `factory` (`"package.module:function"` returning a `LoadedDataset`,
    called with `options`). Without any, the built-in `digits`. A table's `name` defaults
    to the file's stem; it is the dataset part of the score keys.
    """

    name: str | None = None
    batch_size: int = 64
    options: Mapping[str, Any] = field(default_factory=dict)
    tasks: tuple[str, ...] | None = None
    path: str | None = None
    factory: str | None = None
    features: tuple[str, ...] | None = None
    targets: Mapping[str, Any] | None = None
    split: Mapping[str, Any] | None = None
    missing: Any = None
    standardize: bool = True

    def __post_init__(self) -> None:
        if self.name is None and self.factory is None:
            object.__setattr__(self, "name", Path(self.path).stem if isinstance(self.path, str) else "digits")

    def validate(self) -> None:
        """Types and the choice of source; a table's file and keys; a factory's importability."""
        from mtlkit.data import datasets
        from mtlkit.data.tables import check_table_spec

        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be a positive integer, got {self.batch_size!r}")
        for key in ("tasks", "features"):
            value = getattr(self, key)
            if value is not None and not all(isinstance(v, str) for v in value):
                raise ConfigError(f"data.{key}: a list of names, got {list(value)!r}")
        if not isinstance(self.options, Mapping):
            raise ConfigError(f"data.options: a mapping of the loader's keyword options, got {self.options!r}")
        if self.path is not None and self.factory is not None:
            raise ConfigError("data: give either 'path' (a table file) or 'factory', not both")
        if self.path is None:
            stray = [k for k in TABLE_KEYS if getattr(self, k) != getattr(DataConfig, k, None)]
            if stray:
                raise ConfigError(f"data.{stray[0]}: only for a table file; set data.path, or remove it")
        if self.path is not None:
            if not isinstance(self.path, str):
                raise ConfigError(f"data.path: a file name, got {self.path!r}")
            if self.options:
                raise ConfigError(
                    "data.options: a table file takes its settings as data keys: " + ", ".join(TABLE_KEYS)
                )
            if not isinstance(self.standardize, bool):
                raise ConfigError(f"data.standardize: true or false, got {self.standardize!r}")
            check_table_spec(self.path, self.targets, self.split)
        elif self.factory is not None:
            if self.name is not None:
                raise ConfigError(
                    "data.name: a factory's dataset is named by the DatasetInfo it returns; remove data.name"
                )
            datasets.resolve_factory(self.factory)
        else:
            _one_of(self.name, datasets.available(), "data.name")


@dataclass(frozen=True)
class ModelConfig:
    """An architecture from `mtlkit.architectures` with a built encoder, or a node-list `graph`."""

    architecture: str | None = "hps"
    graph: tuple[Mapping[str, Any], ...] | None = None
    encoder: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    rep_grad: bool = False


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one run needs; `trainer` holds `mtlkit.Trainer` options."""

    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    weighting: Any = "ew"
    trainer: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, dicts, scalars) that `yaml.safe_dump` writes and `from_dict` reads back."""
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ExperimentConfig:
        """Validate a parsed config; errors name the key (as a dotted path) and the allowed values."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
        top = _check_keys(raw, cls, "")
        data = _check_keys(top.get("data", {}), DataConfig, "data.")
        model = _check_keys(top.get("model", {}), ModelConfig, "model.")
        for key in ("tasks", "features"):
            if data.get(key) is not None:
                if not isinstance(data[key], (list, tuple)):
                    raise ConfigError(f"data.{key}: a list of names, got {data[key]!r}")
                data[key] = tuple(data[key])
        if isinstance(data.get("path"), str):
            data["path"] = os.path.abspath(data["path"])  # the run folder's config.yaml must not depend on the cwd
        if model.get("graph") is not None:
            model["graph"] = tuple(model["graph"])
            model.setdefault("architecture", None)
            if model["architecture"] is not None:
                raise ConfigError("model: give either 'architecture' or 'graph', not both")
        config = cls(
            **{k: v for k, v in top.items() if k not in ("data", "model")},
            data=DataConfig(**data),
            model=ModelConfig(**model),
        )
        config.validate()
        return config

    def validate(self) -> None:
        """Check names against the registries (datasets, architectures, balancers, trainer options)."""
        from mtlkit.training import TrainerConfig
        from mtlkit.weighting import get as get_balancer

        self.data.validate()
        if self.model.graph is None:
            _one_of(self.model.architecture, ARCHITECTURES, "model.architecture")
        name, options = weighting_spec(self.weighting)
        try:
            get_balancer(name, tasks=["a", "b"], **options)  # builds it once to check the options
        except ConfigError as err:
            raise ConfigError(f"weighting: {err}") from err
        except (TypeError, ValueError) as err:  # a value of the wrong type or range reached the method
            cls = type(get_balancer(name, tasks=["a", "b"]))
            raise ConfigError(option_error("weighting", name, cls, options, err)) from err
        reserved = {"weighting", "seed"} & set(self.trainer)
        if reserved:
            raise ConfigError(
                f"trainer.{sorted(reserved)[0]}: set it at the top level of the config, not under 'trainer'"
            )
        try:
            TrainerConfig.from_dict(dict(self.trainer))
        except ConfigError as err:
            raise ConfigError(f"trainer: {err}") from err


def option_error(where: str, name: str, cls: type, options: Mapping[str, Any], err: Exception) -> str:
    """One line for options that `cls` rejected: the first whose type differs from its default's, else the error."""
    parameters = inspect.signature(cls).parameters
    for key, value in options.items():
        default = parameters[key].default if key in parameters else inspect.Parameter.empty
        if isinstance(default, bool):
            expected = "true or false" if not isinstance(value, bool) else None
        elif isinstance(default, (int, float)):
            expected = "a number" if not isinstance(value, (int, float)) or isinstance(value, bool) else None
        elif isinstance(default, str):
            expected = "a string" if not isinstance(value, str) else None
        else:
            expected = None
        if expected:
            return f"{where}.{key}: {name} needs {expected} (default {default!r}), got {value!r}"
    return f"{where}: {name} rejected the options {dict(options)}: {err}; fix their values"


def weighting_spec(weighting: Any) -> tuple[str, dict[str, Any]]:
    """`'ew'` or `{name: cagrad, c: 0.4}` as (name, options)."""
    if isinstance(weighting, str):
        return weighting, {}
    if isinstance(weighting, Mapping) and isinstance(weighting.get("name"), str):
        return weighting["name"], {k: v for k, v in weighting.items() if k != "name"}
    raise ConfigError(f"weighting must be a method name or a mapping with a 'name' key, got {weighting!r}")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML config (safe loader), apply `key=value` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file ({err}); give a YAML config") from err
    if raw is None:
        warnings.warn(f"{path} is empty: every setting takes its default (docs/config.md)", stacklevel=2)
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections (name, seed, data, model, weighting, trainer), "
            f"got a {type(raw).__name__}; see docs/config.md"
        )
    data = raw.get("data") if isinstance(raw, Mapping) else None
    if isinstance(data, Mapping) and isinstance(data.get("path"), str):
        raw = {**raw, "data": {**data, "path": str(path.parent / data["path"])}}  # relative to the config file
    try:
        return ExperimentConfig.from_dict(apply_overrides(raw, overrides))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `dotted.key=value` set (value parsed as YAML)."""
    result = yaml.safe_load(yaml.safe_dump(dict(raw)))  # deep copy of plain data
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. trainer.n_epochs=5)")
        *parents, leaf = key.split(".")
        node = result
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[leaf] = yaml.load(text, Loader=_Loader)
    return result


def _check_keys(raw: Any, cls: type, prefix: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(raw).__name__}")
    known = [f.name for f in fields(cls)]
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean {prefix}{close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {prefix}{key!r}.{hint} Allowed: {', '.join(known)}")
    return dict(raw)


def _one_of(value: Any, allowed: Sequence[str], key: str) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{key}: unknown value {value!r}.{hint} Allowed: {', '.join(allowed)}")


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
