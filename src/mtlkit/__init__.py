"""mtlkit: multi-task learning for PyTorch."""

from mtlkit.errors import ConfigError, SpecError
from mtlkit import layers
from mtlkit.graph import MTLModel, TaskGraph
from mtlkit.data import DictDataLoader, DictDataset
from mtlkit.metrics import Scorer
from mtlkit.training import Trainer
from mtlkit.flows import MultitaskClassifier, Operation, Task

__version__ = "0.1.0"

__all__ = ["MultitaskClassifier", "Operation", "Task", "Trainer", "DictDataLoader", "DictDataset", "Scorer", "MTLModel", "TaskGraph", "layers", "ConfigError", "SpecError", "__version__"]
