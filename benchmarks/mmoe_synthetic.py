"""The MMoE paper's synthetic experiment: shared-bottom, OMoE and MMoE against task correlation.

Ma et al., KDD 2018, section 4: two regression tasks from
`mtlkit.data.synthetic.correlated_regression` whose weight vectors have cosine
similarity p ∈ {1.0, 0.9, 0.5}. The paper's finding: MMoE's advantage over the
shared-bottom model grows as p falls. Models after the paper's setup: 8 experts of one hidden
layer of 16 ReLU units, towers of one hidden layer of 8 units; OMoE is MMoE with a
single gate for both tasks; the shared bottom has one hidden layer sized so that it
has about as many parameters as MMoE. Trained with Adam on Σ_t MSE_t (mtlkit's "ew"
balancer); the table holds the final test MSE averaged over both tasks, mean ± standard
error over seeds (each seed draws new tasks, data and initial weights), and MMoE's loss
relative to the shared bottom's on the same seed (geometric mean of the per-seed ratios).

    python benchmarks/mmoe_synthetic.py                      # ~6 minutes on a busy 2-core VM
    python benchmarks/mmoe_synthetic.py --seeds 20 --n-train 50000 --epochs 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

from mtlkit.architectures import HPS, MMoE
from mtlkit.data.synthetic import correlated_regression
from mtlkit.weighting import get

TASKS = ["task1", "task2"]
MODELS = ("shared-bottom", "OMoE", "MMoE")


def tower(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, 8), nn.ReLU(), nn.Linear(8, 1))


def build(kind: str, dim: int, experts: int, expert_width: int) -> nn.Module:
    losses = {t: F.mse_loss for t in TASKS}
    if kind == "shared-bottom":
        # one hidden layer of h units: (dim + 1) h + 2 (8 h + 17) parameters ≈ MMoE's
        mmoe_params = experts * (dim + 1) * expert_width + 2 * (dim + 1) * experts + 2 * (8 * expert_width + 17)
        h = round((mmoe_params - 34) / (dim + 1 + 16))
        bottom = lambda: nn.Sequential(nn.Linear(dim, h), nn.ReLU())  # noqa: E731
        return HPS(TASKS, bottom, {t: tower(h) for t in TASKS}, losses=losses)
    return MMoE(
        TASKS,
        lambda: nn.Sequential(nn.Linear(dim, expert_width), nn.ReLU()),
        {t: tower(expert_width) for t in TASKS},
        num_experts=experts,
        shared_gate=kind == "OMoE",
        img_size=(dim,),
        losses=losses,
    )


def run(kind: str, correlation: float, seed: int, args: argparse.Namespace) -> float:
    """Train one model on one draw of the tasks; return its test MSE averaged over the two tasks."""
    x, y1, y2 = correlated_regression(args.n_train + args.n_test, args.dim, correlation, seed)
    train, test = slice(0, args.n_train), slice(args.n_train, None)
    torch.manual_seed(seed)
    model = build(kind, args.dim, args.experts, args.expert_width)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    balancer = get("ew")
    for _ in range(args.epochs):
        order = torch.randperm(args.n_train)
        for start in range(0, args.n_train, args.batch_size):
            rows = order[start : start + args.batch_size]
            optimizer.zero_grad(set_to_none=True)
            step = model.training_step(x[train][rows], {"task1": y1[train][rows], "task2": y2[train][rows]})
            balancer.backward(step.losses)
            optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(x[test])
    return (F.mse_loss(out["task1"], y1[test]).item() + F.mse_loss(out["task2"], y2[test]).item()) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--correlations", type=float, nargs="+", default=[1.0, 0.9, 0.5])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--expert-width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.time()
    results = {
        p: {kind: [run(kind, p, seed, args) for seed in range(args.seeds)] for kind in MODELS}
        for p in args.correlations
    }
    print(
        f"final test MSE (mean of the two tasks), mean ± s.e. over {args.seeds} seeds; "
        f"{args.n_train} train / {args.n_test} test rows, {args.epochs} epochs"
    )
    print(f"{'correlation':>11} | " + " | ".join(f"{kind:>15}" for kind in MODELS) + " | MMoE / shared-bottom")
    for p, by_kind in results.items():
        cells = []
        for kind in MODELS:
            values = by_kind[kind]
            se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):8.4f} ± {se:.4f}")
        ratios = [m / s for m, s in zip(by_kind["MMoE"], by_kind["shared-bottom"])]
        wins = sum(r < 1 for r in ratios)
        geo = statistics.geometric_mean(ratios)
        row = " | ".join(f"{c:>15}" for c in cells)
        print(f"{p:>11.2f} | {row} | ×{geo:.2f} (lower in {wins}/{len(ratios)} seeds)")
    print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
