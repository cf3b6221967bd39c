"""The Euclidean projection onto the simplex against scipy's constrained least squares."""

import numpy as np
import pytest
import torch

from mtlkit.weighting._simplex import project_to_simplex, restrict


@pytest.mark.parametrize("seed", range(5))
def test_projection_matches_scipy(seed, simplex_projection):
    v = torch.randn(6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
    assert np.allclose(project_to_simplex(v).numpy(), simplex_projection(v.numpy()), atol=1e-7)


def test_points_of_the_simplex_are_fixed_and_shifts_along_ones_do_not_matter():
    w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    assert torch.allclose(project_to_simplex(w), w)
    assert torch.allclose(project_to_simplex(w + 4.0), w)


def test_restrict_renormalises_the_batch_tasks_and_reports_their_share():
    weights = torch.tensor([0.5, 0.2, 0.3])
    sub, share = restrict(weights, torch.tensor([1, 2]))
    assert torch.allclose(sub, torch.tensor([0.4, 0.6])) and torch.isclose(share, torch.tensor(0.5))
