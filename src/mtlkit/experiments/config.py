"""An experiment in one YAML file: data, model, weighting and trainer settings.

```yaml
name: digits-hps-ew
seed: 0
data: {name: digits, batch_size: 64, options: {}, tasks: null}
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
import re
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


@dataclass(frozen=True)
class DataConfig:
    """Which built-in dataset, its loader options, the batch size and (optionally) a task subset."""

    name: str = "digits"
    batch_size: int = 64
    options: Mapping[str, Any] = field(default_factory=dict)
    tasks: tuple[str, ...] | None = None


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
        if data.get("tasks") is not None:
            data["tasks"] = tuple(data["tasks"])
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
        from mtlkit.data import datasets
        from mtlkit.training import TrainerConfig
        from mtlkit.weighting import get as get_balancer

        _one_of(self.data.name, datasets.available(), "data.name")
        if not isinstance(self.data.batch_size, int) or self.data.batch_size < 1:
            raise ConfigError(f"data.batch_size must be a positive integer, got {self.data.batch_size!r}")
        if self.model.graph is None:
            _one_of(self.model.architecture, ARCHITECTURES, "model.architecture")
        name, options = weighting_spec(self.weighting)
        try:
            get_balancer(name, tasks=["a", "b"], **options)  # builds it once to check the options
        except ConfigError as err:
            raise ConfigError(f"weighting: {err}") from err
        reserved = {"weighting", "seed"} & set(self.trainer)
        if reserved:
            raise ConfigError(
                f"trainer.{sorted(reserved)[0]}: set it at the top level of the config, not under 'trainer'"
            )
        try:
            TrainerConfig.from_dict(dict(self.trainer))
        except ConfigError as err:
            raise ConfigError(f"trainer: {err}") from err


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
        raw = yaml.load(path.read_text(), Loader=_Loader) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
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
