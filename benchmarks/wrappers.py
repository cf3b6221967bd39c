"""Amortised step time of the `every=k` wrapper, relative to EW.

Model: a shared MLP trunk (in → hidden → hidden → rep, ReLU) and T linear heads (MSE),
T = 2, 10, 40. For MGDA and UPGrad with every = 1, 4, 16 (and EW), a step is
zero_grad → forward → `balancer.backward(...)` → `optimizer.step()`, with the task
gradients on the shared parameters ("params") or at the representation ("reps"). With
every=k, one step in k takes the task Jacobian and the others one weighted backward, so
each number is the MEAN step time over whole multiples of 16 steps (the amortised cost),
not a median. All entries of one (T, mode) cell run interleaved, 16 steps each per round.
On CPU the clock is the thread's CPU time (one torch thread), so other processes' load
inflates it less; on CUDA, wall time of synchronised steps.

Run: python benchmarks/wrappers.py [--rounds 6] [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from mtlkit.weighting import get

BLOCK = 16  # steps per entry per round: a multiple of every k


class Net(nn.Module):
    def __init__(self, num_tasks: int, d_in: int, hidden: int, rep: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, rep), nn.ReLU()
        )
        self.heads = nn.ModuleList(nn.Linear(rep, 1) for _ in range(num_tasks))

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        z = self.trunk(x)
        return [((head(z) - y[:, t : t + 1]) ** 2).mean() for t, head in enumerate(self.heads)], z


def _step(net: Net, spec: str, tasks: list[str], mode: str) -> Callable[[torch.Tensor, torch.Tensor], None]:
    balancer = get(spec, tasks=tasks).to(next(net.parameters()).device)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    shared = list(net.trunk.parameters())

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad()
        losses, z = net.losses(x, y)
        if mode == "reps":
            balancer.backward(losses, shared_reps=z)
        else:
            balancer.backward(losses, shared_params=shared)
        optimizer.step()

    return step


def _time(steps: dict[str, Callable], x, y, rounds: int) -> dict[str, float]:
    """Mean step time of each entry over `rounds` interleaved blocks of BLOCK steps (after one warm-up block)."""
    cuda = x.device.type == "cuda"
    clock = time.perf_counter if cuda else time.thread_time
    for step in steps.values():
        for _ in range(BLOCK):
            step(x, y)
    samples: dict[str, list[float]] = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            if cuda:
                torch.cuda.synchronize()
            start = clock()
            for _ in range(BLOCK):
                step(x, y)
            if cuda:
                torch.cuda.synchronize()
            samples[key].append((clock() - start) / BLOCK)
    return {key: statistics.mean(values) for key, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10, 40])
    parser.add_argument("--every", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--methods", nargs="+", default=["mgda", "upgrad"])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--d-in", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--rep", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    specs = [f"{m}@every={k}" if k > 1 else m for m in args.methods for k in args.every]
    columns = [(T, mode) for T in args.tasks for mode in ("params", "reps")]
    results = {}
    for T, mode in columns:
        tasks = [f"t{i}" for i in range(T)]
        torch.manual_seed(0)
        base = Net(T, args.d_in, args.hidden, args.rep).to(device)
        x, y = torch.randn(args.batch, args.d_in, device=device), torch.randn(args.batch, T, device=device)
        steps = {spec: _step(copy.deepcopy(base), spec, tasks, mode) for spec in ["ew", *specs]}
        results[(T, mode)] = _time(steps, x, y, args.rounds)
        print(f"T={T} {mode}: done", file=sys.stderr)
    print(
        f"Mean step time relative to EW (EW's own time in ms on the first row). Trunk {args.d_in}→{args.hidden}→"
        f"{args.hidden}→{args.rep}, batch {args.batch}, T linear heads, SGD; device {args.device}, "
        f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, {args.rounds}×{BLOCK} steps per entry.\n"
    )
    print("| method | " + " | ".join(f"T={T} {mode}" for T, mode in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    print("| EW (ms) | " + " | ".join(f"{1e3 * results[c]['ew']:.2f}" for c in columns) + " |")
    for spec in specs:
        print(f"| {spec} | " + " | ".join(f"{results[c][spec] / results[c]['ew']:.2f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
