"""Where the Trainer writes its records (JSON and TensorBoard), with Snorkel's writer API.

A record is a flat `{name: number}` dict logged at a global step (the number of optimizer
steps so far). Training records hold `train/loss`, `train/loss/<task>`,
`train/weight/<task>`, `train/lr` and the balancer's statistics; evaluation records hold
the score keys `task/dataset/split/metric`.

`LogWriter` and `TensorBoardWriter` are the Trainer's 'json' and 'tensorboard' writers and
Snorkel's classes of those names (`add_scalar`, `write_config`, `write_log`, `write_text`,
`write_json`, `cleanup`); `LogManager` is Snorkel's evaluation/checkpoint counter.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mtlkit.errors import ConfigError
from mtlkit.training.checkpoint import Checkpointer

__all__ = [
    "LogManager",
    "LogManagerConfig",
    "LogWriter",
    "LogWriterConfig",
    "Logger",
    "TensorBoardWriter",
    "build_loggers",
]

COUNTER_UNITS = ("epochs", "batches", "points")


class Logger(Protocol):
    def log(self, values: Mapping[str, float], step: int, epoch: int) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class LogWriterConfig:
    """Where a `LogWriter` writes: `log_dir/run_name` (just `log_dir` when run_name is None)."""

    log_dir: str = "logs"
    run_name: str | None = None


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None  # JSON has no NaN


class LogWriter:
    """Writes a run's records as JSON into `log_dir` (joined with `run_name` when given).

    As the Trainer's 'json' writer, `log` appends one JSON object per record to
    `log.jsonl` (`{"step", "epoch", **values}`; a fresh run truncates the file, a resumed
    run, `append=True`, appends). Every value also goes to `add_scalar`, and `cleanup`
    (or `close`) writes the collected scalars as Snorkel's `log.json`:
    `{name: [[step, value], ...]}`. Non-finite values are written as null.

    Departure from Snorkel: without `run_name` the files go into `log_dir` itself
    (Snorkel makes a date/time subfolder).
    """

    def __init__(
        self, log_dir: str | os.PathLike = "logs", run_name: str | None = None, *, append: bool = False
    ) -> None:
        self.config = LogWriterConfig(os.fspath(log_dir), run_name)
        self.run_name = run_name
        self.log_dir = os.path.join(self.config.log_dir, run_name) if run_name else self.config.log_dir
        Path(self.log_dir).mkdir(parents=True, exist_ok=True)
        self.run_log: defaultdict[str, list[list[float | None]]] = defaultdict(list)
        self._append = append
        if append and (Path(self.log_dir) / "log.json").is_file():
            self.run_log.update(json.loads((Path(self.log_dir) / "log.json").read_text(encoding="utf-8")))
        self._lines: Any = None  # log.jsonl, opened by the first `log`

    def log(self, values: Mapping[str, float], step: int, epoch: int) -> None:
        """One Trainer record: a line of `log.jsonl`, and each value through `add_scalar`."""
        if self._lines is None:
            self._lines = (Path(self.log_dir) / "log.jsonl").open("a" if self._append else "w", encoding="utf-8")
        record = {"step": step, "epoch": epoch, **{k: _finite(v) for k, v in values.items()}}
        self._lines.write(json.dumps(record) + "\n")
        self._lines.flush()
        for name, value in values.items():
            self.add_scalar(name, value, step)

    def add_scalar(self, name: str, value: float, step: float) -> None:
        """Record `value` of `name` at `step` (written by `write_log`/`cleanup`)."""
        self.run_log[name].append([step, _finite(value)])

    def write_config(self, config: Any, config_filename: str = "config.json") -> None:
        """Write a config (a TrainerConfig or other dataclass, a NamedTuple, or a mapping) as JSON."""
        self.write_json(_as_dict(config), config_filename)

    def write_log(self, log_filename: str) -> None:
        """Write the scalars collected so far: `{name: [[step, value], ...]}`."""
        self.write_json(self.run_log, log_filename)

    def write_text(self, text: str, filename: str) -> None:
        """Write `text` to `filename` in the log folder."""
        (Path(self.log_dir) / filename).write_text(text, encoding="utf-8")

    def write_json(self, dict_to_write: Mapping[str, Any], filename: str) -> None:
        """Write a JSON-compatible mapping to `filename` in the log folder."""
        (Path(self.log_dir) / filename).write_text(json.dumps(dict_to_write), encoding="utf-8")

    def cleanup(self) -> None:
        """Write `log.json` and close `log.jsonl`."""
        self.write_log("log.json")
        if self._lines is not None:
            self._lines.close()
            self._lines = None

    def close(self) -> None:
        self.cleanup()


class TensorBoardWriter(LogWriter):
    """Writes records as TensorBoard scalars in the log folder (needs the tensorboard package).

    A resumed run (`purge_step`) drops the events after the step it continues from.
    """

    def __init__(
        self, log_dir: str | os.PathLike = "logs", run_name: str | None = None, *, purge_step: int | None = None
    ) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ConfigError(
                "log_writers=['tensorboard'] needs the tensorboard package: "
                "pip install 'mtlkit[tensorboard]' (or use log_writers=['json'])"
            ) from err
        super().__init__(log_dir, run_name)
        self.writer = SummaryWriter(log_dir=self.log_dir, purge_step=purge_step)

    def log(self, values: Mapping[str, float], step: int, epoch: int) -> None:
        for name, value in values.items():
            self.add_scalar(name, value, step)
        self.writer.flush()

    def add_scalar(self, name: str, value: float, step: float) -> None:
        self.writer.add_scalar(name, value, global_step=step)

    def write_config(self, config: Any, config_filename: str = "config.json") -> None:
        """Write the config as JSON and add it to TensorBoard as text."""
        super().write_config(config, config_filename)
        self.writer.add_text(tag="config", text_string=json.dumps(_as_dict(config)))

    def cleanup(self) -> None:
        self.writer.close()


def _as_dict(config: Any) -> dict[str, Any]:
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if hasattr(config, "_asdict"):
        return config._asdict()
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"write_config takes a dataclass, a NamedTuple or a mapping, got {type(config).__name__}")


def build_loggers(writers: tuple[str, ...], log_dir: str, resume_step: int | None) -> list[Logger]:
    """The writers named in `writers`; `resume_step` is the step a resumed run continues from."""
    loggers: list[Logger] = []
    for writer in writers:
        if writer == "json":
            loggers.append(LogWriter(log_dir, append=resume_step is not None))
        else:
            loggers.append(TensorBoardWriter(log_dir, purge_step=resume_step))
    return loggers


@dataclass(frozen=True)
class LogManagerConfig:
    """How often a `LogManager` triggers evaluation: every `evaluation_freq` `counter_unit`s."""

    counter_unit: str = "epochs"
    evaluation_freq: float = 1.0


class LogManager:
    """Snorkel's training counter: says when to evaluate and when to checkpoint.

    `update(batch_size)` after each batch counts points, batches and epochs;
    `trigger_evaluation()` is true once `evaluation_freq` `counter_unit`s have passed
    since the last evaluation, and `trigger_checkpointing()` once the checkpointer's
    `checkpoint_factor` evaluations have. `cleanup(model)` closes the writer, clears the
    checkpointer's files and returns the model with its best weights.

    The mtlkit Trainer evaluates every `evaluate_every` epochs and does not use one;
    this is for loops written around Snorkel's API.
    """

    def __init__(
        self,
        n_batches_per_epoch: int,
        log_writer: LogWriter | None = None,
        checkpointer: Checkpointer | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            self.config = LogManagerConfig(**kwargs)
        except TypeError as err:
            raise ConfigError(f"LogManager: {err}; its options are counter_unit and evaluation_freq") from err
        if self.config.counter_unit not in COUNTER_UNITS:
            raise ValueError(
                f"Unrecognized counter_unit {self.config.counter_unit!r}; choose one of {list(COUNTER_UNITS)}"
            )
        if not n_batches_per_epoch > 0:
            raise ValueError(f"LogManager: n_batches_per_epoch must be positive, got {n_batches_per_epoch!r}")
        self.n_batches_per_epoch = n_batches_per_epoch
        self.log_writer = log_writer
        self.checkpointer = checkpointer
        self.counter_unit = self.config.counter_unit
        self.evaluation_freq = self.config.evaluation_freq
        self.point_count = self.point_total = 0
        self.batch_count = self.batch_total = 0
        self.epoch_count = self.epoch_total = 0.0
        self.unit_count = self.unit_total = 0.0
        self.trigger_count = 0  # evaluations since the last checkpoint

    def update(self, batch_size: int) -> None:
        """Count one batch of `batch_size` points."""
        self.point_count += batch_size
        self.point_total += batch_size
        self.batch_count += 1
        self.batch_total += 1
        self.epoch_count = self.batch_count / self.n_batches_per_epoch
        self.epoch_total = self.batch_total / self.n_batches_per_epoch
        unit = {"points": "point", "batches": "batch", "epochs": "epoch"}[self.counter_unit]
        self.unit_count = getattr(self, f"{unit}_count")
        self.unit_total = getattr(self, f"{unit}_total")

    def trigger_evaluation(self) -> bool:
        """True (and the counts since the last evaluation reset) when it is time to evaluate."""
        due = self.unit_count >= self.evaluation_freq
        if due:
            self.trigger_count += 1
            self.reset()
        return due

    def trigger_checkpointing(self) -> bool:
        """True when `checkpoint_factor` evaluations have passed since the last checkpoint."""
        if self.checkpointer is None:
            return False
        due = self.trigger_count >= self.checkpointer.checkpoint_factor
        if due:
            self.trigger_count = 0
        return due

    def reset(self) -> None:
        """Zero the counts since the last evaluation."""
        self.point_count = self.batch_count = 0
        self.epoch_count = self.unit_count = 0.0

    def cleanup(self, model: Any) -> Any:
        """Close the writer; clear the checkpointer's files and load the best model into `model`."""
        if self.log_writer is not None:
            self.log_writer.cleanup()
        if self.checkpointer is not None:
            self.checkpointer.clear()
            model = self.checkpointer.load_best_model(model)
        return model
