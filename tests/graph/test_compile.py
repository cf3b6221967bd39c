"""The quickstart graph traces as one graph under torch.compile(fullgraph=True) and matches eager."""

import pytest
import torch

from mtlkit import MTLModel

OUTPUTS = ["Task1", "Task2", "Task3"]


def _loss(model, X, y):
    y_hat, l_funcs, l_weights = model(X)
    loss = 0
    for i in range(len(y_hat)):
        loss += l_weights[i] * l_funcs[i](y_hat[i], y[i])
    return y_hat, loss


def _check_against_eager(tasks, backend):
    torch._dynamo.reset()
    model = MTLModel(tasks, output_tasks=OUTPUTS)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    X = torch.randn(6, 16)
    y = [torch.randn(6, 1), torch.ones(6, 1), torch.randn(6, 1)]
    y_eager, loss_eager = _loss(model, X, y)
    grads_eager = torch.autograd.grad(loss_eager, list(model.parameters()))
    y_comp, loss_comp = _loss(compiled, X, y)
    grads_comp = torch.autograd.grad(loss_comp, list(model.parameters()))
    for a, b in zip(y_comp, y_eager):
        torch.testing.assert_close(a, b)
    for a, b in zip(grads_comp, grads_eager):
        torch.testing.assert_close(a, b)
    (task1,), _, _ = compiled(X, tasks=["Task1"])
    torch.testing.assert_close(task1, y_eager[0])


def test_compiles_as_one_graph_and_matches_eager(tasks):
    _check_against_eager(tasks, backend="eager")  # dynamo tracing only: fast, same fullgraph check


@pytest.mark.slow
def test_compiles_with_inductor_and_matches_eager(tasks):
    _check_against_eager(tasks, backend="inductor")
