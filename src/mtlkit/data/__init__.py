"""Multi-dataset data handling: `DictDataset`, `DictDataLoader`, batch schedulers, `register_dataset`."""

from mtlkit.data.dataset import DEFAULT_DATASET_NAME, DEFAULT_INPUT_DATA_KEY, DEFAULT_TASK_NAME, DictDataset
from mtlkit.data.datasets import register_dataset
from mtlkit.data.loader import DictDataLoader, EpochSampler, collate_dicts, move_to_device, pad_sequences
from mtlkit.data.schedulers import (
    SCHEDULERS,
    BatchScheduler,
    RoundRobinScheduler,
    SequentialScheduler,
    ShuffledScheduler,
    TemperatureScheduler,
    get_scheduler,
)

__all__ = [
    "DEFAULT_DATASET_NAME",
    "DEFAULT_INPUT_DATA_KEY",
    "DEFAULT_TASK_NAME",
    "SCHEDULERS",
    "BatchScheduler",
    "DictDataLoader",
    "DictDataset",
    "EpochSampler",
    "RoundRobinScheduler",
    "SequentialScheduler",
    "ShuffledScheduler",
    "TemperatureScheduler",
    "collate_dicts",
    "get_scheduler",
    "move_to_device",
    "pad_sequences",
    "register_dataset",
]
