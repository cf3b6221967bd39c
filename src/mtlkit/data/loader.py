"""`DictDataLoader`, its collate function and its epoch-seeded, shardable sampler."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Sampler

from mtlkit.data.dataset import DictDataset, Gathered, GatherIndices, XDict, YDict
from mtlkit.data.seeding import generator

X_PAD_VALUE = 0
Y_PAD_VALUE = -1  # the abstain label: padded label positions are ignored by losses and the Scorer


def pad_sequences(tensors: Sequence[Tensor], pad_value: float) -> Tensor:
    """Stack 1-D or 2-D tensors, right-padding each dimension to the batch's largest size."""
    shape = [max(t.shape[d] for t in tensors) for d in range(tensors[0].dim())]
    padded = tensors[0].new_full((len(tensors), *shape), pad_value)
    for row, tensor in zip(padded, tensors):
        row[tuple(slice(0, size) for size in tensor.shape)] = tensor
    return padded


def _collate_field(where: str, key: str, values: list[Any], pad_value: float) -> Tensor | list[Any]:
    tensor_flags = [isinstance(v, Tensor) for v in values]
    if not any(tensor_flags):
        return values
    if not all(tensor_flags):
        raise TypeError(f"{where}[{key!r}] mixes tensors and non-tensors in one batch; make every entry one kind.")
    if all(v.shape == values[0].shape for v in values):
        return torch.stack(values)
    dims = {v.dim() for v in values}
    if len(dims) > 1 or dims.pop() not in (1, 2):
        shapes = sorted({tuple(v.shape) for v in values})
        raise ValueError(
            f"{where}[{key!r}] has entries of shapes {shapes}: collate_dicts pads only 1-D/2-D tensors with the "
            f"same number of dimensions; resize them in the dataset or pass your own collate_fn."
        )
    return pad_sequences(values, pad_value)


def collate_dicts(batch: Sequence[tuple[XDict, YDict]] | Gathered) -> tuple[XDict, YDict]:
    """Merge `(x_dict, y_dict)` examples into one batch.

    Tensors of equal shape are stacked; 1-D/2-D tensors of different lengths are
    right-padded (X with 0, labels with -1 so that padded positions count as
    unlabelled); non-tensor X fields (strings, ids, ...) stay Python lists. A
    `Gathered` batch (`DictDataset.gather`) is the same batch, its tensor fields
    already stacked: its two dicts are completed in place and returned.
    """
    if isinstance(batch, Gathered):  # its tensor fields are stacked already, any other field is the list of its rows
        for where, fields, pad_value in (("X_dict", batch.X, X_PAD_VALUE), ("Y_dict", batch.Y, Y_PAD_VALUE)):
            for key, values in fields.items():
                if not isinstance(values, Tensor):
                    fields[key] = _collate_field(where, key, values, pad_value)
        return batch.X, batch.Y
    x_keys, y_keys = batch[0][0].keys(), batch[0][1].keys()
    X = {key: _collate_field("X_dict", key, [x[key] for x, _ in batch], X_PAD_VALUE) for key in x_keys}
    Y = {key: _collate_field("Y_dict", key, [y[key] for _, y in batch], Y_PAD_VALUE) for key in y_keys}
    return X, Y


class _Gathering:
    """A batch sampler's batches as `GatherIndices`, for `DictDataset.__getitems__`, or (`index_batches`)
    as index tensors, for `DictDataset.gather`."""

    def __init__(self, batch_sampler: Any) -> None:
        self.batch_sampler = batch_sampler

    def __iter__(self) -> Iterator[GatherIndices]:
        return (GatherIndices(batch) for batch in self.batch_sampler)

    def index_batches(self) -> list[Tensor]:
        """The same batches as views of the sampler's index tensor (`EpochSampler.order`), without
        a list of ints per batch."""
        order = self.batch_sampler.sampler.order()
        size, n = self.batch_sampler.batch_size, len(order)
        stop = n - n % size if self.batch_sampler.drop_last else n
        return list(order[:stop].split(size)) if stop else []  # `split` of no rows gives one empty batch

    def __len__(self) -> int:
        return len(self.batch_sampler)


class EpochSampler(Sampler[int]):
    """The indices of one replica's shard, in an order fixed by `(seed, epoch, pass)`.

    With `shuffle`, each epoch (`set_epoch`) gets its own permutation, and each further
    pass over the data within one epoch (a scheduler may restart a loader) another one.
    With `num_replicas > 1` the index list is padded by wrapping around so that every
    rank gets `ceil(n / num_replicas)` indices, the same sharding as
    `torch.utils.data.DistributedSampler`.
    """

    def __init__(self, length: int, shuffle: bool, seed: int | None, num_replicas: int = 1, rank: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got num_replicas={num_replicas}, rank={rank}"
            )
        if shuffle and seed is None:
            raise ValueError("a shuffling EpochSampler needs an integer seed")
        self.length = length
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._passes = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next passes use."""
        self.epoch = epoch
        self._passes = 0

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())

    def order(self) -> Tensor:
        """The indices of the next pass (what `iter` yields), as one int64 tensor; starts that pass."""
        if self.shuffle:
            if self.seed is None:
                raise ValueError("a shuffling EpochSampler needs an integer seed")
            indices = torch.randperm(self.length, generator=generator(self.seed, self.epoch, self._passes))
        else:
            indices = torch.arange(self.length)
        self._passes += 1
        total = len(self) * self.num_replicas
        if self.num_replicas == 1:
            return indices
        return indices.repeat(math.ceil(total / max(self.length, 1)))[:total][self.rank :: self.num_replicas]

    def __len__(self) -> int:
        return math.ceil(self.length / self.num_replicas)


class DictDataLoader(DataLoader):
    """A `torch.utils.data.DataLoader` over a `DictDataset`, yielding `(X_dict, Y_dict)`.

    Snorkel's API plus determinism: with `shuffle=True` the order depends only on
    `seed` and the epoch set by `set_epoch` (Snorkel used the global RNG). `seed=None`
    draws a seed from torch's global generator when the loader is built, so loaders
    built after `torch.manual_seed(s)` are reproducible. `num_replicas`/`rank` shard
    the dataset for distributed training. A user `sampler`/`batch_sampler` is used
    as given (then `shuffle`, `num_replicas` and `rank` must stay at their defaults).
    """

    dataset: DictDataset  # checked in __init__

    def __init__(
        self,
        dataset: DictDataset,
        collate_fn: Callable[..., Any] = collate_dicts,
        *,
        seed: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        **kwargs: Any,
    ) -> None:
        if not isinstance(dataset, DictDataset):
            raise TypeError(f"DictDataLoader needs a DictDataset, got {type(dataset).__name__}")
        shuffle = bool(kwargs.pop("shuffle", False))
        if "sampler" in kwargs or "batch_sampler" in kwargs:
            if shuffle or num_replicas != 1 or rank != 0:
                raise ValueError(
                    f"DictDataLoader for dataset {dataset.name!r}: a custom sampler/batch_sampler cannot be combined "
                    f"with shuffle, num_replicas or rank; shuffle/shard inside your sampler instead."
                )
        else:
            if shuffle and seed is None:
                seed = int(torch.randint(0, 2**62, ()).item())
            kwargs["sampler"] = EpochSampler(len(dataset), shuffle, seed, num_replicas, rank)
        super().__init__(dataset, collate_fn=collate_fn, **kwargs)

    @property
    def _index_sampler(self) -> Any:
        """What torch's iterators draw indices from: with `collate_dicts` and the loader's own sampler, marked
        batches, which the dataset gathers field by field (one indexing per tensor field instead of a
        dict per example); a user's collate_fn or sampler gets exactly what torch gives it."""
        sampler = super()._index_sampler
        if (
            self.collate_fn is collate_dicts
            and isinstance(self.sampler, EpochSampler)
            and type(sampler) is BatchSampler
        ):
            return _Gathering(sampler)
        return sampler

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]  # a generator on the direct path
        """The batches; with `collate_dicts`, the loader's own sampler, no worker processes and no
        pinned memory, gathered and collated directly, without torch's per-batch iterator machinery
        (the same batches, in the same order; no `torch.profiler` span per batch)."""
        batches = self._index_sampler
        if self.num_workers == 0 and not self.pin_memory and isinstance(batches, _Gathering):
            dataset = self.dataset
            if (
                type(dataset).__getitem__ is DictDataset.__getitem__
                and type(dataset).__getitems__ is DictDataset.__getitems__
            ):
                iterator = (collate_dicts(dataset.gather(index)) for index in batches.index_batches())
            else:  # a subclass's own way to fetch examples
                iterator = (collate_dicts(dataset.__getitems__(indices)) for indices in batches)
            # torch's iterator draws a base seed from the loader's generator (the global one by
            # default): drawing it too keeps every later random number what it was.
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)
            return iterator
        return super().__iter__()

    @property
    def seed(self) -> int | None:
        """The shuffling seed (None when not shuffling or with a custom sampler)."""
        return self.sampler.seed if isinstance(self.sampler, EpochSampler) else None

    @seed.setter
    def seed(self, value: int) -> None:
        if not isinstance(self.sampler, EpochSampler):
            raise AttributeError("this DictDataLoader uses a custom sampler; set its seed there")
        self.sampler.seed = value

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle (deterministically) for `epoch`; forwarded to any sampler that has `set_epoch`."""
        set_epoch = getattr(self.sampler, "set_epoch", None) or getattr(self.batch_sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)


def move_to_device(obj: Any, device: torch.device | str) -> Any:
    """Move every tensor in nested dicts/lists/tuples to `device`; other values are returned as they are."""
    if isinstance(obj, Tensor):
        return obj if obj.device == device else obj.to(device)  # `to` returns it too, at a dispatch's cost
    if isinstance(obj, dict):  # a batch's fields (a loop, not a comprehension: no frame per batch)
        moved: dict[Any, Any] = {}
        for key, value in obj.items():
            moved[key] = (
                value if isinstance(value, Tensor) and value.device == device else move_to_device(value, device)
            )
        return moved
    if isinstance(obj, list):
        return [move_to_device(value, device) for value in obj]
    if isinstance(obj, tuple):
        return tuple(move_to_device(value, device) for value in obj)
    return obj
