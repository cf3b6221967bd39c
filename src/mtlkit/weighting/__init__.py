"""Loss and gradient balancing methods behind one interface (see `Balancer`)."""

from typing import Any

from mtlkit.weighting.base import Balancer, BalanceResult, Collectives, GradientBalancer, LossBalancer
from mtlkit.weighting.registry import available, get, is_registered, register
from mtlkit.weighting.wrappers import wrap


def __getattr__(name: str) -> Any:
    # The method modules load on first use (`get`, or `IMTL` here), not at `import mtlkit`.
    if name == "IMTL":
        from mtlkit.weighting.methods.imtl import IMTL

        return IMTL
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "IMTL",
    "BalanceResult",
    "Balancer",
    "Collectives",
    "GradientBalancer",
    "LossBalancer",
    "available",
    "get",
    "is_registered",
    "register",
    "wrap",
]
