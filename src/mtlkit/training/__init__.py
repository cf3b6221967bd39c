"""Training machinery: the Trainer, checkpoints and loggers (and the model protocol of `mtlkit.protocol`, re-exported)."""

from mtlkit.protocol import MultiTaskModel, StepOutput
from mtlkit.training.config import TrainerConfig
from mtlkit.training.distributed import RankFailure, is_main_process
from mtlkit.training.trainer import Trainer

__all__ = ["MultiTaskModel", "RankFailure", "StepOutput", "Trainer", "TrainerConfig", "is_main_process"]
