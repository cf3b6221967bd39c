"""Training strategies: how many processes train, and how (see `Strategy`).

`Trainer(strategy=...)`: 'single' (this process), 'ddp' (one rank of a `torchrun` launch,
`DistributedDataParallel`), 'fsdp' (one rank of a `torchrun` launch, the model sharded by
FSDP2's `fully_shard`), or 'auto' ('ddp' when launched by torchrun or when a
torch.distributed process group exists, else 'single'). `distributed=True` means 'ddp'.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

from mtlkit.training.config import TrainerConfig
from mtlkit.training.strategies.base import SingleProcess, Strategy
from mtlkit.training.strategies.ddp import DDPStrategy

if TYPE_CHECKING:
    from mtlkit.training.strategies.fsdp import FSDPStrategy

__all__ = ["DDPStrategy", "FSDPStrategy", "SingleProcess", "Strategy", "build_strategy", "resolve_strategy_name"]


def resolve_strategy_name(config: TrainerConfig) -> str:
    """The strategy that `config.strategy` and `config.distributed` ask for: 'single', 'ddp' or 'fsdp'."""
    name = config.strategy
    if name is None:
        return "ddp" if config.distributed else "single"
    if name == "auto":
        launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        return "ddp" if config.distributed or launched or (dist.is_available() and dist.is_initialized()) else "single"
    return name


def build_strategy(config: TrainerConfig) -> Strategy:
    """A fresh strategy for `config` (see `resolve_strategy_name`)."""
    name = resolve_strategy_name(config)
    if name == "single":
        return SingleProcess()
    if name == "fsdp":
        from mtlkit.training.strategies.fsdp import FSDPStrategy  # torch's FSDP modules load on first use

        return FSDPStrategy(config.dist_backend, config.dist_timeout)
    return DDPStrategy(config.dist_backend, config.dist_timeout)


def __getattr__(name: str) -> Any:
    if name == "FSDPStrategy":  # torch's FSDP modules load on first use
        from mtlkit.training.strategies.fsdp import FSDPStrategy

        return FSDPStrategy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
