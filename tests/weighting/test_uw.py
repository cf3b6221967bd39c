import torch

from mtlkit.weighting import get


def test_uw_reaches_its_optimum_where_each_variance_equals_its_loss():
    values = torch.tensor([0.5, 2.0, 8.0])
    losses = [v.clone().requires_grad_() for v in values]
    uw = get("uw", tasks=3)
    optimizer = torch.optim.SGD(uw.parameters(), lr=1.0)
    for _ in range(100):
        optimizer.zero_grad()
        uw.backward(losses)
        optimizer.step()
    assert torch.allclose(torch.exp(uw.log_var.detach()), values, rtol=1e-3)


def test_uw_weights_are_half_the_inverse_variance():
    uw = get("uw", tasks=2, init=0.5)
    result = uw.backward([torch.tensor(1.0, requires_grad=True), torch.tensor(3.0, requires_grad=True)])
    assert torch.allclose(result.weights["0"], 0.5 * torch.exp(torch.tensor(-0.5)))
