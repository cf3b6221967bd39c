"""The Snorkel MTL tutorial runs on mtlkit: its data generators and the example script end to end."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from mtlkit.data.tutorial import make_circle_dataset, make_inv_circle_dataset, make_square_dataset

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "snorkel_tutorial.py"


def _all_points(splits):
    return torch.cat([X for X, _ in splits]), torch.cat([Y for _, Y in splits])


def test_datasets_have_1000_points_split_80_10_10_in_the_square_around_the_origin():
    splits = make_circle_dataset(1000, 1, seed=0)
    assert [len(X) for X, _ in splits] == [800, 100, 100]
    assert [len(Y) for _, Y in splits] == [800, 100, 100]
    X, Y = _all_points(splits)
    assert X.dtype == torch.float32 and Y.dtype == torch.int64 and X.shape == (1000, 2)
    assert X.min() >= -1 and X.max() <= 1
    assert len(torch.unique(X, dim=0)) == 1000  # splits are disjoint


@pytest.mark.parametrize("r", [1.0, 0.6])
def test_labels_follow_the_circle_square_and_inverse_circle_rules(r):
    for maker, rule in (
        (make_circle_dataset, lambda x, y: x * x + y * y < r * r),
        (make_inv_circle_dataset, lambda x, y: x * x + y * y > r * r),
        (make_square_dataset, lambda x, y: abs(x) < r / 2 and abs(y) < r / 2),
    ):
        X, Y = _all_points(maker(200, r, seed=3))
        expected = [int(rule(x, y)) for x, y in X.tolist()]
        assert Y.tolist() == expected, maker.__name__
        assert 0 < sum(expected) < 200, maker.__name__  # both classes occur


def test_seed_or_global_generator_makes_data_reproducible():
    a = make_square_dataset(50, 1, seed=7)
    b = make_square_dataset(50, 1, seed=7)
    torch.manual_seed(11)
    c = make_square_dataset(50, 1)
    torch.manual_seed(11)
    d = make_square_dataset(50, 1)
    for (xa, ya), (xb, yb), (xc, yc), (xd, yd) in zip(a, b, c, d):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xc, xd) and torch.equal(yc, yd)
    assert not torch.equal(a[0][0], c[0][0])


@pytest.mark.parametrize("splits", [(0.8, 0.2), (0.5, 0.3, 0.3), (1.2, -0.1, -0.1)])
def test_bad_splits_are_rejected(splits):
    with pytest.raises(ValueError, match="splits must be three"):
        make_circle_dataset(100, 1, splits=splits)


@pytest.mark.slow
def test_tutorial_reaches_90_percent_accuracy_on_every_task_and_split():
    spec = importlib.util.spec_from_file_location("snorkel_tutorial_example", EXAMPLE)
    tutorial = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tutorial)

    model, two_task_scores, three_task_scores = tutorial.main(seed=123, verbose=False)

    splits = ("train", "valid", "test")
    expected_two = {f"{t}_task/{t}Dataset/{s}/accuracy" for t in ("circle", "square") for s in splits}
    expected_three = expected_two | {f"inv_circle_task/inv_circleDataset/{s}/accuracy" for s in splits}
    assert set(two_task_scores) == expected_two
    assert set(three_task_scores) == expected_three
    for key, value in {**two_task_scores, **three_task_scores}.items():
        assert value >= 0.9, key
    assert len(model.tasks) == 3
    assert len(model.module_pool) == 4
    assert model.module_pool["base_mlp"] is model.tasks["inv_circle_task"].module_pool["base_mlp"]
