"""Gradient methods on the shared parameters under `strategy="fsdp"`: the sharded Gramian against the whole Jacobian.

Model: a shared MLP trunk (256 → 1024 → 1024 → 256, ReLU, ≈ 1.58M parameters) and T
(`--tasks`, 3) linear regression heads (MSE), float32, `--batch` rows per rank and step, plain SGD.
Paths, per method (`--methods`, defined by weights(G)):
- `shards`: `FSDPStrategy()` (default): one backward per task, FSDP reduce-scatters each
  task's gradient; each rank keeps its shard of the T task gradients (T × P/N numbers),
  their partial Gramians are summed in one T × T all-reduce.
- `whole`: `FSDPStrategy(sharded_gramian=False)`: the T × P Jacobian on every rank,
  all-reduced (block by block while its backward runs), as under DDP.

Each path runs in fresh processes (gloo, one torch thread each, `--procs` ranks). Time: a
fit of W steps, then one of W + S steps; step time = (time(W + S) − time(W)) / S (noisy on a
shared machine). Memory, in a fit of 2 steps before those: the peak, during the strategy's
`backward` (the whole gradient part of a step: task gradients, Jacobian or shards, FSDP's
reduce-scatter buffers, the update), of the bytes of tensor storages created in it and still
alive (counted by a `TorchDispatchMode` over every op, on every rank; the largest over steps and
ranks). "J bytes" is the task gradients held by count: T × P × 4 on every rank for `whole`,
T × ⌈P/N⌉ × 4 for `shards` (P: the trunk).

    python benchmarks/fsdp_gramian.py [--steps 10] [--batch 64] [--procs 2] [--tasks 3] [--methods mgda imtl_g]
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import tempfile
import time
import warnings
import weakref
from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mtlkit import DictDataLoader, DictDataset, Scorer, Trainer
from mtlkit.training import FSDPStrategy, StepOutput, close_process_group

TASKS = ["t0", "t1", "t2"]  # (`--tasks` sets their number)
WIDTHS = (256, 1024, 1024, 256)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(WIDTHS):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({t: nn.Linear(WIDTHS[-1], 1) for t in TASKS})

    @property
    def task_names(self) -> list[str]:
        return TASKS

    def training_step(self, X, Y) -> StepOutput:
        h = self.trunk(X["x"])
        return StepOutput({t: F.mse_loss(self.heads[t](h).squeeze(-1), Y[t]) for t in TASKS if t in Y})

    def shared_parameters(self):
        return list(self.trunk.parameters())

    def task_outputs(self, X, task_names):
        h = self.trunk(X["x"])
        return {t: self.heads[t](h).squeeze(-1) for t in task_names}

    def scorers(self):
        return {t: Scorer(["mse"]) for t in TASKS}


def _loader(steps: int, batch: int, procs: int) -> DictDataLoader:
    g = torch.Generator().manual_seed(0)
    rows = steps * batch * procs
    x = torch.randn(rows, WIDTHS[0], generator=g)
    data = DictDataset("bench", "train", {"x": x}, {t: torch.randn(rows, generator=g) for t in TASKS})
    return DictDataLoader(data, batch_size=batch, shuffle=False)


class _LiveBytes(TorchDispatchMode):
    """The bytes of the tensor storages that ops create while the mode is on and that are still alive, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._sizes: dict[int, int] = {}

    def _free(self, key: int, size: int) -> None:
        if self._sizes.pop(key, None) is not None:
            self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if type(t) in (torch.Tensor, nn.Parameter):  # (a DTensor's local tensor is made by an op of its own)
                storage = t.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size and key not in self._sizes:
                    self._sizes[key] = size
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, size)
        return out


def _fit(method: str, path: str, steps: int, batch: int, procs: int, memory: list[float] | None = None) -> float:
    """Seconds for a fit of `steps` steps; with `memory`, each step's backward's peak of new bytes is appended to it."""
    torch.manual_seed(0)
    trainer = Trainer(weighting=method, n_epochs=1, lr=0.01, seed=0, progress_bar=False, strategy="fsdp")
    strategy = trainer.strategy = FSDPStrategy(sharded_gramian=path == "shards")
    if memory is not None:
        backward = strategy.backward

        def measured(*args, **kwargs):
            with _LiveBytes() as mode:
                result = backward(*args, **kwargs)
            memory.append(mode.peak / 2**20)
            return result

        strategy.backward = measured  # type: ignore[method-assign]
    start = time.perf_counter()
    trainer.fit(Net(), [_loader(steps, batch, procs)])
    return time.perf_counter() - start


def _worker(rank: int, port: int, procs: int, args: argparse.Namespace, method: str, path: str, out: str) -> None:
    torch.set_num_threads(1)
    TASKS[:] = [f"t{i}" for i in range(args.tasks)]
    warnings.filterwarnings("ignore", "fit has no metric")
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(procs), LOCAL_RANK=str(rank)
    )
    memory: list[float] = []
    _fit(method, path, 2, args.batch, procs, memory)
    short = _fit(method, path, args.warmup, args.batch, procs)
    long = _fit(method, path, args.warmup + args.steps, args.batch, procs)
    close_process_group()
    Path(out, f"{rank}.txt").write_text(f"{(long - short) / args.steps} {max(memory)}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=["mgda", "imtl_g"])
    parser.add_argument("--tasks", type=int, default=3)
    args = parser.parse_args()
    TASKS[:] = [f"t{i}" for i in range(args.tasks)]
    P = sum(p.numel() for p in Net().trunk.parameters())
    T, N = len(TASKS), args.procs
    print(f"trunk P = {P:,} parameters, T = {T}, {N} gloo ranks (1 thread each), batch {args.batch} per rank")
    print("| method | path | s/step | backward's peak new bytes, MiB (max over ranks) | J bytes per rank, MiB |")
    print("|---|---|---|---|---|")
    for method in args.methods:
        for path in ("shards", "whole"):
            with tempfile.TemporaryDirectory() as out:
                mp.start_processes(
                    _worker, args=(_free_port(), N, args, method, path, out), nprocs=N, start_method="spawn"
                )
                results = [Path(out, f"{r}.txt").read_text().split() for r in range(N)]
            step = max(float(r[0]) for r in results)
            peak = max(float(r[1]) for r in results)
            held = T * (-(-P // N) if path == "shards" else P) * 4 / 2**20
            print(f"| {method} | {path} | {step:.3f} | {peak:.1f} | {held:.1f} |")


if __name__ == "__main__":
    main()
