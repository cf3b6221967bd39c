"""Training machinery: the Trainer, its strategies, checkpoints and loggers (and `mtlkit.protocol`'s model protocol, re-exported)."""

from mtlkit.protocol import MultiTaskModel, StepOutput
from mtlkit.training.config import TrainerConfig
from mtlkit.training.distributed import RankFailure, close_process_group, is_main_process
from mtlkit.training.strategies import DDPStrategy, FSDPStrategy, SingleProcess, Strategy
from mtlkit.training.trainer import Trainer

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
