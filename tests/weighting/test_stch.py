import torch

from mtlkit.weighting import get


def _weights(stch, values):
    losses = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]
    result = stch.backward(losses)
    return torch.stack([l.grad for l in losses]), torch.stack(list(result.weights.values()))


def test_warmup_backpropagates_the_sum_of_log_losses():
    stch = get("stch", tasks=2, warmup_epochs=1)
    grads, weights = _weights(stch, [0.5, 4.0])
    assert torch.allclose(grads, torch.tensor([2.0, 0.25], dtype=torch.float64))
    assert torch.allclose(weights, grads)


def test_after_the_nadir_epoch_it_is_the_smooth_tchebycheff_of_normalised_log_losses():
    stch = get("stch", tasks=2, mu=0.5, warmup_epochs=1)
    _weights(stch, [9.0, 9.0])
    stch.epoch_end()
    _weights(stch, [1.0, 2.0])
    _weights(stch, [3.0, 4.0])  # nadir = (2, 3)
    stch.epoch_end()
    grads, weights = _weights(stch, [0.5, 2.0])
    L = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    nadir = torch.tensor([2.0, 3.0], dtype=torch.float64)
    (2 * 0.5 * torch.log(torch.exp(torch.log(L / nadir) / 0.5).sum())).backward()
    assert torch.allclose(grads, L.grad) and torch.allclose(weights, L.grad)


def test_state_dict_carries_epoch_and_nadir():
    stch = get("stch", tasks=2, warmup_epochs=0)
    _weights(stch, [1.0, 2.0])
    stch.epoch_end()
    restored = get("stch", tasks=2, warmup_epochs=0)
    restored.load_state_dict(stch.state_dict())
    assert torch.allclose(_weights(restored, [0.5, 0.5])[0], _weights(stch, [0.5, 0.5])[0])
    assert int(restored.epoch) == 1 and torch.allclose(restored.nadir, torch.tensor([1.0, 2.0], dtype=torch.float64))
