"""Training machinery: the model protocol, the Trainer, its strategies, checkpoints and loggers."""

from mtlkit.training.config import TrainerConfig
from mtlkit.training.distributed import RankFailure, close_process_group, is_main_process
from mtlkit.training.protocol import MultiTaskModel, StepOutput
from mtlkit.training.strategies import DDPStrategy, SingleProcess, Strategy
from mtlkit.training.trainer import Trainer

__all__ = [
    "DDPStrategy",
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
