"""EW, RLW and GLS: stateless loss weightings, checked against direct formulas."""

import pytest
import torch

from mtlkit.weighting import get


def _leaves(values):
    return [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]


def test_ew_backpropagates_the_plain_sum(small_mtl):
    model, reference = small_mtl(), small_mtl()
    losses, _ = model()
    result = get("ew").backward(losses)
    sum(reference()[0]).backward()
    assert all(w == 1 for w in result.weights.values())
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(p.grad, q.grad)


def test_rlw_draws_softmax_normal_weights_anew_each_step():
    rlw = get("rlw")
    torch.manual_seed(0)
    first = torch.stack(list(rlw.backward(_leaves([1.0, 2.0, 3.0])).weights.values()))
    second = torch.stack(list(rlw.backward(_leaves([1.0, 2.0, 3.0])).weights.values()))
    torch.manual_seed(0)
    expected = torch.softmax(torch.randn(3, dtype=torch.float64), dim=0)
    assert torch.allclose(first, expected)
    assert (first > 0).all() and torch.allclose(first.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert not torch.allclose(first, second)


def test_gls_gradient_is_that_of_the_geometric_mean():
    losses = _leaves([0.5, 2.0, 8.0])
    result = get("gls").backward(losses)
    reference = _leaves([0.5, 2.0, 8.0])
    torch.prod(torch.stack(reference)).pow(1 / 3).backward()
    for loss, ref, w in zip(losses, reference, result.weights.values()):
        assert torch.allclose(loss.grad, ref.grad) and torch.allclose(w, ref.grad)


def test_gls_rejects_a_non_positive_loss_naming_the_task():
    with pytest.raises(ValueError, match=r"task\(s\) \['b'\]"):
        get("gls", tasks=["a", "b"]).backward(_leaves([1.0, 0.0]))
