"""Balancers looked up by name: `get("cagrad", c=0.4)`, `available()`.

Names are case-insensitive and `-` reads as `_`, so "Nash-MTL", "nash_mtl" and
"NASH_MTL" are one name. Gradient methods also take `rep_reduce` ('sample' or 'batch',
see `GradientBalancer`).
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, TypeVar

from mtlkit.errors import ConfigError
from mtlkit.weighting.base import Balancer, GradientBalancer

_REGISTRY: dict[str, type[Balancer]] = {}
_PRIMARY: dict[type[Balancer], str] = {}  # each class's first registered name

B = TypeVar("B", bound=type[Balancer])


def register(*names: str) -> Callable[[B], B]:
    """Class decorator: make a balancer available under each of `names` (the first is its main name)."""

    def decorate(cls: B) -> B:
        _PRIMARY.setdefault(cls, _key(names[0]))
        for name in names:
            key = _key(name)
            if key in _REGISTRY and _REGISTRY[key] is not cls:
                raise ValueError(f"balancer name {name!r} is already taken by {_REGISTRY[key].__name__}")
            _REGISTRY[key] = cls
        return cls

    return decorate


def available(aliases: bool = True) -> list[str]:
    """The registered balancer names, sorted; `aliases=False`: one (main) name per method."""
    _load_methods()
    if aliases:
        return sorted(_REGISTRY)
    return sorted(_PRIMARY[cls] for cls in set(_REGISTRY.values()))


def is_registered(name: str) -> bool:
    """Whether `get(name)` finds a balancer (names are case-insensitive, '-' reads as '_')."""
    _load_methods()
    return _key(name) in _REGISTRY


def get(name: str, **kwargs: Any) -> Balancer:
    """Build the balancer registered as `name` with the method's keyword options."""
    _load_methods()
    key = _key(name)
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"unknown balancer {name!r}.{hint} Available: {', '.join(sorted(_REGISTRY))}.")
    cls = _REGISTRY[key]
    rep_reduce = kwargs.pop("rep_reduce", None)
    if rep_reduce is not None and (not issubclass(cls, GradientBalancer) or rep_reduce not in ("sample", "batch")):
        raise ConfigError(
            f"balancer {name!r}: rep_reduce={rep_reduce!r} needs a gradient method and 'sample' or 'batch'"
        )
    signature = inspect.signature(cls)
    try:
        signature.bind(**kwargs)
    except TypeError as error:
        raise ConfigError(f"balancer {name!r} takes the options {signature}; {error}") from error
    method = cls(**kwargs)
    if rep_reduce is not None:
        method.rep_reduce = rep_reduce
    return method


def _key(name: str) -> str:
    return name.lower().replace("-", "_")


def _load_methods() -> None:
    # Importing the method modules runs their @register decorators.
    import mtlkit.weighting.methods  # noqa: F401
