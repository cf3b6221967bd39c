"""Tracks the checkpoint metric across evaluations: the best value, its epoch, and patience."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from mtlkit.errors import ConfigError


class MetricMonitor:
    """Follows `key` (to minimise or maximise) once `runway` epochs have passed.

    `update` returns whether the value improved on the best so far; `should_stop` turns
    true after `patience` evaluations in a row without improvement (never when None).
    """

    def __init__(self, key: str, mode: str, runway: int = 0, patience: int | None = None) -> None:
        self.key = key
        self.mode = mode
        self.runway = runway
        self.patience = patience
        self.best: float | None = None
        self.best_epoch: float | None = None
        self.bad_evaluations = 0

    def update(self, scores: Mapping[str, float], epoch: float) -> bool:
        """Take the scores of the evaluation after `epoch` epochs; True when the metric improved."""
        if self.key not in scores:
            close = difflib.get_close_matches(self.key, list(scores), n=5, cutoff=0.4)
            listed = ", ".join(map(repr, close or sorted(scores)))
            raise ConfigError(
                f"checkpoint_metric {self.key!r} is not among the scores of this run; "
                f"{'close keys' if close else 'the scores are'}: {listed}"
            )
        if epoch < self.runway:
            return False
        value = float(scores[self.key])
        better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if better:
            self.best, self.best_epoch, self.bad_evaluations = value, epoch, 0
        else:
            self.bad_evaluations += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_evaluations >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_evaluations": self.bad_evaluations}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.bad_evaluations = state["bad_evaluations"]
