"""Deterministic random streams derived from a base seed and counters (epoch, pass, ...)."""

from __future__ import annotations

import torch

_MODULUS = 2**63 - 1
_MULTIPLIER = 1_000_003  # a prime, so distinct counter tuples give distinct seeds in practice


def derive_seed(seed: int, *counters: int) -> int:
    """A seed for the stream `(seed, *counters)`; equal inputs give equal seeds in every process."""
    value = seed % _MODULUS
    for counter in counters:
        value = (value * _MULTIPLIER + counter + 1) % _MODULUS
    return value


def generator(seed: int, *counters: int) -> torch.Generator:
    """A CPU generator seeded for the stream `(seed, *counters)` (global RNG untouched)."""
    return torch.Generator().manual_seed(derive_seed(seed, *counters))
