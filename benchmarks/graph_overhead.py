"""Overhead of the task-graph executor on the torchMTL quickstart graph.

mtlkit's `MTLModel` against the same network written by hand as a plain `nn.Module`
(same layers, same initial weights, same loss loop, same optimizer), at batch sizes 32
and 1024, for three workloads:

- forward:          ``model(X)``
- forward+backward: zero the grads, ``model(X)``, torchMTL's README loss loop, ``backward``
- full step:        the same plus an Adam step

Each sample times `--inner` consecutive calls by the process's CPU time (`--clock cpu`,
the default: time spent waiting for a core on a busy machine is not counted) or by the
wall clock (`--clock wall`, synchronised on CUDA); samples of the two models alternate
in one process so that machine load affects both alike. Each cell is the median over the
samples; "median ratio" is the median of the per-pair ratios mtlkit / hand-written.
Needs neither torchMTL nor a GPU.

Run: python benchmarks/graph_overhead.py [--samples 400] [--inner 20] [--threads default 1] [--device cpu] [--clock cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from torchmtl_quickstart import build_model


class HandWritten(nn.Module):
    """The quickstart graph as plain PyTorch; attribute names match MTLModel's, so state dicts load across."""

    def __init__(self) -> None:
        super().__init__()
        seq = nn.Sequential
        self.Embed1 = seq(nn.Linear(16, 32), nn.Linear(32, 8))
        self.Embed2 = seq(nn.Linear(16, 32), nn.Linear(32, 8))
        self.Task1 = seq(nn.Linear(8, 32), nn.Linear(32, 1))
        self.Task2 = seq(nn.Linear(8, 64), nn.Linear(64, 1))
        self.FNN = seq(nn.Linear(16, 32), nn.Linear(32, 32))
        self.Task3 = seq(nn.Linear(32, 16), nn.Linear(16, 1))
        self.Task3_loss = nn.Parameter(torch.tensor(1.0))
        self.mse, self.bce = nn.MSELoss(), nn.BCEWithLogitsLoss()

    def forward(self, X: torch.Tensor):
        e1, e2 = self.Embed1(X), self.Embed2(X)
        y_hat = [self.Task1(e1), self.Task2(e2), self.Task3(self.FNN(torch.cat((e1, e2), dim=1)))]
        return y_hat, [self.mse, self.bce, self.mse], [1.0, 1.0, self.Task3_loss]


def _forward(model, optimizer, X, y) -> None:
    model(X)


def _forward_backward(model, optimizer, X, y) -> None:
    optimizer.zero_grad()
    y_hat, l_funcs, l_weights = model(X)
    loss = 0
    for i in range(len(y_hat)):
        loss += l_weights[i] * l_funcs[i](y_hat[i], y[i])
    loss.backward()


def _step(model, optimizer, X, y) -> None:
    _forward_backward(model, optimizer, X, y)
    optimizer.step()


WORKLOADS = {"forward": _forward, "forward+backward": _forward_backward, "full step": _step}


def measure(workload, batch_size: int, samples: int, inner: int, device: torch.device, clock, warmup: int = 20):
    """Median seconds per call (hand-written, mtlkit) and the median of the per-sample ratios."""
    torch.manual_seed(0)
    graph = build_model().to(device)
    hand = HandWritten().to(device)
    missing = hand.load_state_dict(graph.state_dict(), strict=False)
    if missing.missing_keys or missing.unexpected_keys:
        raise RuntimeError(f"state dicts differ: {missing}")
    opts = {m: torch.optim.Adam(m.parameters(), lr=1e-3) for m in (graph, hand)}
    X = torch.randn(batch_size, 16, device=device)
    y = [
        torch.randn(batch_size, 1, device=device),
        torch.rand(batch_size, 1, device=device).round(),
        torch.randn(batch_size, 1, device=device),
    ]
    times: dict[nn.Module, list[float]] = {graph: [], hand: []}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for k in range(warmup + samples):
        for model in (graph, hand) if k % 2 else (hand, graph):
            opt = opts[model]
            sync()
            start = clock()
            for _ in range(inner):
                workload(model, opt, X, y)
            sync()
            if k >= warmup:
                times[model].append((clock() - start) / inner)
    ratios = [a / b for a, b in zip(times[graph], times[hand])]
    return statistics.median(times[hand]), statistics.median(times[graph]), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=400, help="timed samples per model and cell")
    parser.add_argument("--inner", type=int, default=20, help="calls per timed sample")
    parser.add_argument("--threads", nargs="+", default=["default", "1"], help="torch intra-op thread counts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="process CPU time or wall clock")
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" and args.device == "cpu" else time.perf_counter
    device = torch.device(args.device)
    default_threads = torch.get_num_threads()
    print(
        f"torch {torch.__version__}, device {device}, {args.samples} samples x {args.inner} calls per cell, "
        f"{'process CPU time' if clock is time.process_time else 'wall clock'}"
    )
    print("| threads | workload | batch | hand-written | mtlkit | ratio of medians | median ratio |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for threads in args.threads:
        torch.set_num_threads(default_threads if threads == "default" else int(threads))
        label = f"{torch.get_num_threads()}" + (" (default)" if threads == "default" else "")
        for name, workload in WORKLOADS.items():
            for batch_size in (32, 1024):
                hand, graph, ratio = measure(workload, batch_size, args.samples, args.inner, device, clock)
                print(
                    f"| {label} | {name} | {batch_size} | {hand * 1e6:.1f} µs | {graph * 1e6:.1f} µs "
                    f"| {graph / hand:.3f} | {ratio:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
