"""Cross-stitch units: initialisation and what they mix."""

import pytest
import torch
from torch import nn

from mtlkit.architectures import CrossStitch
from mtlkit.errors import SpecError


def stages() -> nn.Sequential:
    return nn.Sequential(*(nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(3)))


def make(tasks, **kwargs) -> CrossStitch:
    return CrossStitch(tasks, stages, {t: nn.Linear(4, 1) for t in tasks}, **kwargs)


def test_units_start_as_the_papers_convex_combination():
    two = make(["a", "b"])
    assert len(two.units) == 2  # after every stage but the last
    for unit in two.units:
        torch.testing.assert_close(unit.data, torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    three = make(["a", "b", "c"], alpha_same=0.7)
    unit = three.units[0].data
    torch.testing.assert_close(unit.diagonal(), torch.full((3,), 0.7))
    torch.testing.assert_close(unit[0, 1:], torch.full((2,), 0.15))
    torch.testing.assert_close(unit.sum(1), torch.ones(3))


def test_identity_units_keep_the_columns_apart():
    torch.manual_seed(0)
    model = make(["a", "b"], alpha_same=1.0)
    x = torch.randn(5, 4)
    model(x)["a"].sum().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.columns["b"].parameters())
    assert all(p.grad.abs().sum() > 0 for p in model.columns["a"].parameters())


def test_cross_stitch_needs_two_tasks():
    with pytest.raises(SpecError, match="two tasks"):
        make(["a"])
