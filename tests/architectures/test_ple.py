"""PLE: CGC levels over the encoder's stages, linked by shared gates."""

import torch
from torch import nn

from mtlkit.architectures import CGC, PLE

TASKS = ["a", "b"]


def stages() -> nn.Sequential:
    return nn.Sequential(nn.Sequential(nn.Linear(5, 4), nn.Tanh()), nn.Sequential(nn.Linear(4, 3), nn.Tanh()))


def test_one_extraction_level_per_stage_and_a_shared_gate_over_all_experts_below_the_last():
    model = PLE(TASKS, stages, {t: nn.Linear(3, 1) for t in TASKS}, num_experts=[2, 1, 3], img_size=(5,))
    assert model.num_levels == 2 and len(model.shared_gates) == 1
    assert model.shared_gates[0](torch.randn(4, 5)).shape == (4, 2 + 1 + 3)
    assert [len(model.task_experts[level]["b"]) for level in range(2)] == [3, 3]


def test_with_a_one_stage_encoder_ple_computes_what_cgc_computes():
    torch.manual_seed(0)
    one_stage = lambda: nn.Sequential(nn.Linear(5, 4))  # noqa: E731
    heads = {t: nn.Linear(4, 1) for t in TASKS}
    ple = PLE(TASKS, one_stage, heads, num_experts=[2, 1, 1], img_size=(5,))
    cgc = CGC(TASKS, one_stage, heads, num_experts=[2, 1, 1], img_size=(5,))
    cgc.shared_experts[0][0].load_state_dict(ple.shared_experts[0][0].state_dict())
    cgc.shared_experts[1][0].load_state_dict(ple.shared_experts[0][1].state_dict())
    for t in TASKS:
        cgc.task_experts[t][0][0].load_state_dict(ple.task_experts[0][t][0].state_dict())
        cgc.gates[t].load_state_dict(ple.task_gates[0][t].state_dict())
    x = torch.randn(6, 5)
    for t in TASKS:
        torch.testing.assert_close(ple(x)[t], cgc(x)[t])
