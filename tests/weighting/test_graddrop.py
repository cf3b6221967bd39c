"""GradDrop's sign-purity masking on a hand-checked example, leak and seeding."""

from __future__ import annotations

import pytest
import torch

from mtlkit.weighting import get
from mtlkit.weighting.methods.graddrop import GradDrop, graddrop

# Two tasks, four coordinates. Purity P = ½(1 + Σ/Σ|·|):
#   coord 0: (1, 1)   -> P = 1    : positives always kept          -> 2
#   coord 1: (-2, 1)  -> P = 1/3  : U = 0.5 > P keeps negatives    -> -2 ; U = 0.2 keeps positives -> 1
#   coord 2: (3, -1)  -> P = 3/4  : U = 0.5 < P keeps positives    -> 3  ; U = 0.9 keeps negatives -> -1
#   coord 3: (0, 0)   -> nothing to keep                           -> 0
J = torch.tensor([[1.0, -2.0, 3.0, 0.0], [1.0, 1.0, -1.0, 0.0]], dtype=torch.float64)


@pytest.mark.parametrize(
    ("U", "expected"),
    [([0.5, 0.5, 0.5, 0.5], [2.0, -2.0, 3.0, 0.0]), ([0.1, 0.2, 0.9, 0.3], [2.0, 1.0, -1.0, 0.0])],
)
def test_sign_purity_keeps_one_sign_per_coordinate(U, expected):
    out = graddrop(J, torch.tensor(U, dtype=torch.float64))
    assert torch.allclose(out, torch.tensor(expected, dtype=torch.float64))


def test_full_leak_passes_the_sum_and_per_task_leak_keeps_that_task():
    U = torch.full((4,), 0.5, dtype=torch.float64)
    assert torch.allclose(graddrop(J, U, leak=1.0), J.sum(0))
    # Task 1 leaks fully: its dropped coordinates 1 and 2 come back.
    expected = torch.tensor([2.0, -2.0 + 1.0, 3.0 - 1.0, 0.0], dtype=torch.float64)
    assert torch.allclose(graddrop(J, U, leak=torch.tensor([0.0, 1.0])), expected)


def test_purity_one_keeps_everything_when_gradients_agree():
    agree = torch.tensor([[1.0, -2.0], [3.0, -1.0]], dtype=torch.float64)
    assert torch.allclose(GradDrop().aggregate(agree), agree.sum(0))


def test_seed_fixes_the_draws_and_state_dict_restores_them():
    gen = torch.Generator().manual_seed(0)
    conflicting = torch.randn(3, 50, generator=gen, dtype=torch.float64)
    a, b = GradDrop(seed=4), GradDrop(seed=4)
    assert torch.equal(a.aggregate(conflicting), b.aggregate(conflicting))
    state = a.state_dict()
    expected = a.aggregate(conflicting)
    c = GradDrop(seed=0)
    c.load_state_dict(state)
    assert torch.equal(c.aggregate(conflicting), expected)


def test_leak_values_are_checked():
    with pytest.raises(ValueError, match="leak"):
        GradDrop(leak=1.5)
    with pytest.raises(ValueError, match="leak values for 3 tasks"):
        GradDrop(tasks=3, leak=[0.0, 1.0])
    with pytest.raises(ValueError, match="got none"):
        GradDrop(tasks=1, leak=[])


def test_zero_and_identical_gradients_give_finite_updates():
    Z = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    assert bool(torch.isfinite(GradDrop().aggregate(Z)).all())


def test_backward_through_registry_fills_finite_gradients(small_mtl):
    model = small_mtl(num_tasks=3)
    losses, rep = model()
    get("graddrop", leak=[0.0, 0.5, 1.0], tasks=3).backward(losses, shared_reps=rep)
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def _graddrop_by_masks(J: torch.Tensor, U: torch.Tensor, leak: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 of the paper written literally: purity, per-task masks, leak."""
    purity = 0.5 * (1 + J.sum(0) / J.abs().sum(0))
    mask = ((purity > U) & (J > 0)) | ((purity < U) & (J < 0))
    return ((leak[:, None] + (1 - leak[:, None]) * mask) * J).sum(0)


@pytest.mark.parametrize("leak", [[0.0, 0.0, 0.0, 0.0], [0.3, 0.0, 1.0, 0.5]])
def test_matches_a_literal_mask_based_transcription_on_random_gradients(leak):
    generator = torch.Generator().manual_seed(0)
    J = torch.randn(4, 1000, generator=generator, dtype=torch.float64)
    U = torch.rand(1000, generator=generator, dtype=torch.float64)
    leak = torch.tensor(leak, dtype=torch.float64)
    assert torch.allclose(graddrop(J, U, leak), _graddrop_by_masks(J, U, leak), atol=1e-12)
