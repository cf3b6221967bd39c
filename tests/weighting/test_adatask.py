"""AdaTask against one torch.optim.Adam per task."""

import torch

from mtlkit.weighting import get


def test_update_is_the_sum_of_one_adam_direction_per_task():
    generator = torch.Generator().manual_seed(0)
    Js = [torch.randn(3, 4, generator=generator, dtype=torch.float64) for _ in range(5)]
    adatask = get("adatask", tasks=3)
    copies = [torch.zeros(4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    optimizers = [torch.optim.Adam([c], lr=1.0) for c in copies]
    for J in Js:
        update, weights = adatask.combine(J, torch.ones(3, dtype=torch.float64), torch.arange(3))
        before = [c.detach().clone() for c in copies]
        for c, optimizer, g in zip(copies, optimizers, J):
            c.grad = g.clone()
            optimizer.step()
        reference = sum(b - c.detach() for b, c in zip(before, copies))  # Σ_t m̂_t / (√v̂_t + ε)
        assert weights is None and torch.allclose(update, reference)


def test_each_task_counts_its_own_steps_for_the_bias_correction():
    adatask = get("adatask", tasks=2)
    adatask.combine(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.ones(2), torch.arange(2))
    update, _ = adatask.combine(torch.tensor([[0.0, 2.0]]), torch.ones(1), torch.tensor([1]))
    assert adatask.task_steps.tolist() == [1, 2]
    m = 0.1 * 1.0 * 0.9 + 0.1 * 2.0  # task 1's second moment steps, coordinate 1
    v = 0.001 * 1.0 * 0.999 + 0.001 * 4.0
    expected = (m / (1 - 0.9**2)) / ((v / (1 - 0.999**2)) ** 0.5 + 1e-8)
    assert torch.allclose(update, torch.tensor([0.0, expected]))
