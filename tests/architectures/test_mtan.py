"""MTAN: per-task attention masks over any staged encoder."""

import torch
from torch import nn

from mtlkit.architectures import MTAN

TASKS = ["a", "b"]


def test_attention_works_across_stages_that_change_shape_and_rank():
    def encoder():
        return nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Flatten(), nn.Linear(6 * 4 * 4, 5), nn.ReLU()),
        )

    torch.manual_seed(0)
    model = MTAN(TASKS, encoder, {t: nn.Linear(5, 2) for t in TASKS})
    out, reps = model.forward_with_reps(torch.randn(3, 3, 8, 8))
    assert [tuple(r.shape) for r in reps] == [(3, 4, 8, 8), (3, 6, 4, 4), (3, 5)]
    assert {t: tuple(v.shape) for t, v in out.items()} == {"a": (3, 2), "b": (3, 2)}


def test_task_features_are_the_last_shared_features_scaled_by_a_mask_in_0_1():
    torch.manual_seed(0)

    def stages():
        return nn.Sequential(nn.Sequential(nn.Linear(4, 6), nn.Tanh()), nn.Sequential(nn.Linear(6, 6), nn.Tanh()))

    model = MTAN(TASKS, stages, {t: nn.Identity() for t in TASKS})
    out, reps = model.forward_with_reps(torch.randn(5, 4))
    ratio = out["a"] / reps[-1]
    assert ((ratio > 0) & (ratio < 1)).all()
    assert not torch.allclose(out["a"], out["b"])
