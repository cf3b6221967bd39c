"""Krum and TrimmedMean: robust aggregators against brute-force computations on small matrices."""

from __future__ import annotations

import itertools

import pytest
import torch

from mtlkit.weighting import get
from mtlkit.weighting.methods.krum import Krum
from mtlkit.weighting.methods.trimmed_mean import TrimmedMean


def _krum_reference(J: torch.Tensor, f: int, m: int) -> torch.Tensor:
    rows = J.tolist()
    T = len(rows)
    scores = []
    for i in range(T):
        distances = sorted(sum((a - b) ** 2 for a, b in zip(rows[i], rows[j])) for j in range(T) if j != i)
        scores.append(sum(distances[: T - f - 2]))
    cutoff = sorted(scores)[m - 1]
    tied = [i for i in range(T) if abs(scores[i] - cutoff) <= 1e-9 * cutoff]
    below = [i for i in range(T) if scores[i] < cutoff and i not in tied]
    share = (m - len(below)) / len(tied)  # rows tied at the cut-off share the slots left
    return (sum(J[i] for i in below) + share * sum(J[i] for i in tied)) / m


@pytest.mark.parametrize(("T", "f", "m"), [(3, 0, 1), (5, 1, 1), (6, 1, 3), (7, 2, 2)])
def test_krum_matches_brute_force_scores(T, f, m):
    J = torch.randn(T, 4, generator=torch.Generator().manual_seed(T + f), dtype=torch.float64)
    assert torch.allclose(Krum(n_byzantine=f, n_selected=m).aggregate(J), _krum_reference(J, f, m))


def test_krum_splits_the_weight_between_rows_tied_at_the_cutoff():
    # T = 3, f = 0: each score is the distance to the nearest row; rows 0 and 1 are each other's nearest.
    J = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]], dtype=torch.float64)
    assert torch.allclose(Krum().aggregate(J), torch.tensor([0.5, 0.0], dtype=torch.float64))
    assert torch.allclose(Krum().aggregate(J[[2, 1, 0]]), torch.tensor([0.5, 0.0], dtype=torch.float64))


def test_krum_ignores_an_outlier_gradient():
    J = torch.tensor([[1.0, 1.0], [1.1, 0.9], [0.9, 1.1], [100.0, -100.0]], dtype=torch.float64)
    d = Krum(n_byzantine=0, n_selected=3).aggregate(J)
    assert torch.allclose(d, J[:3].mean(dim=0))


def test_krum_names_the_minimum_number_of_tasks():
    with pytest.raises(ValueError, match="at least 2·n_byzantine \\+ 3 = 5"):
        Krum(n_byzantine=1).aggregate(torch.ones(4, 2))
    with pytest.raises(ValueError, match="n_selected"):
        Krum(n_selected=4).aggregate(torch.ones(3, 2))


def _trimmed_reference(J: torch.Tensor, trim: int) -> torch.Tensor:
    columns = list(zip(*J.tolist()))
    out = []
    for column in columns:
        kept = sorted(column)[trim : len(column) - trim]
        out.append(sum(kept) / len(kept))
    return torch.tensor(out, dtype=J.dtype)


@pytest.mark.parametrize(("T", "trim"), [(3, 1), (5, 1), (5, 2), (4, 0)])
def test_trimmed_mean_matches_a_per_coordinate_loop(T, trim):
    J = torch.randn(T, 6, generator=torch.Generator().manual_seed(T * 10 + trim), dtype=torch.float64)
    assert torch.allclose(TrimmedMean(trim=trim).aggregate(J), _trimmed_reference(J, trim))


def test_trimmed_mean_is_permutation_invariant_and_reports_no_weights():
    J = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    balancer = get("trimmed_mean", tasks=5)
    for perm in itertools.islice(itertools.permutations(range(5)), 6):
        assert torch.equal(balancer.aggregate(J[list(perm)]), balancer.aggregate(J))
    assert balancer.combine(J, torch.ones(5), torch.arange(5))[1] is None
    with pytest.raises(ValueError, match="at least 2·trim \\+ 1 = 3"):
        balancer.aggregate(J[:2])


def test_robust_aggregators_state_the_fewest_tasks_they_accept():
    assert get("krum", tasks=5, n_byzantine=1).min_tasks == 5
    assert get("krum", tasks=5, n_selected=4).min_tasks == 4
    assert get("trimmed_mean", tasks=5, trim=2).min_tasks == 5
