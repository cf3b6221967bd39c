"""The Trainer's configuration: one typed, immutable record with every default in one place.

`TrainerConfig.from_dict` is how `Trainer(**config)` reads user input: an unknown key is a
`ConfigError` that names it and suggests close spellings; a bad value is a `ConfigError`
that names the key and the values it accepts.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from mtlkit.data import SCHEDULERS, BatchScheduler
from mtlkit.errors import ConfigError
from mtlkit.weighting import Balancer, available, is_registered

OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "adamax": "Adamax"}
# Named schedules -> (torch class name, or None for no schedule; default options, Snorkel's).
LR_SCHEDULERS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "constant": (None, {}),
    "linear": ("LinearLR", {}),
    "exponential": ("ExponentialLR", {"gamma": 0.9}),
    "step": ("StepLR", {"step_size": 5, "gamma": 0.9}),
    "cosine": ("CosineAnnealingLR", {}),
}
WARMUP_UNITS = ("batches", "epochs")
LOG_WRITERS = ("json", "tensorboard")
NONFINITE_POLICIES = ("raise", "skip")
PRECISIONS = ("fp32", "bf16")
METRIC_MODES = ("min", "max")
DIST_BACKENDS = ("gloo", "nccl")
STRATEGIES = ("auto", "single", "ddp", "fsdp")

WeightingSpec = str | tuple | Mapping | Balancer


@dataclass(frozen=True)
class TrainerConfig:
    """Every Trainer option and its default.

    Optimisation
        n_epochs: passes over the training loaders.
        lr: learning rate (also of the balancer's own parameters, e.g. UW's log-variances).
        l2: weight decay of the model's parameters (never of the balancer's).
        grad_clip: max global gradient norm, or None (or 0, Snorkel's spelling) for no clipping.
        optimizer: 'sgd', 'adam', 'adamw', 'adamax', the name of any `torch.optim`
            optimizer ('RAdam'), or an `Optimizer` subclass; built with
            `(params, lr=lr, weight_decay=l2, **optimizer_kwargs)`.
        lr_scheduler: 'constant' (no schedule), 'linear' (to 0 at the end),
            'exponential' (gamma 0.9 unless given), 'step' (step_size 5, gamma 0.9
            unless given), 'cosine', the name of any `torch.optim.lr_scheduler` class,
            or an `LRScheduler` subclass. Schedules step once per optimizer step, so
            `step_size` and `total_iters` count batches; `lr_scheduler_kwargs` go to
            the torch class and override the defaults (Snorkel's, and those derived
            from the run length).
        warmup_steps, warmup_unit: linear warm-up from lr/(W+1) to lr over W batches
            (or W epochs with warmup_unit='epochs'), before the schedule starts.
        weighting: how task losses become gradients: a balancer name ('ew' = sum of
            losses), `(name, kwargs)`, `{'name': name, **kwargs}`, or a `Balancer`.
        nonfinite_loss: when a task loss (or, with grad_clip, the gradient norm) is not
            finite: 'raise' a FloatingPointError naming the task, step and dataset, or
            'skip' the step (no update, no LR-schedule step; `Trainer.skipped_steps`).
        precision: 'fp32', or 'bf16' for `torch.autocast` with bfloat16 (CPU and CUDA;
            needs no loss scaling). fp16 is left out: its loss scaling would change the
            losses that loss-based balancers see.
        device: where to train; None keeps the model where it is (with strategy 'ddp':
            `cuda:LOCAL_RANK` when CUDA is available, else the CPU; 'cuda' means `cuda:LOCAL_RANK`).
    Multi-process training (see docs/distributed.md)
        strategy: 'single' (this process), 'ddp' (one rank of a torch.distributed run
            launched by `torchrun`: the training loaders are sharded across ranks,
            `batch_size` is per rank, the balancer sees the global batch's losses and
            gradients, and rank 0 alone logs and writes checkpoints), 'fsdp' (as 'ddp',
            with the model's parameters, gradients and optimizer state sharded across
            ranks by FSDP2 between steps; the balancers 'ddp' runs), or 'auto' ('ddp'
            under torchrun or an initialised process group, else 'single'). None: 'ddp'
            with distributed=True, else 'single'.
        distributed: True means strategy 'ddp' (when strategy is None or 'auto').
        dist_backend: 'gloo' or 'nccl'; None picks 'nccl' on CUDA and 'gloo' on the CPU.
        dist_timeout: seconds a collective may wait for the other ranks before failing
            (applies to the process group the Trainer creates).
    Data
        batch_scheduler: 'shuffled', 'sequential', 'round_robin', 'temperature' (built
            with `seed`), or a `mtlkit.data.BatchScheduler` object (used as it is).
        train_split, valid_split, test_split: dataset splits (exact names) of each role;
            test loaders are scored once, at the end of `fit`.
        seed: seeds python's, numpy's and torch's global generators at the start of
            `fit`, and the batch scheduler built by name; None leaves the global
            generators as they are and draws the scheduler's seed from torch's.
    Evaluation, logging, checkpoints
        evaluate_every: epochs between scorings of the validation loaders (and after
            the last epoch).
        progress_bar: a tqdm bar per epoch showing the running loss.
        logging, log_writers, log_dir, log_every: write 'json' lines (`log.jsonl`) and/or
            'tensorboard' events into log_dir; training records every log_every batches.
        checkpointing, checkpoint_dir, checkpoint_every: write the full training state
            to `checkpoint_dir/last.pt` every checkpoint_every epochs and after the last
            (resume with `fit(..., resume_from=...)`), and the best model's weights to
            `checkpoint_dir/best.pt`.
        checkpoint_metric: 'task/dataset/split/metric:min|max' that defines the best
            model; it is tracked (and, with restore_best, the best model restored at the
            end of `fit`) when checkpointing or early_stopping is on. The Trainer adds
            'model/all/train/loss' and 'task/dataset/split/loss' of the training
            loaders (epoch means) to the scores.
        checkpoint_runway: epochs before the best model is tracked.
        restore_best: load the best model back at the end of `fit` (Snorkel's behaviour);
            False keeps the state of the last epoch (`best.pt` is still written).
        early_stopping: stop after this many evaluations without improvement of the
            checkpoint metric; None = never.
    """

    n_epochs: int = 1
    lr: float = 0.01
    l2: float = 0.0
    grad_clip: float | None = 1.0
    optimizer: str | type[Optimizer] = "adam"
    optimizer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    lr_scheduler: str | type[LRScheduler] = "constant"
    lr_scheduler_kwargs: Mapping[str, Any] = field(default_factory=dict)
    warmup_steps: float = 0
    warmup_unit: str = "batches"
    weighting: WeightingSpec = "ew"
    nonfinite_loss: str = "raise"
    precision: str = "fp32"
    device: str | torch.device | None = None
    strategy: str | None = None
    distributed: bool = False
    dist_backend: str | None = None
    dist_timeout: float = 600.0

    batch_scheduler: Any = "shuffled"
    train_split: tuple[str, ...] = ("train",)
    valid_split: tuple[str, ...] = ("valid",)
    test_split: tuple[str, ...] = ("test",)
    seed: int | None = None

    evaluate_every: int = 1
    progress_bar: bool = True
    logging: bool = False
    log_writers: tuple[str, ...] = ("json",)
    log_dir: str = "logs"
    log_every: int = 10
    checkpointing: bool = False
    checkpoint_dir: str = "checkpoints"
    checkpoint_every: int = 1
    checkpoint_metric: str = "model/all/train/loss:min"
    checkpoint_runway: int = 0
    restore_best: bool = True
    early_stopping: int | None = None

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> TrainerConfig:
        """Build from user keys, naming any unknown key and its close spellings.

        Snorkel's nested options (`lr_scheduler_config`, `optimizer_config`,
        `log_writer`, `log_writer_config`, `checkpointer_config`,
        `log_manager_config`, `model_config`) are mapped to the flat ones by
        `from_snorkel_options`.
        """
        config = from_snorkel_options(config)
        known = [f.name for f in fields(cls)]
        for key in config:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=3)
                hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ConfigError(f"unknown Trainer option {key!r}.{hint} Options: {', '.join(known)}.")
        return cls(**config)

    def __post_init__(self) -> None:
        _int(self, "n_epochs", minimum=1)
        _number(self, "lr", positive=True)
        _number(self, "l2")
        if self.grad_clip == 0 and not isinstance(self.grad_clip, bool):
            _set(self, "grad_clip", None)
        if self.grad_clip is not None:
            _number(self, "grad_clip", positive=True)
        _set(self, "optimizer_kwargs", _frozen_kwargs("optimizer_kwargs", self.optimizer_kwargs))
        _set(self, "lr_scheduler_kwargs", _frozen_kwargs("lr_scheduler_kwargs", self.lr_scheduler_kwargs))
        _check_optimizer(self.optimizer, self.optimizer_kwargs)
        _check_lr_scheduler(self.lr_scheduler, self.lr_scheduler_kwargs)
        _number(self, "warmup_steps")
        _choice(self, "warmup_unit", WARMUP_UNITS)
        if self.warmup_unit == "batches" and not float(self.warmup_steps).is_integer():
            raise ConfigError(f"warmup_steps={self.warmup_steps!r} counts batches: give a whole number")
        _set(self, "weighting", _normalise_weighting(self.weighting))
        _choice(self, "nonfinite_loss", NONFINITE_POLICIES)
        _choice(self, "precision", PRECISIONS)
        if self.device is not None:
            _set(self, "device", _device(self.device))
        if self.strategy is not None:
            _choice(self, "strategy", STRATEGIES)
        if self.strategy == "single" and self.distributed is True:
            raise ConfigError("strategy='single' contradicts distributed=True: drop distributed, or use strategy='ddp'")
        if self.dist_backend is not None:
            _choice(self, "dist_backend", DIST_BACKENDS)
        _number(self, "dist_timeout", positive=True)
        _check_batch_scheduler(self.batch_scheduler)
        for key in ("train_split", "valid_split", "test_split"):
            _set(self, key, _names(key, getattr(self, key)))
        if self.seed is not None:
            _int(self, "seed", minimum=0)
        _int(self, "evaluate_every", minimum=1)
        for key in ("distributed", "progress_bar", "logging", "checkpointing", "restore_best"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} must be True or False, got {getattr(self, key)!r}")
        _set(self, "log_writers", _names("log_writers", self.log_writers))
        for writer in self.log_writers:
            if writer not in LOG_WRITERS:
                raise ConfigError(_not_allowed("log_writers", writer, LOG_WRITERS))
        for key in ("log_dir", "checkpoint_dir"):
            if not isinstance(getattr(self, key), (str, os.PathLike)):
                raise ConfigError(f"{key} must be a path, got {getattr(self, key)!r}")
            _set(self, key, os.fspath(getattr(self, key)))
        _int(self, "log_every", minimum=1)
        _int(self, "checkpoint_every", minimum=1)
        parse_metric(self.checkpoint_metric)
        _int(self, "checkpoint_runway", minimum=0)
        if self.early_stopping is not None:
            _int(self, "early_stopping", minimum=1)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (a checkpoint can hold them); objects a checkpoint cannot hold become None.

        `unsaved_keys()` names those, so `Trainer.load` can ask for them again.
        """
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in self.unsaved_keys():
                value = None
            elif isinstance(value, type):
                value = value.__name__  # a torch.optim / torch.optim.lr_scheduler class
            elif isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, tuple) and f.name == "weighting":
                value = [value[0], dict(value[1])]
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, torch.device):
                value = str(value)
            out[f.name] = value
        return out

    def unsaved_keys(self) -> list[str]:
        """Keys whose value is an object or a class outside torch, which a checkpoint cannot hold."""
        unsaved = []
        if not _in_module(self.optimizer, torch.optim):
            unsaved.append("optimizer")
        if not _in_module(self.lr_scheduler, torch.optim.lr_scheduler):
            unsaved.append("lr_scheduler")
        if not isinstance(self.weighting, (str, tuple)):
            unsaved.append("weighting")
        if not isinstance(self.batch_scheduler, str):
            unsaved.append("batch_scheduler")
        return unsaved

    @property
    def metric(self) -> tuple[str, str]:
        """The checkpoint metric as (score key, 'min' or 'max')."""
        return parse_metric(self.checkpoint_metric)


def parse_metric(text: str) -> tuple[str, str]:
    """Split 'task/dataset/split/metric:min|max' into (key, mode), checking its form."""
    form = (
        "checkpoint_metric must be formatted 'task/dataset/split/metric_name:mode' with mode 'min' or 'max' "
        "(e.g. 'circle_task/circleDataset/valid/accuracy:max')"
    )
    if not isinstance(text, str) or text.count(":") != 1:
        raise ConfigError(f"{form}; got {text!r}")
    key, mode = text.split(":")
    if mode not in METRIC_MODES:
        raise ConfigError(
            f"checkpoint_metric {text!r} has metric mode {mode!r}; the metric mode must be 'min' or 'max'"
        )
    parts = key.split("/")
    if len(parts) != 4 or not all(parts):
        raise ConfigError(f"{form}; got {text!r}, whose metric has {len(parts)} '/'-separated parts instead of 4")
    return key, mode


def resolve_optimizer(spec: str | type[Optimizer]) -> type[Optimizer]:
    """The optimizer class named or given by `spec` (checked by the config)."""
    if isinstance(spec, type):
        return spec
    return getattr(torch.optim, OPTIMIZERS.get(spec, spec))


def resolve_lr_scheduler(spec: str | type[LRScheduler]) -> type[LRScheduler] | None:
    """The LR scheduler class named or given by `spec` (checked by the config); None for 'constant'."""
    if isinstance(spec, type):
        return spec
    if spec in LR_SCHEDULERS:
        name = LR_SCHEDULERS[spec][0]
        return None if name is None else getattr(torch.optim.lr_scheduler, name)
    return getattr(torch.optim.lr_scheduler, spec)


def _check_optimizer(spec: Any, kwargs: Mapping[str, Any]) -> None:
    torch_names = [n for n, c in vars(torch.optim).items() if isinstance(c, type) and issubclass(c, Optimizer)]
    if isinstance(spec, type):
        if not issubclass(spec, Optimizer):
            raise ConfigError(f"optimizer={spec.__name__} is not a torch.optim.Optimizer subclass")
    elif not isinstance(spec, str) or (spec not in OPTIMIZERS and spec not in torch_names):
        raise ConfigError(
            _not_allowed(
                "optimizer", spec, list(OPTIMIZERS), "the name of a torch.optim optimizer or an Optimizer subclass"
            )
        )
    reserved = {"params", "lr", "weight_decay"} & set(kwargs)
    if reserved:
        raise ConfigError(f"optimizer_kwargs may not set {sorted(reserved)}: use the Trainer options lr and l2 instead")
    _check_kwargs("optimizer_kwargs", resolve_optimizer(spec), kwargs, skip=1)


def _check_lr_scheduler(spec: Any, kwargs: Mapping[str, Any]) -> None:
    torch_names = [
        n for n, c in vars(torch.optim.lr_scheduler).items() if isinstance(c, type) and issubclass(c, LRScheduler)
    ]
    if isinstance(spec, type):
        if not issubclass(spec, LRScheduler):
            raise ConfigError(f"lr_scheduler={spec.__name__} is not a torch.optim.lr_scheduler.LRScheduler subclass")
    elif not isinstance(spec, str) or (spec not in LR_SCHEDULERS and spec not in torch_names):
        raise ConfigError(
            _not_allowed(
                "lr_scheduler", spec, list(LR_SCHEDULERS), "the name of a torch.optim.lr_scheduler class or a subclass"
            )
        )
    cls = resolve_lr_scheduler(spec)
    if cls is None:
        if kwargs:
            raise ConfigError(
                f"lr_scheduler='constant' is no schedule and takes no lr_scheduler_kwargs, got {dict(kwargs)}"
            )
        return
    _check_kwargs("lr_scheduler_kwargs", cls, kwargs, skip=1)


def _in_module(spec: Any, module: Any) -> bool:
    """A name, or a class that `module` exports under its own name (so that the name finds it again)."""
    return not isinstance(spec, type) or getattr(module, spec.__name__, None) is spec


def _check_kwargs(key: str, cls: type, kwargs: Mapping[str, Any], skip: int) -> None:
    """Check that `cls(...)` accepts these keywords (after its first `skip` positional arguments)."""
    params = list(inspect.signature(cls).parameters.values())[skip:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    names = [p.name for p in params]
    for name in kwargs:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"{key}: {cls.__name__} takes no option {name!r}.{hint} It takes: {', '.join(names)}.")


def _normalise_weighting(spec: Any) -> WeightingSpec:
    """A name, a (name, kwargs) tuple or a Balancer; `{'name': n, **kw}` and YAML lists become the tuple."""
    if isinstance(spec, Balancer):
        return spec
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise ConfigError(f"weighting={dict(spec)!r} needs a 'name' key: {{'name': 'dwa', **options}}")
        spec = (spec["name"], {k: v for k, v in spec.items() if k != "name"})
    if isinstance(spec, (list, tuple)):
        if len(spec) != 2 or not isinstance(spec[0], str) or not isinstance(spec[1], Mapping):
            raise ConfigError(f"weighting={spec!r} must be (name, {{options}}), e.g. ('dwa', {{'T': 2.0}})")
        name, kwargs = spec[0], MappingProxyType(dict(spec[1]))
    elif isinstance(spec, str):
        name, kwargs = spec, None
    else:
        raise ConfigError(
            f"weighting={spec!r} must be a balancer name, (name, options), {{'name': ..., **options}} or a Balancer"
        )
    if not is_registered(name):
        raise ConfigError(_not_allowed("weighting", name, available()))
    return name if kwargs is None else (name, kwargs)


def _check_batch_scheduler(spec: Any) -> None:
    if isinstance(spec, str):
        if spec not in SCHEDULERS:
            raise ConfigError(_not_allowed("batch_scheduler", spec, sorted(SCHEDULERS), "a BatchScheduler object"))
    elif not isinstance(spec, BatchScheduler):
        raise ConfigError(f"batch_scheduler={spec!r} is neither a scheduler name nor a mtlkit.data.BatchScheduler")


def _device(value: Any) -> torch.device:
    try:
        return torch.device(value)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device={value!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')") from err


def _frozen_kwargs(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{key} must be a mapping of option names to values, got {value!r}")
    return MappingProxyType(dict(value))


def _names(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{key} must be a name or a list of names, got {value!r}")


def _int(config: TrainerConfig, key: str, minimum: int) -> None:
    value = getattr(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")


def _number(config: TrainerConfig, key: str, positive: bool = False) -> None:
    value = getattr(config, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (positive and value == 0):
        raise ConfigError(f"{key} must be a {'positive' if positive else 'non-negative'} number, got {value!r}")


def _choice(config: TrainerConfig, key: str, allowed: Sequence[str]) -> None:
    value = getattr(config, key)
    if value not in allowed:
        raise ConfigError(_not_allowed(key, value, allowed))


def _not_allowed(key: str, value: Any, allowed: Sequence[str], also: str | None = None) -> str:
    choices = ", ".join(map(repr, allowed)) + (f", or {also}" if also else "")
    close = difflib.get_close_matches(value, list(allowed), n=3) if isinstance(value, str) else []
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"{key}={value!r} is not allowed.{hint} Choose one of {choices}."


def _set(config: TrainerConfig, key: str, value: Any) -> None:
    object.__setattr__(config, key, value)  # normalising a frozen dataclass in __post_init__


# --- Snorkel's nested Trainer options ------------------------------------------------------

# nested key -> its options -> the flat option it sets (None: handled in `from_snorkel_options`)
_SNORKEL_NESTED: dict[str, dict[str, str | None]] = {
    "lr_scheduler_config": {
        "warmup_steps": "warmup_steps",
        "warmup_unit": "warmup_unit",
        "warmup_percentage": None,
        "min_lr": None,
        "exponential_config": None,
        "step_config": None,
    },
    "optimizer_config": {"sgd_config": None, "adam_config": None, "adamax_config": None},
    "log_writer_config": {"log_dir": None, "run_name": None},
    "checkpointer_config": {
        "checkpoint_dir": "checkpoint_dir",
        "checkpoint_metric": "checkpoint_metric",
        "checkpoint_runway": "checkpoint_runway",
        "checkpoint_factor": None,
        "checkpoint_task_metrics": None,
        "checkpoint_clear": None,
    },
    "log_manager_config": {"counter_unit": None, "evaluation_freq": None},
    "model_config": {"device": None, "dataparallel": None},
}


def from_snorkel_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """Snorkel's Trainer options, nested or not, as mtlkit's flat options.

    `lr_scheduler_config` gives warmup_steps/warmup_unit (`warmup_percentage` p of the
    run becomes p x n_epochs epochs) and, from `exponential_config`/`step_config`, the
    chosen schedule's `lr_scheduler_kwargs`; `optimizer_config` gives the chosen
    optimizer's `optimizer_kwargs`; `log_writer` gives `log_writers`;
    `log_writer_config` gives `log_dir` (joined with `run_name`); `checkpointer_config`
    gives checkpoint_dir/metric/runway and `checkpoint_every` = checkpoint_factor x
    evaluate_every; `log_manager_config` (counter_unit 'epochs') gives `evaluate_every`;
    `model_config`'s device gives `device` (-1: the CPU). A flat option set both ways is
    an error. Options with no mtlkit counterpart are accepted at their Snorkel defaults
    (`min_lr=0`, `checkpoint_task_metrics=None`, `checkpoint_clear`, `dataparallel`) and
    refused otherwise.
    """
    flat = {k: v for k, v in config.items() if k not in _SNORKEL_NESTED and k != "log_writer"}
    nested = {k: _nested(k, config[k]) for k in _SNORKEL_NESTED if k in config and config[k] is not None}

    def put(key: str, value: Any, source: str) -> None:
        if key in flat:
            raise ConfigError(f"{source} sets {key}, which is also given as a Trainer option; give it once")
        flat[key] = value

    if "log_writer" in config:
        writer = config["log_writer"]
        if writer not in LOG_WRITERS:
            raise ConfigError(f"Unrecognized writer option log_writer={writer!r}; choose one of {list(LOG_WRITERS)}")
        put("log_writers", (writer,), "log_writer")
    for name, options in nested.items():
        for key, target in _SNORKEL_NESTED[name].items():
            if key in options and target is not None:
                put(target, options[key], f"{name}[{key!r}]")
    lr = nested.get("lr_scheduler_config", {})
    if lr.get("warmup_percentage") and not lr.get("warmup_steps"):
        put(
            "warmup_steps",
            lr["warmup_percentage"] * config.get("n_epochs", 1),
            "lr_scheduler_config['warmup_percentage']",
        )
        put("warmup_unit", "epochs", "lr_scheduler_config['warmup_percentage']")
    if lr.get("min_lr"):
        raise ConfigError(
            "lr_scheduler_config['min_lr'] has no mtlkit counterpart; leave it 0, or pass an LRScheduler class"
        )
    schedule = config.get("lr_scheduler", "constant")
    for key, name in (("exponential_config", "exponential"), ("step_config", "step")):
        if key in lr and schedule == name:  # the other schedule's options are ignored, as in Snorkel
            put(
                "lr_scheduler_kwargs",
                dict(_nested(f"lr_scheduler_config[{key!r}]", lr[key])),
                f"lr_scheduler_config[{key!r}]",
            )
    optimizer = config.get("optimizer", "adam")
    sub = f"{optimizer}_config"
    if sub in nested.get("optimizer_config", {}):
        put(
            "optimizer_kwargs",
            dict(_nested(f"optimizer_config[{sub!r}]", nested["optimizer_config"][sub])),
            f"optimizer_config[{sub!r}]",
        )
    writer_config = nested.get("log_writer_config", {})
    if writer_config:
        log_dir = writer_config.get("log_dir", "logs")
        run_name = writer_config.get("run_name")
        if not isinstance(log_dir, (str, os.PathLike)):
            raise ConfigError(f"log_writer_config['log_dir'] must be a path, got {log_dir!r}")
        put("log_dir", os.path.join(log_dir, run_name) if run_name else os.fspath(log_dir), "log_writer_config")
    manager = nested.get("log_manager_config", {})
    if manager.get("counter_unit", "epochs") != "epochs":
        raise ConfigError(
            f"log_manager_config['counter_unit']={manager['counter_unit']!r}: mtlkit's Trainer evaluates after whole "
            "epochs; use counter_unit 'epochs' (or the flat option evaluate_every)"
        )
    if "evaluation_freq" in manager:
        freq = manager["evaluation_freq"]
        if isinstance(freq, bool) or not isinstance(freq, (int, float)) or not float(freq).is_integer():
            raise ConfigError(f"log_manager_config['evaluation_freq'] must be a whole number of epochs, got {freq!r}")
        put("evaluate_every", int(freq), "log_manager_config['evaluation_freq']")
    checkpointer = nested.get("checkpointer_config", {})
    if checkpointer.get("checkpoint_task_metrics"):
        raise ConfigError(
            "checkpointer_config['checkpoint_task_metrics'] has no Trainer counterpart (the Trainer keeps the best model "
            "of checkpoint_metric only); use mtlkit.Checkpointer directly for several metrics"
        )
    if "checkpoint_factor" in checkpointer:
        put(
            "checkpoint_every", checkpointer["checkpoint_factor"] * flat.get("evaluate_every", 1), "checkpointer_config"
        )
    device = nested.get("model_config", {}).get("device")
    if device is not None:
        put("device", "cpu" if device == -1 else device, "model_config['device']")
    return flat


def _nested(name: str, value: Any) -> Mapping[str, Any]:
    """A nested option as a mapping (a dict, or a Snorkel Config NamedTuple); unknown keys refused."""
    if hasattr(value, "_asdict"):
        value = value._asdict()
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name} must be a dict of options, got {value!r}")
    known = _SNORKEL_NESTED.get(name)
    if known is not None:
        for key in value:
            if key not in known:
                close = difflib.get_close_matches(str(key), list(known), n=3)
                hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ConfigError(f"unknown option {key!r} in {name}.{hint} Options: {', '.join(known)}.")
    return value
