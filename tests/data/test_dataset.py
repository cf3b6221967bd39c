import pytest
import torch

from mtlkit.data import DictDataset


def test_getitem_returns_one_row_of_every_field():
    ds = DictDataset(
        "d", "train", {"x": torch.arange(6).view(3, 2), "ids": ["a", "b", "c"]}, {"t": torch.tensor([0, 1, -1])}
    )
    x, y = ds[1]
    assert x["x"].tolist() == [2, 3] and x["ids"] == "b" and y["t"].item() == 1
    assert len(ds) == 3


def test_from_tensors_uses_snorkel_default_keys():
    ds = DictDataset.from_tensors(torch.zeros(4, 2), torch.ones(4), "valid")
    assert list(ds.X_dict) == ["input_data"] and list(ds.Y_dict) == ["task"]
    assert ds.split == "valid" and len(ds) == 4


def test_from_tensors_custom_names():
    ds = DictDataset.from_tensors(torch.zeros(2, 1), torch.ones(2), "test", "feats", "circle", "circles")
    assert (ds.name, list(ds.X_dict), list(ds.Y_dict)) == ("circles", ["feats"], ["circle"])


def test_length_mismatch_names_dataset_and_key():
    with pytest.raises(ValueError, match=r"'circles'.*Y_dict\['t'\] has 2 rows"):
        DictDataset("circles", "train", {"x": torch.zeros(3, 2)}, {"t": torch.zeros(2)})


def test_labels_must_be_tensors():
    with pytest.raises(TypeError, match="label 't' must be a torch.Tensor"):
        DictDataset("d", "train", {"x": torch.zeros(2)}, {"t": [0, 1]})


def test_field_without_length_is_rejected_with_its_key():
    with pytest.raises(TypeError, match=r"X_dict\['x'\].*no length"):
        DictDataset("d", "train", {"x": 3}, {})
    with pytest.raises(ValueError, match="0-dim"):
        DictDataset("d", "train", {"x": torch.tensor(1.0)}, {})


def test_unlabelled_dataset_takes_length_from_inputs():
    assert len(DictDataset("d", "test", {"x": torch.zeros(5, 2)}, {})) == 5


def test_variable_length_labels_as_list_of_tensors():
    ds = DictDataset(
        "tok",
        "train",
        {"x": [torch.zeros(2), torch.zeros(3)]},
        {"tags": [torch.tensor([1, 0]), torch.tensor([2, 2, 1])]},
    )
    assert ds[1][1]["tags"].tolist() == [2, 2, 1]
