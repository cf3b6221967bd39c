"""DSelect-k gates: smooth step, selector products, sparsity after binarisation."""

import itertools

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mtlkit.architectures import DSelectK
from mtlkit.architectures.dselect_k import _smooth_step
from mtlkit.errors import SpecError

TASKS = ["a", "b"]


def make(num_experts: int = 4, num_nonzeros: int = 2, **kwargs) -> DSelectK:
    return DSelectK(
        TASKS,
        lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU()),
        {t: nn.Linear(8, 1) for t in TASKS},
        num_experts=num_experts,
        num_nonzeros=num_nonzeros,
        losses={t: F.mse_loss for t in TASKS},
        img_size=(4,),
        **kwargs,
    )


def test_smooth_step_is_the_papers_cubic_and_flat_outside_the_band():
    gamma = 2.0
    t = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.25, 1.0, 5.0], dtype=torch.float64, requires_grad=True)
    s = _smooth_step(t, gamma)
    cubic = lambda v: -2 * v**3 / gamma**3 + 3 * v / (2 * gamma) + 0.5  # noqa: E731
    expected = [0.0, 0.0, cubic(-0.5), 0.5, cubic(0.25), 1.0, 1.0]
    torch.testing.assert_close(s, torch.tensor(expected, dtype=torch.float64))
    (ds,) = torch.autograd.grad(s.sum(), t)
    assert ds[[0, 1, 5, 6]].abs().max() < 1e-12  # C¹: zero slope at ±γ/2 and beyond


def test_selector_weights_are_products_of_smooth_steps_over_the_bits_of_each_expert():
    torch.manual_seed(0)
    model = make(num_experts=4, num_nonzeros=2)
    x = torch.randn(3, 4)
    selectors = model.selector_outputs(x, "a")
    z = model.z_logits["a"](x).view(3, 2, 2)
    s = _smooth_step(z, model.kgamma)
    for b, i, j in itertools.product(range(3), range(2), range(4)):
        bits = [int(c) for c in format(j, "02b")]
        expected = torch.prod(torch.stack([s[b, i, l] if bit else 1 - s[b, i, l] for l, bit in enumerate(bits)]))
        torch.testing.assert_close(selectors[b, i, j], expected)
    torch.testing.assert_close(selectors.sum(-1), torch.ones(3, 2))  # 4 experts: every code is an expert


def test_distinct_one_hot_selectors_give_exactly_k_experts_weighted_by_the_softmax():
    model = make(num_experts=8, num_nonzeros=3)
    with torch.no_grad():
        model.z_logits["a"].weight.zero_()
        codes = torch.tensor([[0, 0, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.float32)  # experts 1, 4, 6
        model.z_logits["a"].bias.copy_(((codes * 2 - 1) * model.kgamma).flatten())
    x = torch.randn(5, 4)
    weights = model.expert_weights(x, "a")
    alpha = torch.softmax(model.w_logits["a"](x), dim=-1)
    assert (weights > 0).sum(-1).tolist() == [3] * 5
    torch.testing.assert_close(weights[:, [1, 4, 6]], alpha)


def test_gates_binarise_to_one_hot_selectors_and_at_most_k_experts_after_brief_training():
    torch.manual_seed(0)
    model = make(num_experts=4, num_nonzeros=2, entropy_reg=1.0)
    x = torch.randn(16, 4)
    Y = {"a": 2 * x[:, :1], "b": x[:, 1:2].sin()}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(60):
        optimizer.zero_grad()
        sum(model.training_step(x, Y).losses.values()).backward()
        optimizer.step()
    with torch.no_grad():
        for t in TASKS:
            selectors = model.selector_outputs(x, t)
            assert ((selectors == 0) | (selectors == 1)).all()
            assert (selectors.sum(-1) == 1).all()
            picked = selectors.argmax(-1)
            distinct = torch.tensor([len(set(row)) for row in picked.tolist()])
            nonzero = (model.expert_weights(x, t) > 0).sum(-1)
            assert (nonzero == distinct).all() and (nonzero <= 2).all()


def test_without_power_of_two_experts_the_loss_keeps_selectors_off_missing_codes():
    torch.manual_seed(0)
    model = make(num_experts=3, num_nonzeros=1)  # 2 bits: code 3 has no expert
    x, y = torch.randn(4, 4), torch.randn(4, 1)
    selectors = model.selector_outputs(x, "a")
    s = _smooth_step(model.z_logits["a"](x), model.kgamma)  # (4, 2): the two bits
    valid = 1 - s[:, 0] * s[:, 1]  # mass on codes 0, 1, 2
    torch.testing.assert_close(selectors.sum(-1).squeeze(1), valid)
    loss = model.training_step(x, {"a": y}).losses["a"]
    expected = F.mse_loss(model(x)["a"], y) + (1 / valid - 1).mean()
    torch.testing.assert_close(loss, expected)


def test_num_nonzeros_must_fit_the_experts():
    with pytest.raises(SpecError, match="num_nonzeros"):
        make(num_experts=2, num_nonzeros=3)
