"""`DictDataset`: named fields in, one `(x_dict, y_dict)` pair per index out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

XDict = dict[str, Any]
YDict = dict[str, Any]

DEFAULT_INPUT_DATA_KEY = "input_data"
DEFAULT_TASK_NAME = "task"
DEFAULT_DATASET_NAME = "DictDataset"


class GatherIndices(list):
    """A batch's indices, marked by `DictDataLoader` when its collate_fn is `collate_dicts`.

    `DictDataset.__getitems__` gathers such a batch field by field (`Gathered`) instead
    of building one `(x_dict, y_dict)` pair per index; `collate_dicts` finishes it.
    """


class Gathered(NamedTuple):
    """A batch's fields: tensor fields indexed at once, any other field as the list of its rows."""

    X: dict[str, Any]
    Y: dict[str, Any]


class DictDataset(Dataset):
    """A dataset whose inputs and labels are dicts of equally long fields (Snorkel's API).

    `X_dict` maps field names to anything indexable (tensors, lists of strings, ...);
    `Y_dict` maps label names (usually task names) to label tensors, with `-1` meaning
    "no label" for that row; a list of tensors holds variable-length labels (one
    tensor per example, e.g. token tags), padded with -1 by `collate_dicts`. `name` and `split` key the scores
    (`task/dataset/split/metric`). Unlike Snorkel, fields of different lengths are
    rejected here rather than failing in the middle of an epoch.
    """

    def __init__(self, name: str, split: str, X_dict: Mapping[str, Any], Y_dict: Mapping[str, Any]) -> None:
        self.name = name
        self.split = split
        self.X_dict: XDict = dict(X_dict)
        self.Y_dict: YDict = dict(Y_dict)
        for key, labels in self.Y_dict.items():
            ragged = isinstance(labels, (list, tuple)) and all(isinstance(row, Tensor) for row in labels)
            if not (isinstance(labels, Tensor) or ragged):
                raise TypeError(
                    f"DictDataset {name!r}: label {key!r} must be a torch.Tensor (or a list of tensors for "
                    f"variable-length labels), not {type(labels).__name__}; convert it with torch.as_tensor."
                )
        self._length = self._common_length()

    def _common_length(self) -> int:
        fields = {f"X_dict[{k!r}]": v for k, v in self.X_dict.items()}
        fields.update({f"Y_dict[{k!r}]": v for k, v in self.Y_dict.items()})
        lengths = {key: self._length_of(key, values) for key, values in fields.items()}
        if not lengths:
            return 0
        first_key, first_len = next(iter(lengths.items()))
        for key, length in lengths.items():
            if length != first_len:
                raise ValueError(
                    f"DictDataset {self.name!r} (split {self.split!r}): {key} has {length} rows but "
                    f"{first_key} has {first_len}; every field must have one entry per example."
                )
        return first_len

    def _length_of(self, key: str, values: Any) -> int:
        if isinstance(values, Tensor) and values.dim() == 0:
            raise ValueError(
                f"DictDataset {self.name!r}: {key} is a 0-dim tensor; give one entry per example "
                f"(a tensor whose first dimension is the example index)."
            )
        try:
            return len(values)
        except TypeError as error:
            raise TypeError(
                f"DictDataset {self.name!r}: {key} of type {type(values).__name__} has no length; "
                f"use a tensor, list or array with one entry per example."
            ) from error

    def __getitem__(self, index: int) -> tuple[XDict, YDict]:
        x_dict = {key: values[index] for key, values in self.X_dict.items()}
        y_dict = {key: labels[index] for key, labels in self.Y_dict.items()}
        return x_dict, y_dict

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[XDict, YDict]] | Gathered:
        """The examples at `indices` (torch's DataLoader fetches a batch through this).

        A `GatherIndices` batch (from a `DictDataLoader` collating with `collate_dicts`)
        comes back as `Gathered` fields; any other batch, or a subclass with its own
        `__getitem__`, as the list of `self[i]`, which is what the collate_fn got before.
        """
        if not isinstance(indices, GatherIndices) or type(self).__getitem__ is not DictDataset.__getitem__:
            return [self[i] for i in indices]
        return self.gather(torch.tensor(indices, dtype=torch.long))

    def gather(self, index: Tensor) -> Gathered:
        """The examples at `index` (a 1-D int64 tensor) field by field: one indexing per strided
        tensor field (what stacking its rows gives), the list of its rows for any other field."""
        return Gathered(_gather(self.X_dict, index), _gather(self.Y_dict, index))

    def __len__(self) -> int:
        return self._length

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
            f"X_keys={list(self.X_dict)}, Y_keys={list(self.Y_dict)}, len={len(self)})"
        )

    @classmethod
    def from_tensors(
        cls,
        X_tensor: Tensor,
        Y_tensor: Tensor,
        split: str,
        input_data_key: str = DEFAULT_INPUT_DATA_KEY,
        task_name: str = DEFAULT_TASK_NAME,
        dataset_name: str = DEFAULT_DATASET_NAME,
    ) -> DictDataset:
        """A one-field, one-task dataset: `X_dict={input_data_key: X}`, `Y_dict={task_name: Y}`."""
        return cls(name=dataset_name, split=split, X_dict={input_data_key: X_tensor}, Y_dict={task_name: Y_tensor})


def _gather(fields: dict[str, Any], index: Tensor) -> dict[str, Any]:
    gathered: dict[str, Any] = {}
    for key, values in fields.items():
        if isinstance(values, Tensor) and values.layout == torch.strided:
            gathered[key] = values[index]
        else:
            gathered[key] = [values[i] for i in index.tolist()]
    return gathered
