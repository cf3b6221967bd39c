"""Where the Trainer writes its records: JSON lines and TensorBoard.

A record is a flat `{name: number}` dict logged at a global step (the number of optimizer
steps so far). Training records hold `train/loss`, `train/loss/<task>`,
`train/weight/<task>`, `train/lr` and the balancer's statistics; evaluation records hold
the score keys `task/dataset/split/metric`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Protocol

from mtlkit.errors import ConfigError


class Logger(Protocol):
    def log(self, values: Mapping[str, float], step: int, epoch: int) -> None: ...

    def close(self) -> None: ...


class JsonLinesLogger:
    """One JSON object per record in `log_dir/log.jsonl`: `{"step", "epoch", **values}`.

    A fresh run truncates the file; a resumed run appends to it. Non-finite values are
    written as null (JSON has no NaN).
    """

    def __init__(self, log_dir: str | Path, append: bool = False) -> None:
        path = Path(log_dir) / "log.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("a" if append else "w", encoding="utf-8")

    def log(self, values: Mapping[str, float], step: int, epoch: int) -> None:
        record = {"step": step, "epoch": epoch}
        record.update({k: (float(v) if math.isfinite(v) else None) for k, v in values.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardLogger:
    """Scalars in TensorBoard event files in `log_dir`; a resumed run drops events after its step."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ConfigError(
                "log_writers=['tensorboard'] needs the tensorboard package: "
                "pip install 'mtlkit[tensorboard]' (or use log_writers=['json'])"
            ) from err
        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log(self, values: Mapping[str, float], step: int, epoch: int) -> None:
        for name, value in values.items():
            self._writer.add_scalar(name, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def build_loggers(writers: tuple[str, ...], log_dir: str, resume_step: int | None) -> list[Logger]:
    """The loggers named in `writers`; `resume_step` is the step a resumed run continues from."""
    loggers: list[Logger] = []
    for writer in writers:
        if writer == "json":
            loggers.append(JsonLinesLogger(log_dir, append=resume_step is not None))
        else:
            loggers.append(TensorBoardLogger(log_dir, purge_step=resume_step))
    return loggers
