"""The process group and the data shards of a multi-process run (used by `mtlkit.training.strategies`).

- `join_process_group`: one torch.distributed group per process, created once from
  torchrun's environment when none exists and reused by every later `fit`; mtlkit never
  destroys a group it did not create, and destroys its own only on `close_process_group()`
  or at exit. (Destroying the group at the end of each `fit` made a second `fit` hang:
  rank 0 re-created the group and waited in a collective while another rank waited to join.)
- `shard_training_loader`: this rank's share of a training loader (`DistributedSampler`'s
  split), so that the ranks' local batches together are one process's global batch.
- `shard_evaluation_loader`: this rank's share of an evaluation loader, every example once.
"""

from __future__ import annotations

import atexit
import math
import os
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from mtlkit.data import DictDataLoader, EpochSampler
from mtlkit.errors import ConfigError

# The DataLoader options a shard keeps from the loader it replaces.
_LOADER_OPTIONS = (
    "batch_size",
    "drop_last",
    "num_workers",
    "pin_memory",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "generator",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
)
_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_created_group = False  # whether this process's group was created by `join_process_group`


class RankFailure(RuntimeError):
    """Another rank failed; raised on every rank but the failing one, which raises its own error."""


def is_main_process() -> bool:
    """True unless this is a rank other than 0 of a torch.distributed run (initialised, or launched by torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def module_tensors(*modules: nn.Module) -> list[Tensor]:
    """The parameters and buffers of `modules` (what `broadcast_tensors` copies from rank 0)."""
    return [t for module in modules for t in (*module.parameters(), *module.buffers())]


def join_process_group(device: torch.device | None, backend: str | None, timeout: float) -> torch.device:
    """Join this process's torch.distributed group, creating it once from torchrun's environment; this rank's device.

    A group that exists (made by the launcher, the user, or an earlier `fit`) is reused
    as it is: `fit` never destroys a group, so a script may call `fit` any number of
    times. A group created here lives until `close_process_group()` or the end of the
    process. `device` None means `cuda:LOCAL_RANK` when CUDA is available, else the
    CPU; a bare 'cuda' also means `cuda:LOCAL_RANK`. `backend` None means 'nccl' on
    CUDA and 'gloo' on the CPU. `timeout` (seconds) bounds every collective of a group
    created here, so that a rank that died cannot leave the others waiting forever.
    """
    global _created_group
    if not dist.is_available():
        raise ConfigError("a multi-process strategy needs torch.distributed, which this PyTorch build lacks")
    creating = not dist.is_initialized()
    if creating:
        missing = [name for name in _LAUNCH_VARIABLES if name not in os.environ]
        if missing:
            raise ConfigError(
                f"distributed training, but no torch.distributed process group is initialised and the environment "
                f"lacks {missing}: launch with `torchrun --nproc_per_node=N script.py` (or call "
                "torch.distributed.init_process_group before fit), or train in one process (strategy='single')"
            )
    device = _rank_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if creating:
        dist.init_process_group(
            backend or ("nccl" if device.type == "cuda" else "gloo"), timeout=timedelta(seconds=timeout)
        )
        if not _created_group:
            atexit.register(close_process_group)
        _created_group = True
    return device


def close_process_group() -> None:
    """Destroy the process group if mtlkit created it (it does at exit); a group made by others is theirs to close."""
    global _created_group
    if _created_group and dist.is_initialized():
        dist.destroy_process_group()
    _created_group = False


def shard_training_loader(loader: DataLoader, num_replicas: int, rank: int, seed: int | None) -> DictDataLoader:
    """This rank's share of a training `DictDataLoader`: `DistributedSampler`'s split, reshuffled by `(seed, epoch)`.

    Over the ranks, an epoch sees every example once (the last global batch is padded by
    wrapping around when the dataset does not divide evenly). The local batch keeps the
    loader's `batch_size`: the global batch holds the `num_replicas × batch_size` examples
    that one process with a loader of that batch size and `seed` takes in the same step.
    A loader already sharded for this rank is kept (with `seed`).
    """
    sampler = getattr(loader, "sampler", None)
    where = f"the training loader of dataset {loader.dataset.name!r} (split {loader.dataset.split!r})"
    if not isinstance(loader, DictDataLoader) or not isinstance(sampler, EpochSampler):
        raise ConfigError(
            f"multi-process training shards {where} across ranks itself: build it as DictDataLoader(dataset, "
            "batch_size=..., shuffle=..., seed=...) without a custom sampler or batch_sampler"
        )
    if (sampler.num_replicas, sampler.rank) == (num_replicas, rank):
        if seed is not None:
            loader.seed = seed
        return loader
    if sampler.num_replicas != 1:
        raise ConfigError(
            f"{where} is sharded for {sampler.num_replicas} replicas (rank {sampler.rank}) but this run has "
            f"{num_replicas} (rank {rank}): build it unsharded (num_replicas=1), the Trainer shards it"
        )
    options = {name: getattr(loader, name) for name in _LOADER_OPTIONS if hasattr(loader, name)}
    return DictDataLoader(
        loader.dataset,
        collate_fn=loader.collate_fn,
        seed=seed,
        shuffle=sampler.shuffle,
        num_replicas=num_replicas,
        rank=rank,
        **options,
    )


def shard_evaluation_loader(loader: DataLoader, num_replicas: int, rank: int) -> DataLoader:
    """This rank's share of an evaluation loader: examples rank, rank + num_replicas, … (no padding, no repeat)."""
    options = {name: getattr(loader, name) for name in _LOADER_OPTIONS if hasattr(loader, name)}
    sampler = _Strided(len(loader.dataset), num_replicas, rank)
    return DataLoader(loader.dataset, sampler=sampler, collate_fn=loader.collate_fn, **options)


class _Strided(Sampler[int]):
    def __init__(self, length: int, step: int, start: int) -> None:
        self.length, self.step, self.start = length, step, start

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.length, self.step))

    def __len__(self) -> int:
        return max(0, math.ceil((self.length - self.start) / self.step))


def _rank_device(device: torch.device | None) -> torch.device:
    """The configured device, with `cuda:LOCAL_RANK` for None (when CUDA is available) and for a bare 'cuda'."""
    if device is None and not torch.cuda.is_available():
        return torch.device("cpu")
    if device is None or (device.type == "cuda" and device.index is None):
        if "LOCAL_RANK" in os.environ:
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        rank = dist.get_rank() if dist.is_initialized() else 0
        return torch.device("cuda", rank % torch.cuda.device_count())
    return device
