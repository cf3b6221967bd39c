"""Overhead of the task-graph executor: one training step of the torchMTL quickstart graph.

mtlkit's `MTLModel` against the same network written by hand as a plain `nn.Module`
(same layers, same initial weights, same optimizer, same loss loop), at batch sizes
32 and 1024. Steps of the two models alternate in one process so that machine load
affects both alike; each cell is the median over many steps.

Run: python benchmarks/graph_overhead.py [--steps 2000] [--threads 1] [--device cpu]
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
from torchmtl_quickstart import build_model  # noqa: E402


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


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, X: torch.Tensor, y: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    optimizer.zero_grad()
    y_hat, l_funcs, l_weights = model(X)
    loss = 0
    for i in range(len(y_hat)):
        loss += l_weights[i] * l_funcs[i](y_hat[i], y[i])
    loss.backward()
    optimizer.step()
    if X.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(batch_size: int, steps: int, device: torch.device, warmup: int = 50) -> tuple[float, float, float]:
    """Median step seconds (hand-written, mtlkit) and the median of the per-pair ratios."""
    torch.manual_seed(0)
    graph = build_model().to(device)
    hand = HandWritten().to(device)
    missing = hand.load_state_dict(graph.state_dict(), strict=False)
    if missing.missing_keys or missing.unexpected_keys:
        raise RuntimeError(f"state dicts differ: {missing}")
    opts = {m: torch.optim.Adam(m.parameters(), lr=1e-3) for m in (graph, hand)}
    X = torch.randn(batch_size, 16, device=device)
    y = [torch.randn(batch_size, 1, device=device), torch.rand(batch_size, 1, device=device).round(),
         torch.randn(batch_size, 1, device=device)]
    times: dict[nn.Module, list[float]] = {graph: [], hand: []}
    for k in range(warmup + steps):
        order = (graph, hand) if k % 2 else (hand, graph)
        for model in order:
            t = _step(model, opts[model], X, y)
            if k >= warmup:
                times[model].append(t)
    ratios = [a / b for a, b in zip(times[graph], times[hand])]
    return statistics.median(times[hand]), statistics.median(times[graph]), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="timed steps per model and batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, {args.steps} steps")
    print(f"{'batch':>6} {'hand-written':>14} {'mtlkit':>12} {'ratio of medians':>17} {'median ratio':>13}")
    for batch_size in (32, 1024):
        hand, graph, ratio = measure(batch_size, args.steps, device)
        print(f"{batch_size:>6} {hand * 1e6:>11.1f} µs {graph * 1e6:>9.1f} µs {graph / hand:>17.3f} {ratio:>13.3f}")


if __name__ == "__main__":
    main()
