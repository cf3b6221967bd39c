"""Your own dataset by name (`register_dataset`) or by a factory path, without private API."""

import sys

import pytest
import torch

from mtlkit.data import DictDataset, register_dataset
from mtlkit.data.datasets import DatasetInfo, LoadedDataset, TaskInfo, available, load, load_factory
from mtlkit.errors import ConfigError


def make(seed: int = 0, n: int = 40) -> LoadedDataset:
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))
    y = (x[:, 0] > 0).long()
    info = DatasetInfo("toy", {"pos": TaskInfo.classification(2, "x")}, {"x": (3,)})
    parts = {"train": slice(0, 20), "valid": slice(20, 30), "test": slice(30, n)}
    return LoadedDataset(info, tuple(DictDataset("toy", s, {"x": x[r]}, {"pos": y[r]}) for s, r in parts.items()))


def test_register_dataset_makes_it_loadable_by_name(monkeypatch):
    from mtlkit.data import datasets

    monkeypatch.setattr(datasets, "_LOADERS", dict(datasets._LOADERS))  # undo the registration afterwards
    register_dataset("toy_registered", make)
    assert "toy_registered" in available()
    a, b = load("toy_registered", seed=1, n=50), load("toy_registered", seed=1, n=50)
    assert torch.equal(a.datasets[0].X_dict["x"], b.datasets[0].X_dict["x"]) and len(a.split("test")[0]) == 20
    with pytest.raises(
        ConfigError, match="'toy_registered' is already a dataset; pick another name or pass overwrite=True"
    ):
        register_dataset("toy_registered", make)
    register_dataset("toy_registered", make, overwrite=True)
    with pytest.raises(ConfigError, match="has no option 'size'"):
        load("toy_registered", size=3)
    with pytest.raises(ConfigError, match="must be callable"):
        register_dataset("other", "make")


def test_factory_by_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_factory_mod.py").write_text(
        "import torch\n"
        "from mtlkit.data import DictDataset\n"
        "from mtlkit.data.datasets import DatasetInfo, LoadedDataset, TaskInfo\n"
        "def make(n=30):\n"
        "    x = torch.randn(n, 2)\n"
        "    info = DatasetInfo('f', {'t': TaskInfo.classification(2, 'x')}, {'x': (2,)})\n"
        "    y = (x[:, 0] > 0).long()\n"
        "    return LoadedDataset(info, tuple(DictDataset('f', s, {'x': x}, {'t': y}) for s in ('train', 'valid')))\n"
        "def wrong():\n"
        "    return [1, 2]\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    loaded = load_factory("my_factory_mod:make", seed=3, n=10)  # seed dropped: make takes none
    assert loaded.info.name == "f" and len(loaded.datasets[0]) == 10
    with pytest.raises(ConfigError, match=r"returned list; return a mtlkit.data.datasets.LoadedDataset"):
        load_factory("my_factory_mod:wrong")
    with pytest.raises(ConfigError, match=r"module 'my_factory_mod' has no function 'nope'"):
        load_factory("my_factory_mod:nope")
    with pytest.raises(ConfigError, match=r"cannot import 'no_such_module_xyz'"):
        load_factory("no_such_module_xyz:make")
    with pytest.raises(ConfigError, match=r"write it as 'package.module:function'"):
        load_factory("my_factory_mod.make")
