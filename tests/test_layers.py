"""mtlkit.layers: torchMTL's wrapping layers and the combinators, checked against torch ops."""

import pytest
import torch
from torch import nn

from mtlkit import MTLModel, layers


def test_all_layers_are_modules():
    made = [
        layers.Concat(1),
        layers.SimpleSelect(0),
        layers.SliceSelect(slice(1)),
        layers.Sum(),
        layers.Mean(),
        layers.Stack(),
        layers.Lambda(abs),
    ]
    assert all(isinstance(m, nn.Module) for m in made)


def test_concat_joins_its_positional_inputs_along_dim():
    a, b, c = torch.randn(2, 3), torch.randn(2, 1), torch.randn(2, 2)
    assert layers.Concat(dim=1)(a, b, c).equal(torch.cat([a, b, c], dim=1))
    assert layers.Concat(dim=0)(a, a).shape == (4, 3)


def test_simple_select_takes_one_element_of_the_first_axis():
    x1, x2 = torch.randn(3), torch.randn(4)
    assert layers.SimpleSelect(selection_axis=1)([x1, x2]) is x2
    t = torch.arange(6).reshape(3, 2)
    assert layers.SimpleSelect(selection_axis=2)(t).tolist() == [4, 5]


def test_slice_select_indexes_with_the_slice():
    t = torch.arange(10)
    assert layers.SliceSelect(sel_slice=slice(2, 8, 3))(t).tolist() == [2, 5]
    assert layers.SliceSelect(slice(1, None))(["a", "b", "c"]) == ["b", "c"]


def test_sum_and_mean_are_elementwise_with_broadcasting():
    a, b, c = torch.randn(2, 3), torch.randn(2, 3), torch.randn(1, 3)
    torch.testing.assert_close(layers.Sum()(a, b, c), a + b + c)
    torch.testing.assert_close(layers.Mean()(a, b, c), (a + b + c) / 3)
    assert layers.Sum()(a).equal(a)


def test_stack_adds_an_axis():
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    assert layers.Stack(dim=1)(a, b).equal(torch.stack([a, b], dim=1))


def test_lambda_wraps_a_callable_and_rejects_others():
    assert layers.Lambda(torch.maximum)(torch.tensor(1.0), torch.tensor(2.0)).item() == 2.0
    with pytest.raises(TypeError, match="callable"):
        layers.Lambda(3)


def test_layers_combine_graph_nodes():
    tasks = [
        {"name": "a", "layers": layers.Lambda(lambda x: x + 1)},
        {"name": "b", "layers": layers.Lambda(lambda x: x * 3)},
        {"name": "mean", "layers": layers.Mean(), "anchor_layer": ["a", "b"]},
        {"name": "pair", "layers": layers.Stack(dim=0), "anchor_layer": ["a", "b"]},
        {"name": "second", "layers": layers.SimpleSelect(1), "anchor_layer": "pair"},
    ]
    (mean, second), _, _ = MTLModel(tasks, output_tasks=["mean", "second"])(torch.tensor([1.0, 2.0]))
    assert mean.tolist() == [2.5, 4.5] and second.tolist() == [3.0, 6.0]
