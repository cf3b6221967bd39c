"""The properties DualProj, ConFIG, Krum and TrimmedMean claim (`properties`), checked directly on random J.

(The shared property suite checks every registered method's claims; this pins these methods'
claims in their own branch.)
"""

from __future__ import annotations

import pytest
import torch

from mtlkit.weighting import get

METHODS = ["dualproj", "config", "krum", "trimmed_mean"]


def _update(name: str, J: torch.Tensor) -> torch.Tensor:
    return get(name, tasks=J.shape[0]).combine(J, torch.ones(J.shape[0]), torch.arange(J.shape[0]))[0]


def _matrices(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(T, P, generator=gen, dtype=torch.float64) for T, P in [(3, 5), (5, 4), (6, 12)]]


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("seed", range(3))
def test_claimed_properties_hold(name, seed):
    claims = get(name, tasks=3).properties
    for J in _matrices(seed):
        d = _update(name, J)
        assert d.shape == J.shape[1:] and bool(torch.isfinite(d).all())
        if "permutation_invariant" in claims:
            perm = torch.randperm(J.shape[0], generator=torch.Generator().manual_seed(seed))
            assert torch.allclose(_update(name, J[perm]), d, atol=1e-9)
        if "non_conflicting" in claims:
            assert bool((J @ d >= -1e-7 * J.norm(dim=1) * d.norm()).all())
        if "linear_under_scaling" in claims:
            c1, c2 = torch.rand(2, J.shape[0], generator=torch.Generator().manual_seed(seed), dtype=J.dtype) + 0.1
            expected = 0.3 * _update(name, c1[:, None] * J) + 0.7 * _update(name, c2[:, None] * J)
            assert torch.allclose(_update(name, (0.3 * c1 + 0.7 * c2)[:, None] * J), expected, atol=1e-9)


def test_claims_are_what_the_papers_guarantee():
    assert get("dualproj", tasks=2).properties >= {"non_conflicting", "permutation_invariant"}
    assert "linear_under_scaling" in get("config", tasks=2).properties
    # ConFIG is conflict-free only for linearly independent gradients; Krum/TrimmedMean never claim it.
    assert all("non_conflicting" not in get(n, tasks=3).properties for n in ("config", "krum", "trimmed_mean"))
