"""mtlkit: multi-task learning for PyTorch."""

from mtlkit.errors import ConfigError, SpecError
from mtlkit import layers
from mtlkit.graph import MTLModel, TaskGraph
from mtlkit.data import DictDataLoader, DictDataset
from mtlkit.metrics import Scorer
from mtlkit.training import Trainer
from mtlkit.flows import MultitaskClassifier, Operation, Task
from mtlkit.losses import cross_entropy_with_probs
from mtlkit.training.checkpoint import Checkpointer, CheckpointerConfig
from mtlkit.training.loggers import LogManager, LogManagerConfig, LogWriter, LogWriterConfig, TensorBoardWriter

__version__ = "0.1.0"

__all__ = [
    "MultitaskClassifier", "Operation", "Task", "Trainer", "DictDataLoader", "DictDataset", "Scorer", "MTLModel", "TaskGraph",
    "layers", "ConfigError", "SpecError", "__version__",
    # the rest of snorkel.classification's names
    "Checkpointer", "CheckpointerConfig", "LogManager", "LogManagerConfig", "LogWriter", "LogWriterConfig",
    "TensorBoardWriter", "cross_entropy_with_probs",
]
