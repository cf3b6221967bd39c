"""HPS: one encoder; a list output gives each task its own element (as in LibMTL)."""

import torch
from torch import nn

from mtlkit.architectures import HPS

TASKS = ["a", "b"]


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(4, 3)
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x):
        h = self.trunk(x)
        return [self.a(h), self.b(h)]


def test_an_encoder_returning_a_list_feeds_the_tth_element_to_the_tth_task():
    torch.manual_seed(0)
    model = HPS(TASKS, TwoOutputs, {t: nn.Identity() for t in TASKS})
    x = torch.randn(2, 4)
    out, reps = model.forward_with_reps(x)
    h = model.encoder.trunk(x)
    torch.testing.assert_close(out["a"], model.encoder.a(h))
    torch.testing.assert_close(out["b"], model.encoder.b(h))
    assert len(reps) == 2
