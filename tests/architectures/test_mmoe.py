"""MMoE: softmax gates per task (or one shared gate) over shared experts."""

import pytest
import torch
from torch import nn

from mtlkit.architectures import MMoE
from mtlkit.errors import SpecError

TASKS = ["a", "b"]


def make(**kwargs) -> MMoE:
    torch.manual_seed(0)
    return MMoE(TASKS, lambda: nn.Linear(5, 4), {t: nn.Linear(4, 1) for t in TASKS}, img_size=(5,), **kwargs)


def test_each_task_reads_its_gates_mixture_of_the_experts():
    model = make(num_experts=3)
    x = torch.randn(7, 5)
    features = {}
    for t in TASKS:
        model.decoders[t].register_forward_hook(lambda m, inp, out, t=t: features.__setitem__(t, inp[0]))
    model(x)
    for t in TASKS:
        g = model.expert_weights(x, t)
        torch.testing.assert_close(g.sum(-1), torch.ones(7))
        assert (g > 0).all()
        expected = sum(g[:, i : i + 1] * expert(x) for i, expert in enumerate(model.experts))
        torch.testing.assert_close(features[t], expected)
    assert not torch.allclose(model.expert_weights(x, "a"), model.expert_weights(x, "b"))


def test_one_shared_gate_gives_every_task_the_same_mixture():
    model = make(num_experts=3, shared_gate=True)
    x = torch.randn(7, 5)
    torch.testing.assert_close(model.expert_weights(x, "a"), model.expert_weights(x, "b"))
    shared = {id(p) for p in model.shared_parameters()}
    assert all(id(p) in shared for p in model.gates.parameters())
    _, reps = model.forward_with_reps(x)
    assert len(reps) == 1 and reps[0].shape == (7, 4)


def test_expert_count_is_an_int_or_libmtls_one_element_list():
    assert make(num_experts=[4]).num_experts == 4
    with pytest.raises(SpecError, match="positive int"):
        make(num_experts=0)
