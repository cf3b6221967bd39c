"""`correlated_regression`: the MMoE paper's two synthetic regression tasks."""

import pytest
import torch

from mtlkit.data.synthetic import correlated_regression


def test_shapes_dtype_and_seeded_draws():
    x, y1, y2 = correlated_regression(50, dim=7, correlation=0.5, seed=3)
    assert (x.shape, y1.shape, y2.shape) == ((50, 7), (50, 1), (50, 1))
    assert x.dtype == y1.dtype == torch.float32
    again = correlated_regression(50, dim=7, correlation=0.5, seed=3)
    assert all(torch.equal(a, b) for a, b in zip((x, y1, y2), again))
    assert not torch.equal(y1, correlated_regression(50, dim=7, correlation=0.5, seed=4)[1])


def test_linear_part_has_the_asked_scale_and_cosine_similarity():
    # Without sinusoids and noise, y_i = w_iᵀx exactly: least squares recovers w1 and w2.
    for p in (1.0, 0.9, 0.5, -0.3):
        x, y1, y2 = correlated_regression(40, dim=5, correlation=p, seed=0, num_sin=0, scale=2.0, noise_std=0.0)
        w = torch.linalg.lstsq(x.double(), torch.cat([y1, y2], 1).double()).solution
        torch.testing.assert_close(w.norm(dim=0), torch.tensor([2.0, 2.0], dtype=torch.float64), atol=1e-5, rtol=0)
        cosine = (w[:, 0] @ w[:, 1]) / (w[:, 0].norm() * w[:, 1].norm())
        assert cosine.item() == pytest.approx(p, abs=1e-5)


def test_correlation_one_gives_the_same_task_twice_up_to_noise():
    _x, y1, y2 = correlated_regression(30, dim=4, correlation=1.0, seed=1, noise_std=0.0)
    torch.testing.assert_close(y1, y2)
    _, y1, y2 = correlated_regression(4000, dim=4, correlation=1.0, seed=1, noise_std=0.1)
    assert (y1 - y2).std().item() == pytest.approx(0.1 * 2**0.5, rel=0.1)


def test_labels_are_less_correlated_when_the_tasks_are():
    corr = []
    for p in (1.0, 0.9, 0.5):
        _, y1, y2 = correlated_regression(4000, 20, p, seed=0)
        corr.append(torch.corrcoef(torch.cat([y1, y2], 1).T)[0, 1])
    assert corr[0] > corr[1] > corr[2]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="correlation"):
        correlated_regression(10, dim=4, correlation=1.5)
    with pytest.raises(ValueError, match="dim"):
        correlated_regression(10, dim=1)
