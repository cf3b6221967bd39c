"""Atomic checkpoint files that can never run code, and the random-number states they hold.

A checkpoint is a dict of tensors and plain Python values (numbers, strings, lists,
tuples, dicts), so `torch.load(weights_only=True)` reads it. It is written to a temporary
file in the target's directory, flushed to disk, then renamed over the target: a crash
leaves either the old file or the new one, never half of one.

`Checkpointer` is Snorkel's checkpoint manager built on these files and on the Trainer's
`MetricMonitor`.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from mtlkit.training.config import parse_metric
from mtlkit.training.monitor import MetricMonitor

FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write `state` to `path` atomically (temporary file in the same directory, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save({"format": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if os.name == "posix":  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class CheckpointError(ValueError):
    """A checkpoint file that is empty, truncated, corrupt or not written by mtlkit; the message names the file."""


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, onto the CPU, without unpickling code.

    The zip records' checksums are verified first (torch does not check them, so a flipped
    bit in a tensor would load silently); any damage raises `CheckpointError`.
    """
    path = Path(path)
    name = repr(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {name}")
    damaged = f"the checkpoint {name} is corrupt or truncated"
    if path.stat().st_size == 0:
        raise CheckpointError(f"{damaged}: the file is empty")
    try:
        with zipfile.ZipFile(path) as archive:
            bad_record = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise CheckpointError(
            f"{damaged}, or it is not an mtlkit checkpoint: not a complete torch zip archive ({err})"
        ) from None
    if bad_record is not None:
        raise CheckpointError(f"{damaged}: its record {bad_record!r} fails its checksum")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises weights_only=False, i.e. running the file's code: never
        raise CheckpointError(
            f"{name} is not an mtlkit checkpoint (it holds objects other than tensors and plain values), or it is "
            "corrupt; mtlkit loads only tensors and plain values and never runs code from a file"
        ) from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError) as err:
        raise CheckpointError(f"{damaged}: {str(err).split('. ')[0]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{name} is not an mtlkit Trainer checkpoint (format {FORMAT_VERSION})")
    return state


def rng_state() -> dict[str, Any]:
    """The global generators' states as tensors and plain values: torch (CPU, CUDA), python, numpy if imported."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        kind, keys, pos, has_gauss, cached = numpy.random.get_state()
        state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached)
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by `rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy

        kind, keys, pos, has_gauss, cached = state["numpy"]
        numpy.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's (if imported) and torch's global generators (all CUDA devices included)."""
    random.seed(seed)
    torch.manual_seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % 2**32)


@dataclass(frozen=True)
class CheckpointerConfig:
    """A `Checkpointer`'s options (Snorkel's names and defaults).

    checkpoint_dir: where the files go. checkpoint_factor: checkpoint every this many
    evaluations. checkpoint_metric: 'task/dataset/split/metric:min|max', the metric whose
    best model `load_best_model` loads. checkpoint_task_metrics: more such metrics to keep
    a best model for. checkpoint_runway: no checkpoint before this iteration.
    checkpoint_clear: `clear()` deletes the per-iteration files.
    """

    checkpoint_dir: str = "checkpoints"
    checkpoint_factor: int = 1
    checkpoint_metric: str = "model/all/train/loss:min"
    checkpoint_task_metrics: tuple[str, ...] | None = None
    checkpoint_runway: int = 0
    checkpoint_clear: bool = True


class Checkpointer:
    """Keeps model checkpoints and the best model by one or more metrics (Snorkel's API).

    `checkpoint(iteration, model, metric_dict)` writes the model's weights to
    `checkpoint_<iteration>.pth` and copies them to `best_model_<metric>.pth` (the
    metric's '/' written '_') for each tracked metric that improved. Files are written
    by `save_checkpoint` (atomic, tensors only) and read by `load_best_model` without
    unpickling code. Best values are tracked by the Trainer's `MetricMonitor`, one per
    metric; `best_metric_dict` holds them.

    The Trainer, with `checkpointing=True`, keeps one as `trainer.checkpointer` and
    passes it its `MetricMonitor` as `monitor`, the tracker of the Trainer's best model
    (written to `checkpoint_dir/best.pt`, with the full state in `last.pt`).
    """

    def __init__(
        self,
        counter_unit: str = "epochs",
        evaluation_freq: float = 1,
        *,
        monitor: MetricMonitor | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            self.config = CheckpointerConfig(**kwargs)
        except TypeError as err:
            names = ", ".join(f.name for f in fields(CheckpointerConfig))
            raise TypeError(f"Checkpointer: {err}; its options are {names}") from err
        config = self.config
        if not isinstance(config.checkpoint_runway, int) or config.checkpoint_runway < 0:
            raise ValueError(f"checkpoint_runway must be an integer >= 0, got {config.checkpoint_runway!r}")
        if not isinstance(config.checkpoint_dir, (str, os.PathLike)):
            raise TypeError(f"checkpoint_dir must be a path, got {config.checkpoint_dir!r}")
        self.checkpoint_freq = evaluation_freq * config.checkpoint_factor
        if not self.checkpoint_freq > 0:
            raise ValueError(
                f"checkpoint freq = evaluation_freq x checkpoint_factor = {evaluation_freq} x {config.checkpoint_factor} "
                "must be greater than 0"
            )
        metrics = [config.checkpoint_metric, *(config.checkpoint_task_metrics or ())]
        self.monitors = {
            key: MetricMonitor(key, mode, config.checkpoint_runway) for key, mode in map(parse_metric, metrics)
        }
        if monitor is not None:
            self.monitors[monitor.key] = monitor
        self.monitor = self.monitors[parse_metric(config.checkpoint_metric)[0]]
        self.checkpoint_unit = counter_unit
        self.checkpoint_dir = os.fspath(config.checkpoint_dir)
        self.checkpoint_factor = config.checkpoint_factor
        self.checkpoint_runway = config.checkpoint_runway
        self.checkpoint_clear = config.checkpoint_clear
        Path(self.checkpoint_dir).mkdir(parents=True, exist_ok=True)

    @property
    def best_metric_dict(self) -> dict[str, float]:
        """The best value so far of each tracked metric that has one."""
        return {key: m.best for key, m in self.monitors.items() if m.best is not None}

    def checkpoint(self, iteration: float, model: torch.nn.Module, metric_dict: dict[str, float]) -> None:
        """Write the model at `iteration` and the best model of each tracked metric that improved."""
        if iteration < self.checkpoint_runway:
            return
        path = Path(self.checkpoint_dir) / f"checkpoint_{iteration}.pth"
        save_checkpoint({"model": model.state_dict(), "iteration": iteration}, path)
        for key, monitor in self.monitors.items():
            if key in metric_dict and monitor.update(metric_dict, iteration):
                shutil.copyfile(path, self._best_path(key))

    def clear(self) -> None:
        """Delete the per-iteration files (the best models stay), when `checkpoint_clear`."""
        if self.checkpoint_clear:
            for path in Path(self.checkpoint_dir).glob("checkpoint_*.pth"):
                path.unlink()

    def load_best_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Load the best weights by `checkpoint_metric` into `model` (unchanged when none was written)."""
        if self.monitor.best is not None:
            model.load_state_dict(load_checkpoint(self._best_path(self.monitor.key))["model"])
        return model

    def _best_path(self, key: str) -> Path:
        return Path(self.checkpoint_dir) / f"best_model_{key.replace('/', '_')}.pth"
