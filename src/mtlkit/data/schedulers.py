"""Batch schedulers: in which order one epoch draws batches from several dataloaders.

Each scheduler has a pure core, `plan(batch_counts)`, that lists the dataloader index
of every step of the epoch as a function of `(seed, epoch)` only, so a resumed run and
every distributed rank (given the same batch counts) follow the same order.
`get_batches` then pulls the batches in that order (Snorkel's signature).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader

from mtlkit.data.seeding import generator

Batch = tuple[dict[str, Any], dict[str, Any]]


def _loader_name(dataloader: DataLoader) -> str:
    dataset = dataloader.dataset
    return f"{getattr(dataset, 'name', type(dataset).__name__)}/{getattr(dataset, 'split', '?')}"


class BatchScheduler(ABC):
    """Orders the batches of several dataloaders within an epoch.

    Call `set_epoch(epoch)` before each epoch; `get_batches` forwards the epoch to every
    loader that has `set_epoch` (e.g. `DictDataLoader`), so data order inside the
    loaders is reproducible too.
    """

    name: ClassVar[str]

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order `plan` and `get_batches` produce."""
        self.epoch = epoch

    @abstractmethod
    def plan(self, batch_counts: Sequence[int]) -> list[int]:
        """The dataloader index of each step of this epoch; `len(plan(...))` is the epoch length."""

    def get_batches(self, dataloaders: Sequence[DataLoader]) -> Iterator[tuple[Batch, DataLoader]]:
        """Yield `(batch, dataloader)` pairs in this epoch's order."""
        for dataloader in dataloaders:
            set_epoch = getattr(dataloader, "set_epoch", None)
            if set_epoch is not None:
                set_epoch(self.epoch)
        iterators: list[Iterator[Any] | None] = [None] * len(dataloaders)
        for index in self.plan([len(dataloader) for dataloader in dataloaders]):
            yield self._next_batch(dataloaders, iterators, index), dataloaders[index]

    @staticmethod
    def _next_batch(dataloaders: Sequence[DataLoader], iterators: list[Iterator[Any] | None], index: int) -> Batch:
        # A loader is (re)started when first used or exhausted: only temperature sampling asks for more than one pass.
        for _ in range(2):
            iterator = iterators[index]
            if iterator is None:
                iterator = iterators[index] = iter(dataloaders[index])
            try:
                return next(iterator)
            except StopIteration:
                iterators[index] = None
        raise ValueError(f"dataloader {index} ({_loader_name(dataloaders[index])}) yielded no batch; is it empty?")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed}, epoch={self.epoch})"


def _check_counts(batch_counts: Sequence[int]) -> None:
    for index, count in enumerate(batch_counts):
        if count < 0:
            raise ValueError(f"batch count of dataloader {index} is {count}; counts must be >= 0")


def _in_sequence(batch_counts: Sequence[int]) -> list[int]:
    _check_counts(batch_counts)
    return [index for index, count in enumerate(batch_counts) for _ in range(count)]


def _shuffle(order: list[int], seed: int, epoch: int) -> list[int]:
    permutation = torch.randperm(len(order), generator=generator(seed, epoch))
    return [order[i] for i in permutation.tolist()]


class SequentialScheduler(BatchScheduler):
    """All batches of the first dataloader, then all of the second, and so on."""

    name = "sequential"

    def plan(self, batch_counts: Sequence[int]) -> list[int]:
        return _in_sequence(batch_counts)


class ShuffledScheduler(BatchScheduler):
    """Every batch of every dataloader once per epoch, in a random order (Snorkel's default).

    Each step comes from dataloader i with probability proportional to its number of
    batches. The order is a function of `(seed, epoch)`.
    """

    name = "shuffled"

    def plan(self, batch_counts: Sequence[int]) -> list[int]:
        return _shuffle(_in_sequence(batch_counts), self.seed, self.epoch)


class RoundRobinScheduler(BatchScheduler):
    """One batch from each dataloader in turn; exhausted loaders drop out, so each batch is seen once."""

    name = "round_robin"

    def plan(self, batch_counts: Sequence[int]) -> list[int]:
        _check_counts(batch_counts)
        return [
            index
            for step in range(max(batch_counts, default=0))
            for index, count in enumerate(batch_counts)
            if step < count
        ]


class TemperatureScheduler(BatchScheduler):
    """Temperature sampling over datasets: dataset i gets a share p_i ∝ n_i^(1/T) of the steps.

    n_i is the number of batches of dataloader i; T=1 gives proportional sampling (the
    same steps as `shuffled`), T→∞ (`float("inf")`) uniform over datasets, as in
    multilingual pre-training (Arivazhagan et al., 2019, https://arxiv.org/abs/1907.05019).
    Departure from i.i.d. sampling: an epoch has `batches_per_epoch` steps (default
    N = Σ n_i) and dataloader i gets exactly q_i = N p_i of them, rounded by largest
    remainder (ties to the lower index) so that Σ q_i = N; the steps are then shuffled
    by `(seed, epoch)`. This keeps the realised proportions exact. A loader given
    more steps than it has batches is restarted (a new, differently shuffled pass);
    one given fewer yields only its first q_i batches this epoch.
    """

    name = "temperature"

    def __init__(self, temperature: float = 1.0, batches_per_epoch: int | None = None, seed: int = 0) -> None:
        super().__init__(seed)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 (1 = proportional, inf = uniform), got {temperature}")
        if batches_per_epoch is not None and batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be a positive integer or None, got {batches_per_epoch}")
        self.temperature = temperature
        self.batches_per_epoch = batches_per_epoch

    def probabilities(self, batch_counts: Sequence[int]) -> list[float]:
        """The share p_i ∝ n_i^(1/T) of each dataloader (0 for empty loaders)."""
        _check_counts(batch_counts)
        weights = [0.0 if n == 0 else float(n) ** (1.0 / self.temperature) for n in batch_counts]
        total = sum(weights)
        return [w / total for w in weights] if total > 0 else weights

    def quotas(self, batch_counts: Sequence[int]) -> list[int]:
        """The number of steps each dataloader gets this epoch (largest-remainder rounding of N p_i)."""
        probabilities = self.probabilities(batch_counts)
        steps = sum(batch_counts) if self.batches_per_epoch is None else self.batches_per_epoch
        if not any(probabilities):
            return [0] * len(batch_counts)
        exact = [steps * p for p in probabilities]
        quotas = [math.floor(x) for x in exact]
        by_remainder = sorted(range(len(exact)), key=lambda i: (quotas[i] - exact[i], i))
        for index in by_remainder[: steps - sum(quotas)]:
            quotas[index] += 1
        return quotas

    def plan(self, batch_counts: Sequence[int]) -> list[int]:
        return _shuffle(_in_sequence(self.quotas(batch_counts)), self.seed, self.epoch)

    def __repr__(self) -> str:
        return f"TemperatureScheduler(temperature={self.temperature}, batches_per_epoch={self.batches_per_epoch}, seed={self.seed}, epoch={self.epoch})"


SCHEDULERS: dict[str, type[BatchScheduler]] = {
    cls.name: cls for cls in (SequentialScheduler, ShuffledScheduler, RoundRobinScheduler, TemperatureScheduler)
}


def get_scheduler(scheduler: str | BatchScheduler, **kwargs: Any) -> BatchScheduler:
    """A scheduler by name (`kwargs` go to its constructor, e.g. `seed`, `temperature`), or the instance given."""
    if isinstance(scheduler, BatchScheduler):
        if kwargs:
            raise ValueError(
                f"got a scheduler instance {scheduler!r} and constructor arguments {sorted(kwargs)}; pass one or the other"
            )
        return scheduler
    if scheduler not in SCHEDULERS:
        raise ValueError(
            f"unknown batch scheduler {scheduler!r}; choose one of {sorted(SCHEDULERS)} or pass a BatchScheduler"
        )
    return SCHEDULERS[scheduler](**kwargs)
