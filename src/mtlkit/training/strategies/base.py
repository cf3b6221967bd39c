"""What a training strategy does for the Trainer, and the single-process strategy.

A strategy owns everything that depends on how many processes train: the device, the
process group, the model wrapper, the training data's shards, the collectives a balancer
needs, the reduction of evaluation results, and which process writes. The Trainer calls
these methods in this order and never asks which strategy it holds:

    launch → setup → setup_optimizer → per step: training_step (inside global_step) → backward
           → per epoch: epoch_end, score, run_on_main → teardown
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mtlkit import metrics
from mtlkit.protocol import MultiTaskModel, StepOutput
from mtlkit.weighting import Balancer, BalanceResult


class Strategy:
    """Base class of the training strategies (`SingleProcess`, `DDPStrategy`).

    `rank` and `world_size` describe this process's place in the run; `timings` holds the
    seconds spent in each kind of collective during the last `fit` (empty in one process).
    """

    def __init__(self) -> None:
        self.rank = 0
        self.world_size = 1
        self.timings: dict[str, float] = {}

    @property
    def is_main(self) -> bool:
        """True on the process that logs, shows progress and writes checkpoints (rank 0)."""
        return self.rank == 0

    def launch(self, device: torch.device | None) -> torch.device | None:
        """Join the run; return the device to train on (None: keep the model where it is)."""
        raise NotImplementedError

    def setup(self, model: MultiTaskModel, balancer: Balancer, train: Sequence[DataLoader]) -> list[DataLoader]:
        """Prepare a fit of `model` (already on its device): wrap it, align the processes; the training loaders to use."""
        raise NotImplementedError

    def setup_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """After `setup`: the optimizer of this fit, built on the model's parameters as `setup` left them."""

    def global_step(
        self, local_step: Callable[[], tuple[StepOutput, Any]], task_names: list[str], loss_dtype: torch.dtype
    ) -> tuple[StepOutput, Any]:
        """Run `local_step` (load a batch, `training_step`); the losses the balancer gets, and the batch's dataset."""
        raise NotImplementedError

    def training_step(self, X: Any, Y: Any) -> StepOutput:
        """The model's `training_step` on a batch on the training device, through the strategy's model wrapper."""
        raise NotImplementedError

    def backward(
        self,
        balancer: Balancer,
        losses: dict[str, Tensor],
        shared_params: Sequence[Tensor] | None,
        shared_reps: list[Tensor] | None,
    ) -> BalanceResult:
        """Fill the `.grad` of every trained parameter with the global batch's gradient."""
        raise NotImplementedError

    def epoch_end(self, model: nn.Module) -> None:
        """After each training epoch, before evaluation."""

    def score(self, model: MultiTaskModel, loaders: list[DataLoader]) -> dict[str, float]:
        """`metrics.score` of the loaders over all of their examples, the same on every process."""
        raise NotImplementedError

    def run_on_main(self, write: Callable[[], None], what: str) -> None:
        """Call `write` (a checkpoint write) on the main process; `what` names it if it fails."""
        raise NotImplementedError

    def teardown(self) -> None:
        """Drop what `setup` built for one fit (the process group stays for the next fit)."""


class SingleProcess(Strategy):
    """Train in this process alone, on the configured device (or where the model is)."""

    def launch(self, device: torch.device | None) -> torch.device | None:
        self.timings = {}
        return device

    def setup(self, model: MultiTaskModel, balancer: Balancer, train: Sequence[DataLoader]) -> list[DataLoader]:
        self._model: MultiTaskModel | None = model
        return list(train)

    def global_step(
        self, local_step: Callable[[], tuple[StepOutput, Any]], task_names: list[str], loss_dtype: torch.dtype
    ) -> tuple[StepOutput, Any]:
        return local_step()

    def training_step(self, X: Any, Y: Any) -> StepOutput:
        if self._model is None:
            raise RuntimeError("SingleProcess.training_step before setup")
        return self._model.training_step(X, Y)

    def backward(
        self,
        balancer: Balancer,
        losses: dict[str, Tensor],
        shared_params: Sequence[Tensor] | None,
        shared_reps: list[Tensor] | None,
    ) -> BalanceResult:
        return balancer.backward(losses, shared_params=shared_params, shared_reps=shared_reps)

    def score(self, model: MultiTaskModel, loaders: list[DataLoader]) -> dict[str, float]:
        return metrics.score(model, loaders)

    def run_on_main(self, write: Callable[[], None], what: str) -> None:
        write()

    def teardown(self) -> None:
        self._model = None


def trained_parameters(*modules: nn.Module) -> list[Tensor]:
    """The parameters of `modules` that require grad, each once."""
    seen: set[int] = set()
    params: list[Tensor] = []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params
