"""mtlkit: multi-task learning for PyTorch."""

from mtlkit import layers
from mtlkit.data import DictDataLoader, DictDataset
from mtlkit.errors import ConfigError, SpecError
from mtlkit.flows import MultitaskClassifier, Operation, Task
from mtlkit.graph import MTLModel, TaskGraph
from mtlkit.losses import cross_entropy_with_probs
from mtlkit.metrics import Scorer
from mtlkit.training import Trainer
from mtlkit.training.checkpoint import Checkpointer, CheckpointerConfig
from mtlkit.training.loggers import LogManager, LogManagerConfig, LogWriter, LogWriterConfig, TensorBoardWriter

__version__ = "0.1.0"

__all__ = [
    "Checkpointer",
    "CheckpointerConfig",
    "ConfigError",
    "DictDataLoader",
    "DictDataset",
    "LogManager",
    "LogManagerConfig",
    "LogWriter",
    "LogWriterConfig",
    "MTLModel",
    "MultitaskClassifier",
    "Operation",
    "Scorer",
    "SpecError",
    "Task",
    "TaskGraph",
    "TensorBoardWriter",
    "Trainer",
    "__version__",
    "cross_entropy_with_probs",
    "layers",
]
