import pytest
import torch

from mtlkit.weighting import BalanceResult, get


def test_losses_that_do_not_require_grad_are_left_out(small_mtl):
    model = small_mtl(num_tasks=3)
    losses, rep = model()
    losses[1] = losses[1].detach()
    result = get("imtl_g").backward(losses, shared_reps=rep)
    assert set(result.weights) == {"0", "2"}
    assert model.heads[1].weight.grad is None and model.heads[0].weight.grad is not None


def test_dict_losses_are_matched_to_tasks_by_name(small_mtl):
    losses, _ = small_mtl(num_tasks=2)()
    balancer = get("uw", tasks=["a", "b"])
    result = balancer.backward({"b": losses[1]})
    assert set(result.scaled_losses) == {"b"}
    assert balancer.log_var.grad[0] == 0 and balancer.log_var.grad[1] != 0


def test_unknown_task_name_is_rejected_with_the_known_ones(small_mtl):
    losses, _ = small_mtl(num_tasks=2)()
    with pytest.raises(KeyError, match="'c'.*known tasks"):
        get("ew", tasks=["a", "b"]).backward({"c": losses[0]})


def test_non_finite_loss_raises_naming_the_task(small_mtl):
    model = small_mtl(num_tasks=3)
    losses, _ = model()
    losses[2] = losses[2] * float("nan")
    with pytest.raises(FloatingPointError, match=r"\['2'\]"):
        get("ew").backward(losses)
    assert all(p.grad is None for p in model.parameters())


def test_non_finite_gradient_raises_naming_the_task_before_any_grad_is_written(small_mtl):
    model = small_mtl(num_tasks=3)
    for kwargs in ({"shared_reps": True}, {"shared_params": model.trunk.parameters()}):
        rep = model.trunk(model.x)
        out0 = model.heads[0](rep)
        # Where task 0's own gradient flows (non-zero), make it infinite.
        out0.register_hook(lambda g: torch.where(g != 0, torch.full_like(g, float("inf")), g))
        losses = [((out0 - model.y[0]) ** 2).mean()] + [
            ((h(rep) - y) ** 2).mean() for h, y in zip(model.heads[1:], model.y[1:])
        ]
        if "shared_reps" in kwargs:
            kwargs = {"shared_reps": rep}
        with pytest.raises(FloatingPointError, match=r"gradient of task\(s\) \['0'\] is not finite"):
            get("imtl_g").backward(losses, **kwargs)
    assert all(p.grad is None for p in model.parameters())


def test_result_unpacks_as_loss_and_scaled_losses_in_the_input_container(small_mtl):
    losses, _ = small_mtl(num_tasks=2)()
    result = get("ew").backward(losses)
    loss, scaled = result
    assert isinstance(result, BalanceResult)
    assert torch.allclose(loss, sum(l.detach() for l in losses))
    assert isinstance(scaled, list) and all(torch.allclose(s, l.detach()) for s, l in zip(scaled, losses))
    losses, _ = small_mtl(num_tasks=2)()
    _, scaled = get("ew").backward({"a": losses[0], "b": losses[1]})
    assert set(scaled) == {"a", "b"}


def test_gradient_methods_need_somewhere_to_take_task_gradients(small_mtl):
    losses, _ = small_mtl(num_tasks=2)()
    with pytest.raises(ValueError, match="shared_params or shared_reps"):
        get("imtl_g").backward(losses)


def test_detached_representation_is_rejected(small_mtl):
    losses, rep = small_mtl(num_tasks=2)()
    with pytest.raises(ValueError, match="does not require grad"):
        get("imtl_g").backward(losses, shared_reps=rep.detach())


def test_stateful_method_without_tasks_says_how_to_build_it():
    with pytest.raises(ValueError, match="tasks="):
        get("uw")
