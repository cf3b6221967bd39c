"""Layer specs, encoders and heads built from plain data."""

import pytest
import torch
from torch import nn

from mtlkit import layers
from mtlkit.errors import ConfigError
from mtlkit.experiments.modules import build_layer, encoder_factory, head, loss_function, output_shape


def test_layer_specs_build_torch_and_mtlkit_modules():
    seq = build_layer(
        [{"Linear": [4, 3]}, "ReLU", {"Dropout": 0.5}, {"Linear": {"in_features": 3, "out_features": 2}}], "here"
    )
    assert [type(m) for m in seq] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert seq[0].in_features == 4 and seq[2].p == 0.5 and seq[3].out_features == 2
    assert isinstance(build_layer({"Concat": {"dim": 1}}, "here"), layers.Concat)


def test_layer_specs_cannot_name_anything_but_modules():
    with pytest.raises(ConfigError, match="node x: 'Linaer'.*Did you mean Linear"):
        build_layer("Linaer", "node x")
    with pytest.raises(ConfigError, match="not a module"):
        build_layer("Parameter", "node x")  # torch.nn.Parameter is a tensor, not a module
    with pytest.raises(ConfigError, match="cannot build Linear"):
        build_layer({"Linear": [4]}, "node x")


def test_loss_names_map_to_functions():
    assert loss_function("mse", "t")(torch.ones(3), torch.zeros(3)).item() == 1.0
    with pytest.raises(ConfigError, match="unknown loss 'hinge'"):
        loss_function("hinge", "t")


@pytest.mark.parametrize(
    ("shape", "spec", "stages", "rep"),
    [((6,), {}, 2, (64,)), ((6,), {"type": "mlp", "hidden": [5]}, 1, (5,)), ((1, 8, 8), {}, 2, (32, 2, 2))],
)
def test_encoders_are_sequences_of_stages_sized_for_the_input(shape, spec, stages, rep):
    factory = encoder_factory(spec, shape)
    encoder = factory()
    assert isinstance(encoder, nn.Sequential) and len(encoder) == stages
    assert factory() is not encoder  # a fresh copy each call (experts, task columns)
    assert output_shape(factory, shape) == rep


def test_encoder_type_must_fit_the_input():
    with pytest.raises(ConfigError, match="cnn encoder needs C×H×W"):
        encoder_factory({"type": "cnn"}, (6,))
    with pytest.raises(ConfigError, match="unknown option"):
        encoder_factory({"type": "mlp", "widths": [3]}, (6,))


def test_heads_keep_the_spatial_layout_of_feature_maps_and_return_vectors_for_one_output():
    h = head((2, 1, 2), 3)
    assert h[1].in_features == 4  # every position has its own weights
    left, right = torch.zeros(1, 2, 1, 2), torch.zeros(1, 2, 1, 2)
    left[..., 0], right[..., 1] = 1.0, 1.0
    assert not torch.allclose(h(left), h(right))  # global pooling would make these equal
    assert head((7,), 1)(torch.zeros(5, 7)).shape == (5,)
