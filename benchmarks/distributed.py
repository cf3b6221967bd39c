"""Steps per second of `Trainer(distributed=True)` at 1 and 2 processes, and the time spent in collectives.

Model: a shared MLP trunk (64 → 256 → 256 → 64, ReLU, ≈ 99k parameters) and T = 3
linear regression heads (MSE). Weak scaling: every rank takes `--batch` rows per step,
so the global batch grows with the number of processes. For each balancer (EW, and the
gradient methods MGDA and PCGrad, whose per-task Jacobian T × 99k is all-reduced) and
each process count, the ranks run a Trainer fit of W steps and one of W + S steps
(after a warm-up fit); steps/s = S / (time(W + S) − time(W)). The configurations take
turns, one measurement each per round (fresh processes every round), so that a change
in the machine's load spreads over all of them; each cell is the median over `--repeats` rounds.
"collectives" is the time per step in the Trainer's all-reduces (`Distributed.timings` of
the longer fit), split into losses / jacobian / gradients; it includes waiting for the
slower rank. The row "1, plain" is
the ordinary single-process Trainer, for the cost of the distributed machinery itself.

CPU (gloo, one torch thread per process by default):
    python benchmarks/distributed.py [--steps 40] [--batch 64] [--repeats 3] [--threads 1]
GPUs (nccl, one GPU per process, `--procs` up to the GPU count):
    python benchmarks/distributed.py --device cuda --procs 1 2 4 8 --batch 256
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import mtlkit.training.trainer as trainer_module
from mtlkit import DictDataLoader, DictDataset, Trainer
from mtlkit.training import StepOutput
from mtlkit.training.distributed import Distributed

METHODS = ("ew", "mgda", "pcgrad")
TASKS = ("t0", "t1", "t2")
WARMUP_STEPS = 5
STEP_COLLECTIVES = ("losses", "jacobian", "gradients")  # the per-step all-reduces (`Distributed.timings`)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU()
        )
        self.heads = nn.ModuleDict({t: nn.Linear(64, 1) for t in TASKS})

    @property
    def task_names(self) -> list[str]:
        return list(TASKS)

    def training_step(self, X, Y) -> StepOutput:
        h = self.trunk(X["x"])
        losses = {t: F.mse_loss(self.heads[t](h).squeeze(-1), Y[t]) for t in TASKS}
        return StepOutput(losses, {t: len(Y[t]) for t in TASKS})

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def task_outputs(self, X, task_names):
        h = self.trunk(X["x"])
        return {t: self.heads[t](h).squeeze(-1) for t in task_names}

    def scorers(self):
        return {}


class _Profiled(Distributed):
    """Synchronises around collectives (CUDA), so that their timings are their own."""

    @classmethod
    def start(cls, *args, **kwargs) -> Distributed:
        context = super().start(*args, **kwargs)
        context.profile = True
        return context


def _loader(steps: int, batch: int, world: int) -> DictDataLoader:
    g = torch.Generator().manual_seed(0)
    n = steps * batch * world
    x = torch.randn(n, 64, generator=g)
    y = {t: x[:, i] * x[:, i + 1] + 0.1 * torch.randn(n, generator=g) for i, t in enumerate(TASKS)}
    return DictDataLoader(DictDataset("synthetic", "train", {"x": x}, y), batch_size=batch, shuffle=True, seed=0)


def _fit(method: str, steps: int, args: argparse.Namespace, world: int, distributed: bool) -> tuple[float, dict]:
    torch.manual_seed(0)
    model = Net()
    trainer = Trainer(weighting=method, n_epochs=1, lr=1e-3, seed=0, progress_bar=False, distributed=distributed,
                      device=args.device if not distributed else None)
    loaders = [_loader(steps, args.batch, world)]
    start = time.perf_counter()
    trainer.fit(model, loaders)
    if args.device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return elapsed, dict(trainer.dist.timings) if trainer.dist is not None else {}


def _measure(method: str, args: argparse.Namespace, world: int, distributed: bool) -> dict:
    """One measurement: steps/s and seconds per step in each kind of collective."""
    _fit(method, WARMUP_STEPS, args, world, distributed)  # first-use costs (lazy imports, allocator)
    short, _ = _fit(method, WARMUP_STEPS, args, world, distributed)
    long, long_comm = _fit(method, WARMUP_STEPS + args.steps, args, world, distributed)
    comm = {k: long_comm[k] / (WARMUP_STEPS + args.steps) for k in STEP_COLLECTIVES if k in long_comm}
    return {"steps_per_s": args.steps / (long - short), "comm_s": comm}


def _median(measurements: list[dict]) -> dict:
    keys = sorted({k for m in measurements for k in m["comm_s"]})
    return {
        "steps_per_s": statistics.median(m["steps_per_s"] for m in measurements),
        "comm_s": {k: statistics.median(m["comm_s"].get(k, 0.0) for m in measurements) for k in keys},
    }


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(args.threads)
    trainer_module.Distributed = _Profiled
    if args.device == "cuda":
        torch.cuda.set_device(rank)
    backend = "nccl" if args.device == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=300))
    results = {method: _measure(method, args, world, distributed=True) for method in args.methods}
    device = torch.device("cuda", rank) if args.device == "cuda" else torch.device("cpu")
    results["all_reduce_ms"] = _all_reduce_costs(device)
    dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps(results))


def _all_reduce_costs(device: torch.device, repeats: int = 30) -> dict[str, float]:
    """Median ms of one all-reduce of each per-step buffer, started together (after a barrier): transfer, no waiting."""
    net = Net()
    shared = list(net.trunk.parameters())
    heads = list(net.heads.parameters())
    numel = lambda params: sum(p.numel() for p in params) + len(params)  # values + has-gradient flags
    sizes = {
        "losses": 2 * len(TASKS) + 1,
        "jacobian": len(TASKS) * (numel(shared) - len(shared)) + len(shared),
        "gradients, all parameters (EW)": numel(shared + heads),
        "gradients, heads only (gradient methods)": numel(heads),
    }
    costs = {}
    for name, n in sizes.items():
        buffer = torch.zeros(n, device=device)
        times = []
        for _ in range(repeats):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(buffer)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        costs[f"{name} ({n} floats)"] = 1000 * statistics.median(times)
    return costs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=64, help="rows per rank per step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    configs = ["1, plain", *map(str, args.procs)]
    measured: dict[tuple[str, str], list[dict]] = {(m, c): [] for m in args.methods for c in configs}
    transfers: dict[int, list[dict[str, float]]] = {}
    for _ in range(args.repeats):
        for method in args.methods:
            measured[method, "1, plain"].append(_measure(method, args, 1, distributed=False))
        for world in args.procs:
            with tempfile.TemporaryDirectory() as tmp:
                out = str(Path(tmp) / "results.json")
                mp.start_processes(_worker, args=(world, _free_port(), args, out), nprocs=world, start_method="spawn")
                results = json.loads(Path(out).read_text())
            for method in args.methods:
                measured[method, str(world)].append(results[method])
            transfers.setdefault(world, []).append(results["all_reduce_ms"])
    rows = [(m, c, args.batch * (1 if c == "1, plain" else int(c)), _median(measured[m, c]))
            for m in args.methods for c in configs]

    print(f"device {args.device}, {args.threads} thread(s)/process, {args.batch} rows/rank/step, "
          f"{args.steps} timed steps, median of {args.repeats}\n")
    print("| method | processes | global batch | steps/s | examples/s "
          "| collectives ms/step (losses / jacobian / gradients) | collectives share |")
    print("|---|---|---:|---:|---:|---|---:|")
    for method, procs, batch, r in rows:
        comm = r["comm_s"]
        parts = " / ".join(f"{1000 * comm.get(k, 0.0):.2f}" for k in STEP_COLLECTIVES)
        total = sum(comm.get(k, 0.0) for k in STEP_COLLECTIVES)
        share = total * r["steps_per_s"]
        print(f"| {method} | {procs} | {batch} | {r['steps_per_s']:.1f} | {r['steps_per_s'] * batch:.0f} | "
              f"{parts if comm else '—'} | {f'{100 * share:.0f} %' if comm else '—'} |")

    print("\none all-reduce alone, ranks started together (median ms):\n")
    print("| buffer | " + " | ".join(f"{world} process(es)" for world in transfers) + " |")
    print("|---|" + "---:|" * len(transfers))
    for name in next(iter(transfers.values()))[0]:
        cells = [f"{statistics.median(run[name] for run in runs):.3f}" for runs in transfers.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
