"""Steps per second of `Trainer(strategy="ddp")` at 1 and more processes, and the share of the step in collectives.

Model: a shared MLP trunk (256 → 1024 → 1024 → 256, ReLU, ≈ 1.58M parameters) and T = 3
linear regression heads (MSE). Weak scaling: every rank takes `--batch` rows per step,
so the global batch grows with the number of processes; the weak-scaling efficiency is
steps/s at N processes over steps/s of the same configuration at 1 (1.0 = perfect).

Configurations (`--configs`); `/today` is the same run with the improvement switched off:
- `ew/plain`: no mtlkit; the same model, batches and Adam in a hand-written loop (through
  `DistributedDataParallel` with its defaults at 1 or more processes): the reference for
  what the machine and torch.distributed allow, against which mtlkit's own costs show.
- `ew`: EW through `DistributedDataParallel` (bucketed all-reduce overlapping the
  backward, `.grad` as views of DDP's buckets); `ew/today`: without
  `gradient_as_bucket_view` (DDP copies each bucket back into `.grad`).
- `mgda`, `imtl_g`: gradient methods on the shared parameters, the T × P Jacobian
  all-reduced block by block while its backward runs (`mtlkit.weighting.overlap`);
  `/today`: J all-reduced in one piece after the backward (`overlap_jacobian=False`).
  (On NCCL both take the sharded Gramian path instead: J's columns reduce-scattered.)
- `mgda/rep`, `imtl_g/rep`: the same at the shared representation (`rep_grad`; the T × T
  Gramian all-reduced, then one backward through DDP averages trunk and heads).

For each configuration and process count, the ranks run a Trainer fit of W steps and one
of W + S steps; steps/s = S / (time(W + S) − time(W)). The configurations take turns,
one measurement each per round (fresh processes every round), so that a change in the
machine's load spreads over all of them; each cell is the median over `--repeats`
rounds. "collectives" is the time per step in the strategy's timed collectives, including
waiting for the slower rank: losses (the step's one all-reduce of the task losses),
jacobian (for the overlapped path only the waits, the part the backward did not hide),
gramian, update, gradients (the hand-written all-reduce of the heads' gradients); DDP's
own all-reduce runs inside the backward and is not in it. The row "1, single" is the
single-process strategy, for the cost of the distributed machinery itself.

CPU (gloo, one torch thread per process by default):
    python benchmarks/distributed.py [--steps 20] [--batch 64] [--repeats 3] [--threads 1] [--procs 1 2 4]
One GPU (the single-process and 1-process DDP steps on CUDA; on NCCL `/today` differs only by DDP's
gradient_as_bucket_view, as Gramian methods take the sharded path):
    python benchmarks/distributed.py --device cuda --procs 1 --batch 256 --configs ew/plain ew mgda mgda/rep imtl_g imtl_g/rep
GPUs (nccl, one GPU per process, `--procs` up to the GPU count):
    python benchmarks/distributed.py --device cuda --procs 1 2 4 8 --batch 256
"""

from __future__ import annotations

import argparse
import itertools
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
from torch.nn.parallel import DistributedDataParallel

from mtlkit import DictDataLoader, DictDataset, Trainer
from mtlkit.training import DDPStrategy, SingleProcess, StepOutput
from mtlkit.training.strategies.ddp import TrainingStepModule

CONFIGS = ("ew/plain", "ew", "ew/today", "mgda", "mgda/today", "mgda/rep", "imtl_g", "imtl_g/today", "imtl_g/rep")
TASKS = ("t0", "t1", "t2")
WIDTH = (256, 1024, 1024, 256)
WARMUP_STEPS = 3
STEP_COLLECTIVES = ("losses", "jacobian", "gramian", "update", "gradients")


class Net(nn.Module):
    def __init__(self, rep_grad: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(WIDTH):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({t: nn.Linear(WIDTH[-1], 1) for t in TASKS})
        self.rep_grad = rep_grad

    @property
    def task_names(self) -> list[str]:
        return list(TASKS)

    def training_step(self, X, Y) -> StepOutput:
        h = self.trunk(X["x"])
        losses = {t: F.mse_loss(self.heads[t](h).squeeze(-1), Y[t]) for t in TASKS}
        return StepOutput(losses, {t: len(Y[t]) for t in TASKS}, [h] if self.rep_grad else None)

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def task_outputs(self, X, task_names):
        h = self.trunk(X["x"])
        return {t: self.heads[t](h).squeeze(-1) for t in task_names}

    def scorers(self):
        return {}


class _Stamped:
    """A strategy that notes the time (and its collectives' times so far) at the start of every step."""

    device_type = "cpu"

    def global_step(self, local_step, task_names, loss_dtype):
        if self.device_type == "cuda":
            torch.cuda.synchronize()
        self.stamps.append((time.perf_counter(), dict(self.timings)))
        return super().global_step(local_step, task_names, loss_dtype)


class StampedDDP(_Stamped, DDPStrategy):
    pass


class StampedSingle(_Stamped, SingleProcess):
    pass


def _strategy(variant: str, world: int | None, bucket_mb: float | None) -> DDPStrategy | SingleProcess:
    if world is None:
        return StampedSingle()
    if variant == "today":  # before this change: J in one piece, DDP copying buckets into .grad
        return StampedDDP(overlap_jacobian=False, ddp_options={"gradient_as_bucket_view": False})
    return StampedDDP(ddp_options=None if bucket_mb is None else {"bucket_cap_mb": bucket_mb})


def _loader(steps: int, batch: int, world: int) -> DictDataLoader:
    g = torch.Generator().manual_seed(0)
    n = steps * batch * world
    x = torch.randn(n, WIDTH[0], generator=g)
    y = {t: x[:, i] * x[:, i + 1] + 0.1 * torch.randn(n, generator=g) for i, t in enumerate(TASKS)}
    return DictDataLoader(DictDataset("synthetic", "train", {"x": x}, y), batch_size=batch, shuffle=True, seed=0)


def _measure(config: str, args: argparse.Namespace, world: int | None) -> dict:
    """One fit of WARMUP_STEPS + steps + 1 steps (`world` None: the single-process strategy): steps/s over the
    last `steps` + 1 step starts, and the seconds per step in each kind of collective over them."""
    method, _, variant = config.partition("/")
    if variant == "plain":
        return _plain(args, world)
    torch.manual_seed(0)
    model = Net(rep_grad=variant == "rep")
    trainer = Trainer(weighting=method, n_epochs=1, lr=1e-3, seed=0, progress_bar=False, device=args.device)
    strategy = trainer.strategy = _strategy(variant, world, args.bucket_mb)
    strategy.stamps, strategy.device_type = [], args.device
    if isinstance(strategy, DDPStrategy):
        strategy.profile = True  # on CUDA, synchronise around the collectives
    trainer.fit(model, [_loader(WARMUP_STEPS + args.steps + 1, args.batch, world or 1)])
    (start, before), (end, after) = strategy.stamps[WARMUP_STEPS], strategy.stamps[-1]
    comm = {k: (after[k] - before.get(k, 0.0)) / args.steps for k in STEP_COLLECTIVES if k in after}
    return {"steps_per_s": args.steps / (end - start), "comm_s": comm}


def _plain(args: argparse.Namespace, world: int | None) -> dict:
    """The same model, batches and optimizer in a hand-written loop (through DDP when `world`), no mtlkit."""
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    torch.manual_seed(0)
    model = Net(rep_grad=False).to(device)
    step = TrainingStepModule(model)
    forward = (
        step if world is None else DistributedDataParallel(step, device_ids=[device] if args.device == "cuda" else None)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    stamps = []
    for X, Y in _loader(WARMUP_STEPS + args.steps + 1, args.batch, 1):
        if args.device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        X, Y = {k: v.to(device) for k, v in X.items()}, {k: v.to(device) for k, v in Y.items()}
        optimizer.zero_grad(set_to_none=True)
        out = forward(X, Y)
        sum(out.losses.values()).backward()
        optimizer.step()
    return {"steps_per_s": args.steps / (stamps[-1] - stamps[WARMUP_STEPS]), "comm_s": {}}


def _median(measurements: list[dict]) -> dict:
    keys = sorted({k for m in measurements for k in m["comm_s"]})
    return {
        "steps_per_s": statistics.median(m["steps_per_s"] for m in measurements),
        "comm_s": {k: statistics.median(m["comm_s"].get(k, 0.0) for m in measurements) for k in keys},
    }


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.cuda.set_device(rank)
    backend = "nccl" if args.device == "cuda" else "gloo"
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=300)
    )
    results = {config: _measure(config, args, world) for config in args.configs}
    dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps(results))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64, help="rows per rank per step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bucket-mb", type=float, help="DDP's bucket_cap_mb but for /today (default: DDP's, 25)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    columns = ["1, single", *map(str, args.procs)]
    measured: dict[tuple[str, str], list[dict]] = {(c, p): [] for c in args.configs for p in columns}
    for _ in range(args.repeats):
        for config in args.configs:
            if not config.endswith("/today"):  # one process ignores the switches
                measured[config, "1, single"].append(_measure(config, args, None))
        for world in args.procs:
            with tempfile.TemporaryDirectory() as tmp:
                out = str(Path(tmp) / "results.json")
                mp.start_processes(_worker, args=(world, _free_port(), args, out), nprocs=world, start_method="spawn")
                results = json.loads(Path(out).read_text())
            for config in args.configs:
                measured[config, str(world)].append(results[config])
    medians = {key: _median(values) for key, values in measured.items() if values}
    params = sum(p.numel() for p in Net(False).trunk.parameters())

    print(
        f"device {args.device}, {args.threads} thread(s)/process, trunk {params} parameters, "
        f"{args.batch} rows/rank/step, {args.steps} timed steps, DDP buckets {args.bucket_mb or 25} MB, "
        f"median of {args.repeats}, "
        f"{time.perf_counter() - began:.0f} s in all\n"
    )
    print(
        "| config | processes | global batch | steps/s | weak-scaling efficiency "
        "| collectives ms/step (losses / jacobian / gramian / update / gradients) | collectives share |"
    )
    print("|---|---|---:|---:|---:|---|---:|")
    for config in args.configs:
        base = medians[config, str(args.procs[0])]["steps_per_s"] if args.procs[0] == 1 else None
        for procs in columns:
            if (config, procs) not in medians:
                continue
            r = medians[config, procs]
            world = 1 if procs == "1, single" else int(procs)
            comm = r["comm_s"]
            parts = " / ".join(f"{1000 * comm.get(k, 0.0):.2f}" for k in STEP_COLLECTIVES)
            share = sum(comm.get(k, 0.0) for k in STEP_COLLECTIVES) * r["steps_per_s"]
            efficiency = f"{r['steps_per_s'] / base:.2f}" if base and procs != "1, single" else "—"
            print(
                f"| {config} | {procs} | {args.batch * world} | {r['steps_per_s']:.1f} | {efficiency} | "
                f"{parts if comm else '—'} | {f'{100 * share:.0f} %' if comm else '—'} |"
            )


if __name__ == "__main__":
    main()
