"""Training strategies: how many processes train, and how (see `Strategy`).

`Trainer(strategy=...)`: 'single' (this process), 'ddp' (one rank of a `torchrun` launch,
`DistributedDataParallel`), or 'auto' ('ddp' when launched by torchrun or when a
torch.distributed process group exists, else 'single'). `distributed=True` means 'ddp'.
"""

from __future__ import annotations

import os

import torch.distributed as dist

from mtlkit.training.config import TrainerConfig
from mtlkit.training.strategies.base import SingleProcess, Strategy
from mtlkit.training.strategies.ddp import DDPStrategy

__all__ = ["DDPStrategy", "SingleProcess", "Strategy", "build_strategy", "resolve_strategy_name"]


def resolve_strategy_name(config: TrainerConfig) -> str:
    """The strategy that `config.strategy` and `config.distributed` ask for: 'single' or 'ddp'."""
    name = config.strategy
    if name is None:
        return "ddp" if config.distributed else "single"
    if name == "auto":
        launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        return "ddp" if config.distributed or launched or (dist.is_available() and dist.is_initialized()) else "single"
    return name


def build_strategy(config: TrainerConfig) -> Strategy:
    """A fresh strategy for `config` (see `resolve_strategy_name`)."""
    if resolve_strategy_name(config) == "single":
        return SingleProcess()
    return DDPStrategy(config.dist_backend, config.dist_timeout)
