"""`mtlkit.weighting.overlap.summed_blocks`: J's blocks all-reduced while the backward runs, in one process.

A fake all-reduce stands for N identical processes (the sum is N times the input) and
records when each collective starts, so the tests can check the sums against
`torch.autograd.grad` row by row, the fixed order and buckets, and the overlap itself.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlkit.weighting import overlap
from mtlkit.weighting.overlap import summed_blocks

N = 3  # processes the fake collectives stand for


class FakeCollectives:
    def __init__(self, watched: nn.Parameter | None = None) -> None:
        self.started: list[int] = []  # sizes, in the order the all-reduces started
        self.waited = 0
        self.watched = watched
        self.watched_had_grad_block: list[bool] = []  # per start: had `watched`'s block been filled?
        self.pending: list = []

    def start_all_reduce_sum(self, tensor, kind):
        assert kind == "jacobian"
        self.started.append(tensor.numel())
        self.pending.append(tensor)

        def wait():
            tensor.mul_(N)
            self.waited += 1

        return wait


def _model_and_losses(width: int = 64):
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(8, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh()).double()
    heads = nn.ModuleList(nn.Linear(width, 1).double() for _ in range(3))
    x = torch.randn(16, 8, dtype=torch.float64)
    h = trunk(x)
    losses = [head(h).pow(2).mean() * (t + 1) for t, head in enumerate(heads)]
    return trunk, heads, losses


def _expected_blocks(losses, params):
    rows = [torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) for loss in losses]
    return [
        torch.stack([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g in (row[i] for row in rows)])
        for i, p in enumerate(params)
    ]


def test_blocks_are_the_task_rows_summed_over_processes_and_flags_say_which_were_reached():
    trunk, _, losses = _model_and_losses()
    params = list(trunk.parameters())
    collectives = FakeCollectives()
    blocks, used = summed_blocks(losses, params, [True, False, True, True], collectives)
    for block, expected in zip(blocks, _expected_blocks(losses, params), strict=True):
        torch.testing.assert_close(block, N * expected, rtol=1e-12, atol=1e-14)
    assert used == [True, False, True, True]  # each flag: summed over the processes, then > 0
    assert collectives.waited == len(collectives.started)  # every collective waited for before returning


def test_a_parameter_this_process_does_not_reach_sends_zeros_in_the_same_layout():
    trunk, _, losses = _model_and_losses()
    unused = nn.Parameter(torch.ones(5, dtype=torch.float64))
    params = [*trunk.parameters(), unused]
    collectives = FakeCollectives()
    blocks, used = summed_blocks(losses, params, [True] * 4 + [False], collectives)
    assert torch.equal(blocks[-1], torch.zeros(3, 5, dtype=torch.float64))
    assert used[-1] is False
    # The same collectives as a process that reaches it: the flags, then every block once.
    assert sum(collectives.started) == len(params) + 3 * sum(p.numel() for p in params)


def test_all_reduces_start_during_the_backward_last_layer_first_small_blocks_in_buckets(monkeypatch):
    monkeypatch.setattr(overlap, "BUCKET_ELEMENTS", 3 * 64 * 64)  # the second layer's weight block
    trunk, _, losses = _model_and_losses()
    params = list(trunk.parameters())  # w1 (64×8), b1, w2 (64×64), b2
    first_layer_weight = params[0]
    filled_at_start: list[bool] = []
    collectives = FakeCollectives()
    original = collectives.start_all_reduce_sum

    def start(tensor, kind):
        # Whether the backward had already produced the first layer's weight block.
        filled_at_start.append(seen["w1"])
        return original(tensor, kind)

    seen = {"w1": False}
    first_layer_weight.register_hook(lambda grad: seen.__setitem__("w1", True))
    collectives.start_all_reduce_sum = start
    summed_blocks(losses, params, [True] * 4, collectives)
    T = 3
    # Buffer order: 4 flags, b2, w2 (one bucket: it reaches the size), then b1, w1 at the end.
    assert collectives.started == [4 + T * 64 + T * 64 * 64, T * 64 + T * 64 * 8]
    assert filled_at_start == [False, True]  # the first all-reduce started before the backward reached layer 1


def test_parameters_of_several_dtypes_are_left_to_the_caller():
    trunk, _, losses = _model_and_losses()
    other = nn.Parameter(torch.ones(2, dtype=torch.float32))
    assert summed_blocks(losses, [*trunk.parameters(), other], [True] * 5, FakeCollectives()) is None


@pytest.mark.parametrize("method", ["mgda", "graddrop"])
def test_the_engine_on_overlapped_blocks_equals_the_engine_on_the_mean_jacobian(method):
    """N identical processes: the overlapped path and the one-piece all-reduce write the same .grad."""
    from mtlkit import weighting

    grads = []
    for overlaps in (True, False):
        trunk, heads, losses = _model_and_losses()
        collectives = FakeCollectives()
        collectives.world_size = N
        collectives.shards_jacobian = False
        collectives.reduces_in_backward = False
        collectives.overlaps_jacobian = overlaps

        def all_reduce_sum(tensor, kind):
            tensor.mul_(N)

        collectives.all_reduce_sum = all_reduce_sum
        torch.manual_seed(1)
        balancer = weighting.get(method, tasks=3)
        balancer.backward(losses, shared_params=list(trunk.parameters()), collectives=collectives)
        assert bool(collectives.started) == overlaps
        grads.append([p.grad.clone() for p in (*trunk.parameters(), *heads.parameters())])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
