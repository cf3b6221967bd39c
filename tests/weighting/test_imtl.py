import itertools
import math

import pytest
import torch

from mtlkit.weighting import IMTL, get
from mtlkit.weighting.methods.imtl import imtl_g_weights


def _projections(alpha, J):
    g = alpha @ J
    return J @ g / J.norm(dim=1)


def _reference_alpha(J):
    """Solve Σα = 1 and (αJ)·(u_1 − u_t) = 0 as one T×T linear system."""
    U = J / J.norm(dim=1, keepdim=True)
    A = torch.cat([torch.ones(1, J.shape[0], dtype=J.dtype), (J @ (U[0] - U[1:]).T).T])
    b = torch.zeros(J.shape[0], dtype=J.dtype)
    b[0] = 1
    return torch.linalg.solve(A, b)


@pytest.mark.parametrize("T", [2, 3, 5, 8])
def test_imtl_g_update_has_equal_projections_on_every_unit_task_gradient(T):
    J = torch.randn(T, 12, generator=torch.Generator().manual_seed(T), dtype=torch.float64)
    alpha = imtl_g_weights(J @ J.T)
    p = _projections(alpha, J)
    assert torch.allclose(p, p[0].expand_as(p), rtol=1e-9)
    assert torch.allclose(alpha.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(alpha, _reference_alpha(J), atol=1e-9)


def test_imtl_g_direction_ignores_positive_rescaling_of_task_gradients():
    J = torch.randn(4, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    scaled = J * torch.tensor([[0.1], [3.0], [1.0], [50.0]], dtype=torch.float64)
    g, g_scaled = imtl_g_weights(J @ J.T) @ J, imtl_g_weights(scaled @ scaled.T) @ scaled
    assert torch.allclose(g / g.norm(), g_scaled / g_scaled.norm(), atol=1e-9)


def test_imtl_g_gives_a_zero_task_gradient_no_weight_and_balances_the_rest():
    J = torch.randn(4, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    J[2] = 0
    alpha = imtl_g_weights(J @ J.T)
    assert alpha[2] == 0 and torch.isfinite(alpha).all()
    p = _projections(alpha[[0, 1, 3]], J[[0, 1, 3]])
    assert torch.allclose(p, p[0].expand_as(p), rtol=1e-9)
    assert torch.equal(imtl_g_weights(torch.zeros(3, 3)), torch.zeros(3))


def test_imtl_g_handles_two_identical_task_gradients():
    J = torch.randn(3, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    J[1] = J[0]
    alpha = imtl_g_weights(J @ J.T)
    p = _projections(alpha, J)
    assert torch.isfinite(alpha).all() and torch.allclose(p, p[0].expand_as(p), rtol=1e-8)


def _fit_scales(balancer, values, steps=100, lr=0.5):
    losses = [torch.tensor(v, requires_grad=True) for v in values]
    optimizer = torch.optim.SGD(balancer.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        balancer.backward(losses)
        optimizer.step()


def test_imtl_l_reaches_its_optimum_where_every_scaled_loss_is_one():
    values = [0.5, 2.0, 8.0]
    for balancer in (get("imtl_l", tasks=3), IMTL("loss", num_losses=3)):
        _fit_scales(balancer, values)
        scaled = torch.exp(balancer.log_scale.detach()) * torch.tensor(values)
        assert torch.allclose(scaled, torch.ones(3), atol=1e-3)


def test_hybrid_applies_alpha_from_the_scaled_losses_gradients(small_mtl):
    model = small_mtl(num_tasks=3, dtype=torch.float64)
    imtl = IMTL("hybrid", num_losses=3, init_loss=[0.3, -0.2, 0.1]).double()
    losses, _ = model()
    trunk = list(model.trunk.parameters())
    scale = torch.exp(imtl.log_scale.detach())
    raw = torch.stack(
        [torch.cat([g.reshape(-1) for g in torch.autograd.grad(l, trunk, retain_graph=True)]) for l in losses]
    )
    J = scale[:, None] * raw
    alpha = _reference_alpha(J)
    head_grads = [torch.autograd.grad(l, list(h.parameters()), retain_graph=True) for l, h in zip(losses, model.heads)]

    grad_loss, scaled_losses = imtl.backward(shared_parameters=[model.trunk.parameters()], losses=losses)

    assert torch.allclose(torch.cat([p.grad.reshape(-1) for p in trunk]), alpha @ J, atol=1e-10)
    for t, head in enumerate(model.heads):
        for p, g in zip(head.parameters(), head_grads[t]):
            assert torch.allclose(p.grad, scale[t] * g, atol=1e-12)
    values = torch.stack([l.detach() for l in losses])
    assert torch.allclose(imtl.log_scale.grad, scale * values - 1, atol=1e-12)
    assert torch.allclose(grad_loss, (alpha * scale * values).sum(), atol=1e-10)
    assert torch.allclose(scaled_losses[1], scale[1] * values[1] - imtl.log_scale[1].detach())


def test_seed_usage_chains_parameters_and_takes_the_shared_feature_z(small_mtl):
    model = small_mtl(num_tasks=3)
    imtl = IMTL(method="hybrid", num_losses=3, init_loss=None)
    optimizer = torch.optim.Adam(itertools.chain(model.parameters(), imtl.parameters()), lr=0.01)
    assert any(p is imtl.log_scale for group in optimizer.param_groups for p in group["params"])
    losses, z = model()
    by_z = imtl.backward(z=z, losses=losses)
    grads_z = [p.grad.clone() for p in model.trunk.parameters()]
    for p in itertools.chain(model.parameters(), imtl.parameters()):
        p.grad = None
    losses, rep = model()
    imtl.backward(losses, shared_reps=rep)
    assert all(torch.allclose(p.grad, g) for p, g in zip(model.trunk.parameters(), grads_z))
    optimizer.step()
    grad_loss, scaled_losses = by_z
    assert grad_loss.ndim == 0 and isinstance(scaled_losses, list) and len(scaled_losses) == 3


def test_seed_usage_skips_losses_that_do_not_require_grad(small_mtl):
    model = small_mtl(num_tasks=3)
    imtl = IMTL("hybrid", num_losses=3)
    losses, _ = model()
    losses[0] = losses[0].detach()
    _, scaled_losses = imtl.backward(shared_parameters=[model.parameters()], losses=losses)
    assert len(scaled_losses) == 3 and torch.equal(scaled_losses[0], losses[0])  # passed through unscaled
    assert imtl.log_scale.grad[0] == 0 and imtl.log_scale.grad[1] != 0
    assert model.heads[0].weight.grad is None


def test_gradient_method_has_no_parameters_and_equals_imtl_g(small_mtl):
    assert list(IMTL("gradient", num_losses=2).parameters()) == []
    grads = []
    for balancer in (IMTL("gradient"), get("imtl_g")):
        model = small_mtl(num_tasks=2)
        losses, rep = model()
        balancer.backward(losses, shared_reps=rep)
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1])


def test_constructor_rejects_unknown_method_and_mismatched_sizes():
    with pytest.raises(ValueError, match="method must be one of"):
        IMTL("gradients", num_losses=2)
    with pytest.raises(ValueError, match="num_losses=2 but 3 tasks"):
        IMTL(num_losses=2, tasks=3)
    with pytest.raises(ValueError, match="init_loss has 1 values for 2"):
        IMTL(num_losses=2, init_loss=[0.0])


def test_learning_scales_without_a_loss_count_says_to_give_num_losses():
    with pytest.raises(ValueError, match="num_losses="):
        IMTL("hybrid")


def test_seed_unpacking_gives_scaled_losses_as_a_list_in_input_order_with_skipped_losses_unscaled():
    torch.manual_seed(0)
    trunk, heads = torch.nn.Linear(3, 4), [torch.nn.Linear(4, 1) for _ in range(3)]
    z = trunk(torch.randn(6, 3))
    losses = [h(z).pow(2).mean() for h in heads]
    frozen = losses[1].detach()  # requires_grad=False: left out, as in the seed
    imtl = IMTL(method="hybrid", num_losses=3, init_loss=[0.5, 0.0, -0.5])
    grad_loss, scaled = imtl.backward(shared_parameters=[trunk.parameters()], losses=[losses[0], frozen, losses[2]])
    assert isinstance(scaled, list) and len(scaled) == 3
    assert torch.equal(scaled[1], frozen)
    assert torch.allclose(scaled[0], math.exp(0.5) * losses[0].detach() - 0.5)
    assert torch.allclose(scaled[2], math.exp(-0.5) * losses[2].detach() + 0.5)
