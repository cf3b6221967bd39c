"""Table files as datasets: columns, classes, missing labels, splits, formats, and the mistakes users make."""

import math

import numpy as np
import pytest
import torch

from mtlkit.data.tables import load_table
from mtlkit.errors import ConfigError

CSV = """a,b,kind,score,fold
1.0,10,cat,0.5,train
2.0,20,dog,1.5,train
3.0,30,?,-1.0,train
4.0,40,cat,,valid
5.0,50,dog,2.5,valid
6.0,60,cat,3.5,test
"""
TARGETS = {"kind": {"kind": "classification", "classes": ["cat", "dog"]}, "score": {"kind": "regression"}}


def write(tmp_path, text=CSV, name="t.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_columns_classes_missing_labels_and_split_column(tmp_path):
    loaded = load_table(write(tmp_path), TARGETS, split={"column": "fold"}, missing="?", standardize_values=False)
    train, valid, test = (loaded.split(s)[0] for s in ("train", "valid", "test"))
    assert train.X_dict["x"].tolist() == [[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]  # default features: a, b
    assert train.Y_dict["kind"].tolist() == [0, 1, -1]  # "?" is no label
    assert train.Y_dict["score"].tolist() == [0.5, 1.5, -1.0]  # a real -1.0 target stays
    assert math.isnan(valid.Y_dict["score"][0]) and valid.Y_dict["score"][1] == 2.5  # an empty cell is no label
    assert test.Y_dict["kind"].tolist() == [0]
    assert loaded.info.name == "t" and loaded.info.tasks["kind"].num_classes == 2
    assert loaded.info.tasks["score"].kind == "regression" and loaded.info.input_shapes == {"x": (2,)}


def test_standardisation_uses_labelled_training_rows_only(tmp_path):
    loaded = load_table(write(tmp_path), TARGETS, split={"column": "fold"}, missing="?")
    train = loaded.split("train")[0]
    a = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(train.X_dict["x"][:, 0], (a - a.mean()) / a.std(unbiased=False), atol=1e-6)
    y = torch.tensor([0.5, 1.5, -1.0], dtype=torch.float64)
    info = loaded.info.tasks["score"]
    assert info.target_mean == pytest.approx(y.mean().item()) and info.target_std == pytest.approx(
        y.std(unbiased=False).item()
    )
    assert loaded.split("test")[0].Y_dict["score"].item() == pytest.approx(
        (3.5 - y.mean().item()) / y.std(unbiased=False).item()
    )


def test_fractions_split_is_fixed_by_its_seed_and_partitions_the_rows(tmp_path):
    rows = "\n".join(f"{i},{i % 2}" for i in range(40))
    path = write(tmp_path, "f,y\n" + rows + "\n")
    targets = {"y": {"kind": "classification", "classes": 2}}
    split = {"fractions": [0.5, 0.25, 0.25], "seed": 3}
    first = load_table(path, targets, split=split, standardize_values=False)
    again = load_table(path, targets, split=split, standardize_values=False)
    other = load_table(path, targets, split={"fractions": [0.5, 0.25, 0.25], "seed": 4}, standardize_values=False)
    values = [sorted(first.split(s)[0].X_dict["x"][:, 0].tolist()) for s in ("train", "valid", "test")]
    assert [len(v) for v in values] == [20, 10, 10] and sorted(v for part in values for v in part) == list(range(40))
    assert values[0] == sorted(again.split("train")[0].X_dict["x"][:, 0].tolist())
    assert values[0] != sorted(other.split("train")[0].X_dict["x"][:, 0].tolist())


def test_npz_arrays_as_columns_and_an_image_array(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "v.npz", f=rng.normal(size=(30, 3)), g=rng.normal(size=30), y=np.arange(30) % 3)
    loaded = load_table(tmp_path / "v.npz", {"y": {"kind": "classification", "classes": 3}})
    assert loaded.info.input_shapes == {"x": (4,)}
    np.savez(tmp_path / "img.npz", img=rng.normal(size=(30, 1, 4, 4)), y=rng.normal(size=30))
    images = load_table(tmp_path / "img.npz", {"y": {"kind": "regression"}})
    assert images.info.input_shapes == {"x": (1, 4, 4)}


def test_parquet_reads_like_csv(tmp_path):
    pandas = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    pandas.read_csv(write(tmp_path)).to_parquet(tmp_path / "t.parquet")
    from_csv = load_table(tmp_path / "t.csv", TARGETS, split={"column": "fold"}, missing="?")
    from_parquet = load_table(tmp_path / "t.parquet", TARGETS, split={"column": "fold"}, missing="?")
    assert torch.equal(from_csv.split("train")[0].Y_dict["kind"], from_parquet.split("train")[0].Y_dict["kind"])


def test_missing_pandas_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ModuleNotFoundError
    with pytest.raises(ConfigError, match=r"needs the 'pandas' package: pip install \"mtlkit\[tables\]\""):
        load_table(write(tmp_path), TARGETS)


@pytest.mark.parametrize(
    ("targets", "options", "message"),
    [
        (
            {"kind": {"kind": "classification", "classes": ["cat", "dog"]}},
            {"features": ["a"], "split": {"column": "fold"}},
            r"data.targets.kind: column 'kind' holds '\?' in row 2.*set data.targets.kind.missing",
        ),
        ({"kind": {"kind": "classification"}}, {}, r"data.targets.kind.classes: list the values"),
        (
            {"kind": {"kind": "clasification", "classes": 2}},
            {},
            r"data.targets.kind.kind: give one of classification, regression",
        ),
        (
            {"kind": {"kind": "regression"}},
            {"features": ["a"], "missing": "?"},
            r"data.targets.kind: column 'kind' holds 'cat' in row 0, which is not a finite number",
        ),
        ({"kinds": {"kind": "regression"}}, {}, r"data.targets: t.csv has no column 'kinds'.*Its columns"),
        ({"kind": {"kind": "classification", "classes": [False, True]}}, {"features": ["a"]}, r"quote them"),
        ({"kind": {"kind": "classification", "classes": ["cat", "dog"], "colour": 1}}, {}, r"unknown key 'colour'"),
        (TARGETS, {"features": ["a", "kind"]}, r"data.features: column 'kind' is a target"),
        (TARGETS, {"features": ["a", "fold"], "missing": "?"}, r"data.features: column 'fold' of t.csv is not numeric"),
        (
            TARGETS,
            {"features": ["b"], "split": {"column": "a"}, "missing": "?"},
            r"data.split.column: column 'a' of t.csv holds '1'",
        ),
        (
            TARGETS,
            {"features": ["a"], "split": {"fractions": [0.5, 0.5]}, "missing": "?"},
            r"data.split.fractions: .*three non-negative numbers",
        ),
        (TARGETS, {"split": {"column": "fold", "seed": 1}}, r"data.split: give either 'column' or 'fractions'"),
        ({}, {}, r"data.targets: name each task column"),
    ],
)
def test_table_mistakes_name_the_key_and_the_fix(tmp_path, targets, options, message):
    with pytest.raises(ConfigError, match=message):
        load_table(write(tmp_path), targets, **options)


def test_a_missing_feature_value_names_column_and_row(tmp_path):
    path = write(tmp_path, "a,y\n1,0\n,1\n3,0\n")
    with pytest.raises(ConfigError, match=r"column 'a' of t.csv has a missing or infinite value in row 1"):
        load_table(path, {"y": {"kind": "classification", "classes": 2}})


def test_a_file_that_is_not_a_table(tmp_path):
    with pytest.raises(ConfigError, match=r"data.path: .* is not a table file; use one of .csv, .parquet, .npz"):
        load_table(write(tmp_path, name="t.txt"), TARGETS)
    with pytest.raises(ConfigError, match=r"data.path: no file"):
        load_table(tmp_path / "absent.csv", TARGETS)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=r"cannot read .*bad.npz as a NumPy .npz archive"):
        load_table(tmp_path / "bad.npz", TARGETS)
