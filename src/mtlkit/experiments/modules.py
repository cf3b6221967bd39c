"""Modules from plain data: layer specs for YAML graphs, the encoders and heads of the built-in runs.

A layer spec is a class name from `mtlkit.layers` or `torch.nn` with its arguments:
`ReLU`, `{Linear: [64, 32]}`, `{Dropout: 0.1}`, `{Linear: {in_features: 64, out_features: 32}}`,
or a list of such specs (an `nn.Sequential`). Only `nn.Module` classes from those two
namespaces can be named, so a config cannot build arbitrary objects.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit import layers as mtl_layers
from mtlkit.errors import ConfigError

LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "bce_with_logits": F.binary_cross_entropy_with_logits,
}
ENCODERS = ("auto", "mlp", "cnn")


def build_layer(spec: Any, where: str) -> nn.Module:
    """An `nn.Module` from a layer spec; `where` names the config entry in errors."""
    if isinstance(spec, (list, tuple)):
        return nn.Sequential(*(build_layer(item, where) for item in spec))
    if isinstance(spec, str):
        name, args = spec, ()
    elif isinstance(spec, Mapping) and len(spec) == 1:
        name, args = next(iter(spec.items()))
    else:
        raise ConfigError(f"{where}: a layer is a class name or a one-key mapping {{Name: args}}, got {spec!r}")
    cls = _module_class(name, where)
    try:
        if isinstance(args, Mapping):
            return cls(**args)
        if isinstance(args, (list, tuple)):
            return cls(*args)
        return cls(args)
    except TypeError as err:
        raise ConfigError(f"{where}: cannot build {name} from {args!r}: {err}") from err


def loss_function(name: str, where: str) -> Callable[[Tensor, Tensor], Tensor]:
    """A loss by name: cross_entropy, mse, l1 or bce_with_logits."""
    if name not in LOSSES:
        raise ConfigError(f"{where}: unknown loss {name!r}; use one of {', '.join(LOSSES)}")
    return LOSSES[name]


def encoder_factory(spec: Mapping[str, Any], input_shape: Sequence[int]) -> Callable[[], nn.Sequential]:
    """A callable building a fresh encoder, as a sequence of stages, for inputs of `input_shape`.

    `type: mlp` (vector inputs): `hidden` sizes, one Linear+ReLU stage each (default [128, 64]).
    `type: cnn` (C×H×W images): `channels`, one Conv3×3+BatchNorm+ReLU+MaxPool2 stage each
    (default [16, 32]). `type: auto` picks by the number of input dimensions.
    """
    options = dict(spec)
    kind = options.pop("type", "auto")
    if kind not in ENCODERS:
        raise ConfigError(f"model.encoder.type: unknown value {kind!r}; use one of {', '.join(ENCODERS)}")
    if kind == "auto":
        kind = "cnn" if len(input_shape) == 3 else "mlp"
    if kind == "mlp":
        hidden = _sizes(options.pop("hidden", [128, 64]), "hidden", "layer sizes, e.g. [128, 64]")
        dropout = options.pop("dropout", 0.0)
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise ConfigError(f"model.encoder.dropout: a probability in [0, 1), e.g. 0.1; got {dropout!r}")
        _no_more(options, "mlp")
        if len(input_shape) != 1:
            raise ConfigError(f"model.encoder: an mlp encoder needs vector inputs, got shape {tuple(input_shape)}")
        sizes = [int(input_shape[0]), *hidden]
        return lambda: nn.Sequential(
            *(
                nn.Sequential(nn.Linear(a, b), nn.ReLU(), *([nn.Dropout(dropout)] if dropout else []))
                for a, b in itertools.pairwise(sizes)
            )
        )
    channels = _sizes(options.pop("channels", [16, 32]), "channels", "channel counts, e.g. [16, 32]")
    _no_more(options, "cnn")
    if len(input_shape) != 3:
        raise ConfigError(f"model.encoder: a cnn encoder needs C×H×W inputs, got shape {tuple(input_shape)}")
    sizes = [int(input_shape[0]), *channels]
    return lambda: nn.Sequential(
        *(
            nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2))
            for a, b in itertools.pairwise(sizes)
        )
    )


def head(representation_shape: Sequence[int], out_features: int) -> nn.Module:
    """A task head: flatten (feature maps keep their spatial layout: MultiMNIST's left and right
    digits differ only by position), then linear; one output comes back as a vector."""
    layers: list[nn.Module] = [nn.Flatten()] if len(representation_shape) > 1 else []
    layers.append(nn.Linear(math.prod(representation_shape), out_features))
    if out_features == 1:
        layers.append(nn.Flatten(0))
    return nn.Sequential(*layers)


def output_shape(factory: Callable[[], nn.Module], input_shape: Sequence[int]) -> tuple[int, ...]:
    """Per-example output shape of a fresh module from `factory` (a dry run on zeros)."""
    module = factory().eval()
    with torch.no_grad():
        return tuple(module(torch.zeros(2, *input_shape)).shape[1:])


def _module_class(name: Any, where: str) -> type[nn.Module]:
    for namespace in (mtl_layers, nn):
        cls = getattr(namespace, str(name), None)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            return cls
    known = [n for n in dir(nn) if isinstance(getattr(nn, n), type) and issubclass(getattr(nn, n), nn.Module)]
    known += [n for n in dir(mtl_layers) if isinstance(getattr(mtl_layers, n), type)]
    close = difflib.get_close_matches(str(name), known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"{where}: {name!r} is not a module of mtlkit.layers or torch.nn.{hint}")


def _sizes(value: Any, key: str, what: str) -> list[int]:
    """A list of positive integers from the config, or a ConfigError naming `model.encoder.<key>`."""
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    ):
        raise ConfigError(f"model.encoder.{key}: a list of positive integers ({what}); got {value!r}")
    return list(value)


def _no_more(options: Mapping[str, Any], kind: str) -> None:
    if options:
        raise ConfigError(f"model.encoder: unknown option(s) {sorted(options)} for a {kind} encoder")
