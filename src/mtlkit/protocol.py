"""The small protocol through which the Trainer drives any multi-task model.

`MultitaskClassifier` (Snorkel flows), `MTLModel` (torchMTL dict graphs) and every
architecture in `mtlkit.architectures` implement it, so one Trainer, one set of
balancers and one scoring loop serve all three front doors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, runtime_checkable

from torch import Tensor, nn


@dataclass
class StepOutput:
    """Per-task results of one training forward pass.

    `losses` holds one scalar per task that has at least one labelled row in the
    batch (tasks without labels are absent, not zero). `shared_reps` holds the
    shared representation tensor(s) of this forward when the model computes task
    gradients at the representation (`rep_grad`), else `None`.
    """

    losses: dict[str, Tensor]
    counts: dict[str, int] = field(default_factory=dict)
    shared_reps: list[Tensor] | None = None


@runtime_checkable
class MultiTaskModel(Protocol):
    """What the Trainer, the balancers and the scoring loop need from a model."""

    @property
    def task_names(self) -> list[str]:
        """All task names, in a stable order."""

    def training_step(self, X: Mapping[str, Any] | Tensor, Y: Mapping[str, Tensor]) -> StepOutput:
        """Forward the batch and return the loss of each task labelled in `Y`."""

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters used by more than one task (where gradient balancers act)."""

    def task_outputs(self, X: Mapping[str, Any] | Tensor, task_names: list[str]) -> dict[str, Tensor]:
        """Outputs for scoring (probabilities for classifiers, values for regressors)."""

    def scorers(self) -> Mapping[str, Any]:
        """The `Scorer` of each task that has one."""
