"""Balancers looked up by name: `get("cagrad", c=0.4)`, `available()`.

Names are case-insensitive and `-` reads as `_`, so "Nash-MTL", "nash_mtl" and
"NASH_MTL" are one name. The wrapper options `every` and `ema` (`mtlkit.weighting.wrappers`)
apply to any method that reports task weights, as keywords (`get("mgda", every=4)`) or
after an '@' in the name (`get("mgda@every=4,ema=0.9")`); no method may use them as its own
option names. Gradient methods also take `rep_reduce` ('sample' or 'batch', see
`GradientBalancer`).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from mtlkit.errors import ConfigError
from mtlkit.weighting.base import Balancer, GradientBalancer
from mtlkit.weighting.wrappers import WRAPPERS, parse_spec, wrap

_REGISTRY: dict[str, type[Balancer]] = {}
_PRIMARY: dict[type[Balancer], str] = {}  # each class's first registered name

B = TypeVar("B", bound=type[Balancer])


def register(*names: str) -> Callable[[B], B]:
    """Class decorator: make a balancer available under each of `names` (the first is its main name)."""

    def decorate(cls: B) -> B:
        taken = sorted(set(WRAPPERS) & set(inspect.signature(cls).parameters))
        if taken:
            raise ValueError(f"{cls.__name__} takes option(s) {taken}, which are the wrappers' names: rename them")
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
    """Whether `get(name)` finds a balancer (names are case-insensitive, '-' reads as '_').

    A name with wrapper options ('mgda@every=4') counts when its method is registered;
    malformed options after the '@' raise `ConfigError`.
    """
    _load_methods()
    return _key(parse_spec(name)[0]) in _REGISTRY


def get(name: str, **kwargs: Any) -> Balancer:
    """Build the balancer registered as `name` with the method's keyword options.

    `every` and `ema`, given as keywords or after an '@' in `name`, wrap the method
    (`mtlkit.weighting.wrappers.wrap`); a keyword overrides the same option in the name.
    """
    _load_methods()
    name, wrapper_options = parse_spec(name)
    wrapper_options.update({key: kwargs.pop(key) for key in WRAPPERS if key in kwargs})
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
    if rep_reduce == "sample" and getattr(cls, "batch_rows_only", False):
        raise ConfigError(
            f"balancer {name!r} keeps state in the coordinates of its task gradients, so at a representation it "
            "takes the batch rows: rep_reduce='batch' (its default), not 'sample'"
        )
    signature = inspect.signature(cls)
    try:
        signature.bind(**kwargs)
    except TypeError as error:
        raise ConfigError(f"balancer {name!r} takes the options {signature}; {error}") from error
    method = cls(**kwargs)
    balancer = wrap(method, **wrapper_options) if wrapper_options else method
    if rep_reduce is not None:  # on the method and on its wrapper, whichever runs the backward
        method.rep_reduce = balancer.rep_reduce = rep_reduce
    return balancer


def _key(name: str) -> str:
    return name.lower().replace("-", "_")


def _load_methods() -> None:
    # Importing the method modules runs their @register decorators.
    import mtlkit.weighting.methods  # noqa: F401
