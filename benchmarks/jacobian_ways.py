"""Which way of taking the T task rows of J is faster: one batched backward or one backward per task.

For each workload (a shared trunk: MLP 64→W→W or a small CNN; T linear heads; batch B) it times
`_batched` (one backward with the T rows vmapped, `is_grads_batched`) and `_one_by_one` (T plain
backward passes), from the frontier rows (where the tasks' graphs meet) and from the losses, and
prints per cell the ratio per-task / batched (> 1: batched faster) and what `jacobian` picks
(`_rows_batched`). The two ways alternate in one process; each time is the median over `--rounds`
calls of the process's CPU time (`--clock wall` for wall time, synchronised on CUDA).

Run: python benchmarks/jacobian_ways.py [--rounds 7] [--threads N] [--device cpu|cuda] [--clock cpu|wall]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from mtlkit.weighting.jacobian import _batched, _edge_rows, _frontier, _one_by_one, _rows_batched


def trunk(kind: str, width: int) -> tuple[nn.Module, tuple[int, ...], int]:
    """The shared trunk, its input's shape per sample, its output's width."""
    if kind == "cnn":
        convs = [nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten()]
        return nn.Sequential(*convs), (3, 16, 16), 16 * 16 * 16
    layers = [nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers), (64,), width


def timed(compute: Callable[[], torch.Tensor], clock: str, device: torch.device) -> float:
    now = time.process_time if clock == "cpu" else time.perf_counter
    start = now()
    compute()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return now() - start


def cell(kind: str, width: int, T: int, B: int, frontier: bool, args: argparse.Namespace) -> tuple[float, str]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    net, shape, D = trunk(kind, width)
    net = net.to(device)
    heads = [nn.Linear(D, 1).to(device) for _ in range(T)]
    rep = net(torch.randn(B, *shape, device=device))
    losses = [(head(rep) ** 2).mean() for head in heads]
    params = list(net.parameters())
    if frontier:
        outputs: list = _frontier(losses, params)  # type: ignore[assignment]
        seeds, _ = _edge_rows(losses, outputs, [])
    else:
        vec = torch.stack(losses)
        outputs, seeds = [vec], [torch.eye(T, device=device)]
    ways = {
        "batched": lambda: _batched(outputs, seeds, params, None),
        "per task": lambda: _one_by_one(outputs, seeds, params),
    }
    times: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(args.rounds + 1):
        for way, compute in ways.items():
            times[way].append(timed(compute, args.clock, device))
    ratio = statistics.median(times["per task"][1:]) / statistics.median(times["batched"][1:])
    pick = "batched" if _rows_batched(T, seeds, params) else "per task"
    return ratio, pick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, {args.clock} clock")
    print("| trunk | T | batch | rows from | per task / batched | picks | slower pick by |")
    print("|---|---|---|---|---|---|---|")
    for kind, width in (("mlp", 256), ("mlp", 1024), ("cnn", 0)):
        for T in (2, 10, 40):
            for B in (32, 256):
                for frontier in (True, False):
                    ratio, pick = cell(kind, width, T, B, frontier, args)
                    faster = "batched" if ratio > 1 else "per task"
                    loss = "" if pick == faster else f"{max(ratio, 1 / ratio):.2f}×"
                    name = f"mlp {width}" if kind == "mlp" else "cnn"
                    source = "frontier" if frontier else "losses"
                    print(f"| {name} | {T} | {B} | {source} | {ratio:.2f} | {pick} | {loss} |", flush=True)


if __name__ == "__main__":
    main()
