"""The Trainer's side of the step context (`mtlkit.weighting.context`): what balancers that declare `needs` get.

`StepContexts` is built once per `fit`. Before each `backward` the Trainer calls
`begin(batch, loader, lr)`, which sets `balancer.context` when the balancer declares any
need; after `optimizer.step()` it calls `after_step()`, which, for "post_step_losses",
recomputes the batch's losses with one no-grad forward and calls `balancer.update`.
Extra training batches come from the step's own loader, validation batches from the
validation loaders in turn; both streams restart each epoch (`start_epoch`), so a run
resumed at an epoch boundary draws the same batches.

Under torch.distributed every rank draws from its own shard: the step's training loader
is already the rank's shard, and each validation loader is split the same way
(`shard_training_loader`), so the ranks' draws together are the global batch one process
with N times the batch size would draw. `forward` gives the global batch's losses, and
the balancer reduces what it computes from them with the collectives the strategy passes
to its `backward` (`mtlkit.weighting.context.global_mean`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader

from mtlkit.data import move_to_device
from mtlkit.errors import ConfigError
from mtlkit.protocol import StepOutput
from mtlkit.training.distributed import shard_training_loader
from mtlkit.weighting import Balancer
from mtlkit.weighting.context import (
    EXTRA_TRAIN_BATCH,
    POST_STEP_LOSSES,
    VALID_BATCH,
    StepContext,
    needs_of,
    set_values,
)

if TYPE_CHECKING:
    from mtlkit.protocol import TrainableModel


class StepContexts:
    """Builds each step's `StepContext` and owns the extra batch streams.

    `forward(X, Y)` is the Trainer's training forward (device, autocast; under
    torch.distributed, the global batch's losses). With `distributed`, the validation
    batches come from this rank's shard of each validation loader.
    Refuses, before training, what it cannot provide: validation batches without a
    validation loader, or (distributed) from a validation loader that cannot be sharded.
    """

    def __init__(
        self,
        balancer: Balancer,
        model: TrainableModel,
        valid_loaders: list[DataLoader],
        forward: Callable[[Any, Any], StepOutput],
        device: torch.device,
        distributed: bool,
        valid_split: Sequence[str],
    ) -> None:
        self.balancer: Any = balancer  # read duck-typed: `context` and `update` (see mtlkit.weighting.context)
        self.model, self.valid_loaders = model, valid_loaders
        self.forward, self.device = forward, device
        self.needs = needs_of(balancer)
        name = type(balancer).__name__
        if VALID_BATCH in self.needs and not valid_loaders:
            raise ConfigError(
                f"{name} needs a validation batch each step: pass a dataloader whose dataset.split is one of "
                f"valid_split={list(valid_split)}"
            )
        if distributed and VALID_BATCH in self.needs:
            self.valid_loaders = _shards(valid_loaders, name)
        self._streams: dict[tuple[str, int], Iterator[Any]] = {}
        self._batch: Any = None

    def start_epoch(self) -> None:
        """Restart the extra batch streams (each epoch draws the same batches, also after a resume)."""
        self._streams = {}

    def begin(self, batch: Any, loader: DataLoader, lr: float) -> None:
        """Hand the balancer this step's context, if it declares any need."""
        self._batch = batch
        if not self.needs:
            return
        self.balancer.context = StepContext(
            batch=batch,
            losses=self.losses,
            next_train_batch=lambda: self._draw(EXTRA_TRAIN_BATCH, loader),
            next_valid_batch=lambda: self._draw(VALID_BATCH, None),
            shared_parameters=list(self.model.shared_parameters()),
            parameters=[p for p in self.model.parameters() if p.requires_grad],
            lr=lr,
        )

    def after_step(self) -> None:
        """After `optimizer.step()`: FAMO's exact update ("post_step_losses"); the context expires."""
        if self.needs:
            self.balancer.context = None
        if POST_STEP_LOSSES in self.needs:
            with torch.no_grad():
                self.balancer.update(self.losses(self._batch))

    def losses(self, batch: Any) -> dict[str, Tensor]:
        """The model's losses on `batch` (the global batch's under torch.distributed); buffers are left as they were."""
        buffers = list(self.model.buffers())
        saved = [b.detach().clone() for b in buffers]
        try:
            out = self.forward(*batch)
        finally:
            set_values(buffers, saved)
        return out.losses

    def _draw(self, need: str, loader: DataLoader | None) -> Any:
        if need not in self.needs:
            raise RuntimeError(f"{type(self.balancer).__name__} draws a {need} but does not declare it in `needs`")
        key = (need, id(loader))
        if key not in self._streams:
            self._streams[key] = _endless([loader] if loader is not None else self.valid_loaders)
        return move_to_device(next(self._streams[key]), self.device)


def _shards(loaders: list[DataLoader], name: str) -> list[DataLoader]:
    """This rank's shard of each validation loader, split as the training loaders are (rank 0's loader seeds)."""
    seeds = [getattr(loader, "seed", None) for loader in loaders]
    dist.broadcast_object_list(seeds, src=0)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    try:
        return [shard_training_loader(loader, world_size, rank, seed) for loader, seed in zip(loaders, seeds)]
    except ConfigError as error:
        raise ConfigError(f"{name} draws validation batches from each rank's shard: {error}") from None


def _endless(loaders: list[DataLoader]) -> Iterator[Any]:
    """The loaders' batches one loader after another, restarting at the end."""
    while True:
        drawn = False
        for loader in loaders:
            for batch in loader:
                drawn = True
                yield batch
        if not drawn:
            datasets: list[Any] = [loader.dataset for loader in loaders]  # DictDatasets: they have a name and split
            names = [f"{dataset.name}/{dataset.split}" for dataset in datasets]
            raise ConfigError(f"the dataloaders {names} hold no batch")
