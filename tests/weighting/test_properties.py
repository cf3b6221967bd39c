"""Every registered gradient method has the properties it claims (`properties`), on random matrices.

The property checks and matrices are in `balancer_properties.py`; a method (or a configuration of it)
lists what it claims, and each claim is checked on every matrix of that property's set.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch

from mtlkit.weighting import GradientBalancer, available, get

sys.path.insert(0, str(Path(__file__).parent))
from balancer_properties import CHECKS, PROPERTIES, check_non_conflicting, check_permutation_invariant

GRADIENT_METHODS = [name for name in available(aliases=False) if isinstance(get(name, tasks=2), GradientBalancer)]
# Configurations whose claims differ from the defaults', beside each method's defaults.
CONFIGURATIONS = [(name, {}) for name in GRADIENT_METHODS] + [
    ("cagrad", {"c": 1.0}),
    ("cagrad", {"c": 2.0}),
    ("cagrad", {"c": 0.0}),
    ("mgda", {"normalization": "l2"}),
    ("mgda", {"normalization": "l2", "apply_to": "normalized"}),
    ("upgrad", {"norm_eps": 1e-4, "reg_eps": 1e-4}),
    ("aligned_mtl", {"reduction": "mean"}),
]


def _maker(name: str, options: dict):
    return functools.partial(lambda T, n, o: get(n, tasks=T, **o), n=name, o=options)


def _claims(name: str, options: dict) -> frozenset[str]:
    return get(name, tasks=2, **options).properties


def _min_tasks(name: str, options: dict) -> int:
    # Robust aggregators (Krum, TrimmedMean) are defined only from a number of task gradients on.
    return getattr(get(name, tasks=2, **options), "min_tasks", 1)


CASES = [
    pytest.param(name, options, prop, i, id=f"{name}{options or ''}-{prop}-{i}")
    for name, options in CONFIGURATIONS
    for prop in sorted(_claims(name, options))
    for i in range(len(CHECKS[prop][1]))
    if CHECKS[prop][1][i].shape[0] >= _min_tasks(name, options)
]


@pytest.mark.parametrize(("name", "options", "prop", "i"), CASES)
def test_method_has_the_property_it_claims(name, options, prop, i):
    check, matrices = CHECKS[prop]
    check(_maker(name, options), matrices[i])


# Methods that claim no property, and why: MoDo and SDMGrad compute each step from further
# batches (a StepContext), not from one J; MoCo's λ-step squares tracked gradients, which
# overflows float32 for entries near 1e15.
CLAIM_NOTHING = {"modo", "sdmgrad", "moco"}


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_every_gradient_method_claims_known_properties_including_expected_structure(name):
    claims = get(name, tasks=2).properties
    assert isinstance(claims, frozenset) and claims <= set(PROPERTIES), claims
    assert ("expected_structure" in claims) != (name in CLAIM_NOTHING)


def test_cagrad_claims_non_conflicting_exactly_from_c_equal_one():
    assert "non_conflicting" not in get("cagrad", c=0.99).properties
    assert "non_conflicting" in get("cagrad", c=1.0).properties


def test_the_checks_catch_a_violation():
    # The plain mean of two opposed gradients conflicts with the smaller one.
    J = torch.tensor([[1.0, 0.0], [-2.0, 0.1]], dtype=torch.float64)
    with pytest.raises(AssertionError, match="conflicts"):
        check_non_conflicting(_maker("cagrad", {"c": 0.0}), J)
    # PCGrad's random task order makes it order-dependent on three conflicting tasks.
    J = torch.tensor([[1.0, 0.0], [-0.5, 1.0], [-0.5, -1.2]], dtype=torch.float64)
    with pytest.raises(AssertionError, match="permuting"):
        check_permutation_invariant(_maker("pcgrad", {}), J)
