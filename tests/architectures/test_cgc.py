"""CGC: each task gates over the shared experts and its own."""

import torch
from torch import nn

from mtlkit.architectures import CGC

TASKS = ["a", "b"]


def test_each_task_mixes_the_shared_experts_and_only_its_own():
    torch.manual_seed(0)
    model = CGC(TASKS, lambda: nn.Linear(5, 4), {t: nn.Linear(4, 1) for t in TASKS}, num_experts=[2, 1, 3])
    x = torch.randn(6, 5)
    features = {}
    for t in TASKS:
        model.decoders[t].register_forward_hook(lambda m, inp, out, t=t: features.__setitem__(t, inp[0]))
    model(x)
    for t, own in (("a", 1), ("b", 3)):
        g = model.expert_weights(x, t)
        assert g.shape == (6, 2 + own)
        torch.testing.assert_close(g.sum(-1), torch.ones(6))
        experts = list(model.shared_experts) + list(model.task_experts[t])
        expected = sum(g[:, i : i + 1] * e(x) for i, e in enumerate(experts))
        torch.testing.assert_close(features[t], expected)
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == {id(p) for p in model.shared_experts.parameters()}
