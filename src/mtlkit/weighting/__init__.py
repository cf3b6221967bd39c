"""Loss and gradient balancing methods behind one interface (see `Balancer`)."""

from mtlkit.weighting.base import Balancer, BalanceResult, GradientBalancer, LossBalancer
from mtlkit.weighting.methods.imtl import IMTL
from mtlkit.weighting.registry import available, get, is_registered, register
from mtlkit.weighting.wrappers import wrap

__all__ = [
    "IMTL",
    "BalanceResult",
    "Balancer",
    "GradientBalancer",
    "LossBalancer",
    "available",
    "get",
    "is_registered",
    "register",
    "wrap",
]
