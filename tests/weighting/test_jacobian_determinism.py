"""Same seed, same code, same machine: the same bits. The Jacobian engine's way of taking the rows
(one batched backward or one per task) follows from the workload, never from a timing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import mtlkit.weighting.jacobian as engine
from mtlkit.weighting.jacobian import _rows_batched, jacobian

SRC = str(Path(engine.__file__).resolve().parents[2])

# One seeded fit of a float32 MLP trunk with three heads, every batch labelling every task; prints
# the final parameters' bytes. GradDrop takes the task Jacobian itself on the shared parameters.
WORKER = r"""
import sys, torch, torch.nn.functional as F
from torch import nn
from mtlkit import DictDataLoader, DictDataset, Scorer, Trainer
from mtlkit.training import StepOutput
from mtlkit.weighting import get


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(64, 3) for t in ("a", "b", "c")})

    @property
    def task_names(self):
        return list(self.heads)

    def training_step(self, X, Y):
        h = self.trunk(X["x"])
        return StepOutput({t: F.cross_entropy(self.heads[t](h), y) for t, y in Y.items()})

    def shared_parameters(self):
        return list(self.trunk.parameters())

    def task_outputs(self, X, task_names):
        return {t: F.softmax(self.heads[t](self.trunk(X["x"])), dim=1) for t in task_names}

    def scorers(self):
        return {t: Scorer(metrics=["accuracy"]) for t in self.heads}


g = torch.Generator().manual_seed(0)
x = torch.randn(128, 16, generator=g)
Y = {t: torch.randint(0, 3, (128,), generator=g) for t in ("a", "b", "c")}
loader = DictDataLoader(DictDataset("d", "train", {"x": x}, Y), batch_size=32, shuffle=True, seed=0)
torch.manual_seed(0)
model = Net()
Trainer(n_epochs=2, lr=0.05, seed=0, weighting=get(sys.argv[1], tasks=list(Y)), progress_bar=False).fit(model, [loader])
sys.stdout.write(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().tobytes().hex())
"""


def _fit_in_fresh_process(method: str) -> bytes:
    done = subprocess.run(
        [sys.executable, "-c", WORKER, method],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return bytes.fromhex(done.stdout)


@pytest.mark.parametrize("method", ["graddrop", "trimmed_mean"])
def test_two_fresh_processes_train_to_bit_identical_parameters(method):
    first, second = _fit_in_fresh_process(method), _fit_in_fresh_process(method)
    assert len(first) > 0 and first == second


def _workload(kind: str, T: int, B: int):
    torch.manual_seed(0)
    if kind == "cnn":
        trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten())
        x, width = torch.randn(B, 3, 8, 8), 4 * 8 * 8
    else:
        trunk = nn.Sequential(nn.Linear(5, 8), nn.Tanh())
        x, width = torch.randn(B, 5), 8
    heads = [nn.Linear(width, 1) for _ in range(T)]
    rep = trunk(x)
    return [(head(rep) ** 2).mean() for head in heads], list(trunk.parameters())


def _way_taken(monkeypatch, losses, params) -> str:
    taken = []
    batched, one_by_one = engine._batched, engine._one_by_one
    monkeypatch.setattr(engine, "_batched", lambda *a: taken.append("batched") or batched(*a))
    monkeypatch.setattr(engine, "_one_by_one", lambda *a: taken.append("per task") or one_by_one(*a))
    jacobian(losses, params)
    (way,) = taken
    return way


def test_the_way_is_a_function_of_the_workload_and_no_clock_is_read(monkeypatch):
    def no_clock():
        raise AssertionError("the Jacobian engine read a clock")

    for name in ("perf_counter", "perf_counter_ns", "process_time", "monotonic", "time"):
        monkeypatch.setattr(time, name, no_clock)
    cases = {("mlp", 3, 16): "batched", ("mlp", 2, 16): "batched", ("cnn", 3, 4): "batched", ("cnn", 2, 4): "per task"}
    for (kind, T, B), expected in cases.items():
        ways = {_way_taken(monkeypatch, *_workload(kind, T, B)) for _ in range(3)}
        assert ways == {expected}, (kind, T, B)


def test_rule_on_convolutions_large_rows_and_other_devices():
    conv = [torch.empty(4, 3, 3, 3)]
    linear = [torch.empty(8, 5)]
    small, large = [torch.empty(3, 2**20 - 1)], [torch.empty(3, 2**20)]
    assert _rows_batched(3, small, conv) and not _rows_batched(3, large, conv)
    assert _rows_batched(3, large, linear)  # no convolution: batched at any size
    assert _rows_batched(2, [torch.empty(2, 2**20, device="meta")], conv)  # not CPU: batched
    # a frontier with several edges: the row's size counts all of them
    assert not _rows_batched(3, [torch.empty(3, 2**19), torch.empty(3, 2**19)], conv)


def test_both_ways_give_the_same_rows_as_the_reference_where_the_rule_picks_per_task(monkeypatch):
    losses, params = _workload("cnn", 2, 4)
    assert _way_taken(monkeypatch, losses, params) == "per task"
    J = jacobian(losses, params)
    for t, loss in enumerate(losses):
        row = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])
        assert torch.allclose(J[t], row, atol=1e-6)
    assert torch.allclose(jacobian(losses, params, chunk_size=2), J, atol=1e-6)
