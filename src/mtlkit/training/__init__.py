"""Training machinery: the Trainer, its strategies, checkpoints and loggers (and `mtlkit.protocol`'s model protocol, re-exported)."""

from typing import TYPE_CHECKING, Any

from mtlkit.protocol import MultiTaskModel, StepOutput
from mtlkit.training.config import TrainerConfig
from mtlkit.training.distributed import RankFailure, close_process_group, is_main_process
from mtlkit.training.strategies import DDPStrategy, SingleProcess, Strategy
from mtlkit.training.trainer import Trainer

if TYPE_CHECKING:
    from mtlkit.training.strategies.fsdp import FSDPStrategy

__all__ = [
    "DDPStrategy",
    "FSDPStrategy",
    "MultiTaskModel",
    "RankFailure",
    "SingleProcess",
    "StepOutput",
    "Strategy",
    "Trainer",
    "TrainerConfig",
    "close_process_group",
    "is_main_process",
]


def __getattr__(name: str) -> Any:
    if name == "FSDPStrategy":  # torch's FSDP modules load on first use
        from mtlkit.training.strategies.fsdp import FSDPStrategy

        return FSDPStrategy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
