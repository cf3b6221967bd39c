"""Training machinery: the model protocol, the Trainer, checkpoints and loggers."""

from mtlkit.training.protocol import MultiTaskModel, StepOutput

__all__ = ["MultiTaskModel", "StepOutput"]
