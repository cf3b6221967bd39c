"""Step time and peak memory of gradient balancers relative to EW, in both modes, against TorchJD.

A step is zero_grad → forward → backward → SGD step on a shared trunk with T linear heads
(MSE; `--heads mlp`: a 64-wide hidden layer per head, where rep_grad takes the per-sample
rows instead of the heads' factors). Entries of one cell:

- `ew`: one backward of Σ L_t (the floor);
- `<method> params`: mtlkit with the task gradients on the shared parameters (methods
  defined by weights(G) take the Gramian path: G layer by layer from one backward batched
  over the tasks, linear and conv layers from their inputs and output gradients, then
  the weighted update from the same per-layer tensors);
- `<method> params/fold`: the same with nothing kept for the update (the path `params` takes
  beyond 2²² kept numbers): each layer folds its block as the backward reaches it and the
  update is one more backward; peak memory does not grow with depth;
- `<method> reps/sample`, `reps/batch`: mtlkit at the representation (rep_grad), with
  `rep_reduce="sample"` (per-sample rows, T×(B·D)) and `"batch"` (LibMTL's batch sums, T×D);
- `<method> torchjd-autojac`: TorchJD's `mtl_backward` + `jac_to_grad(shared, aggregator)`;
- `<method> torchjd-autogram`: TorchJD's `autogram.Engine(trunk).compute_gramian(losses)`,
  its weighting, then `losses.backward(weights)`.

TorchJD columns appear when `torchjd` is importable and has the method without optional
solvers (its UPGrad/CAGrad/Nash-MTL need quadprog/cvxpy). All entries of a cell alternate
step by step in one process; each time is an entry's median over `--rounds` steps, measured
as the process's CPU time (all threads; `--clock wall` for wall time, synchronised on CUDA),
so waiting for a core on a busy machine is not counted. Peak memory: the highest total of
live tensor bytes allocated during one step above what was allocated before it, from the
stream of allocations and frees torch's profiler records (`profile_memory=True`; on CUDA
`torch.cuda.max_memory_allocated`).
Work: the floating-point operations of one step as `torch.utils.flop_counter.FlopCounterMode`
counts them (matrix products and convolutions), the same on every machine: a time ratio
below the work ratio is won by bigger, more efficient kernels; above it, by overhead.

Tables: (1) the issue's workload, MLP 64→256→256 (ReLU), batch 256, T = 2, 10, 40;
(2) other shapes at T = 10: MLP 64→1024→1024, a small CNN (3×16×16 input, two convs),
batch 32 and 256. Each at torch's default thread count and at 1 thread.

`--all-methods`: every registered method (`mtlkit.weighting.available(aliases=False)`, loss
balancers included: their `reps` entry is the same single backward), modes `params` and
`reps` (sample), the issue's workload only, no TorchJD; one row per method. Methods that
declare `needs` get a `StepContext` over the benchmark's net, as the Trainer would hand
them: extra training / validation batches are random batches of the step's shape, and
FAMO's post-step update (one no-grad forward after the optimizer step) is part of its step.
MoCo and ExcessMTL take the batch rows in every `reps` column (their only rows there).
A mode a method refuses (`supports_shared_reps = False`) or a T where it is undefined (it
raises ValueError: Krum, TrimmedMean at small T) is "n/a", the reason printed on stderr.

Run: python benchmarks/balancers.py [--quick] [--methods mgda upgrad imtl_g | --all-methods]
     [--threads default 1] [--device cpu] [--clock cpu|wall] [--modes params reps/sample reps/batch]

The rep_grad rows alone (EW and `reps/*`, every shape, both thread settings, wall clock):
python benchmarks/balancers.py --modes reps/sample reps/batch --no-torchjd --clock wall
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

import mtlkit.weighting.jacobian as gramian_engine
from mtlkit.weighting import available, get
from mtlkit.weighting.context import POST_STEP_LOSSES, StepContext, needs_of

TORCHJD_NAMES = {
    "mgda": "MGDA",
    "upgrad": "UPGrad",
    "imtl_g": "IMTLG",
    "cagrad": "CAGrad",
    "aligned_mtl": "AlignedMTL",
    "pcgrad": "PCGrad",
    "nash_mtl": "NashMTL",
    "gradvac": "GradVac",
    "dualproj": "DualProj",
}


def trunk(kind: str) -> tuple[nn.Module, tuple[int, ...], int]:
    """(trunk, input shape of one sample, representation width)."""
    if kind == "mlp256":
        return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU()), (64,), 256
    if kind == "mlp1024":
        return nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU()), (64,), 1024
    if kind == "cnn":
        layers = [
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        ]
        return nn.Sequential(*layers), (3, 16, 16), 32 * 8 * 8
    raise ValueError(f"unknown trunk {kind!r}")


class Net(nn.Module):
    def __init__(self, kind: str, num_tasks: int, heads: str = "linear") -> None:
        super().__init__()
        self.trunk, self.input_shape, rep = trunk(kind)
        if heads == "linear":
            self.heads = nn.ModuleList(nn.Linear(rep, 1) for _ in range(num_tasks))
        else:  # "mlp": a hidden layer of 64 per task
            self.heads = nn.ModuleList(
                nn.Sequential(nn.Linear(rep, 64), nn.ReLU(), nn.Linear(64, 1)) for _ in range(num_tasks)
            )

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        z = self.trunk(x)
        return [((head(z) - y[:, t : t + 1]) ** 2).mean() for t, head in enumerate(self.heads)], z


def _ew(net: Net, T: int) -> Callable:
    def backward(losses, z):
        torch.stack(losses).sum().backward()

    return backward


def _mtlkit(net: Net, T: int, name: str, mode: str, batch: tuple[torch.Tensor, torch.Tensor]) -> Callable:
    balancer = get(name, tasks=T)
    if not mode.startswith("params") and not getattr(
        balancer, "batch_rows_only", False
    ):  # MoCo, ExcessMTL: batch rows only
        balancer.rep_reduce = mode.split("/")[1]
    needs = needs_of(balancer)
    context = _context(net, balancer.task_names, batch) if needs else None
    net.balancer = balancer  # its own parameters (UW's log-variances, ...) join the optimizer's
    shared = list(net.trunk.parameters())

    def backward(losses, z):
        balancer.context = context
        if mode == "params":
            balancer.backward(losses, shared_params=shared)
        elif mode == "params/fold":  # the Gramian path keeps nothing for the update, whatever the size
            kept, gramian_engine._HELD_ELEMENTS = gramian_engine._HELD_ELEMENTS, 0
            try:
                balancer.backward(losses, shared_params=shared)
            finally:
                gramian_engine._HELD_ELEMENTS = kept
        else:
            balancer.backward(losses, shared_reps=z)

    def after_step():  # the Trainer's side of "post_step_losses" (FAMO): one no-grad forward on the same batch
        balancer.context = None
        with torch.no_grad():
            balancer.update(dict(zip(balancer.task_names, net.losses(*batch)[0])))

    backward.after_step = after_step if POST_STEP_LOSSES in needs else None
    return backward


def _context(net: Net, names: list[str], batch: tuple[torch.Tensor, torch.Tensor]) -> StepContext:
    """What the Trainer hands a balancer that declares `needs`; its extra training and validation batches are
    random batches of the step's shape, a few made once and drawn in turn."""
    generator = torch.Generator().manual_seed(1)
    x, y = batch
    made = [(torch.randn(x.shape, generator=generator), torch.randn(y.shape, generator=generator)) for _ in range(4)]
    draws = itertools.cycle([(ex.to(x.device), ey.to(y.device)) for ex, ey in made])
    return StepContext(
        batch=batch,
        losses=lambda b: dict(zip(names, net.losses(*b)[0])),
        next_train_batch=lambda: next(draws),
        next_valid_batch=lambda: next(draws),
        shared_parameters=list(net.trunk.parameters()),
        parameters=list(net.parameters()),
        lr=1e-4,
    )


def _autojac(net: Net, T: int, name: str) -> Callable:
    from torchjd.autojac import jac_to_grad, mtl_backward

    aggregator = _jd(name, "")
    shared = list(net.trunk.parameters())
    heads = [list(h.parameters()) for h in net.heads]

    def backward(losses, z):
        mtl_backward(losses, features=z, shared_params=shared, tasks_params=heads)
        jac_to_grad(shared, aggregator)

    return backward


def _autogram(net: Net, T: int, name: str) -> Callable:
    from torchjd.autogram import Engine

    weighting = _jd(name, "Weighting")
    engine = Engine(net.trunk, batch_dim=None)

    def backward(losses, z):
        vector = torch.stack(losses)
        vector.backward(weighting(engine.compute_gramian(vector)))

    return backward


def _jd(name: str, suffix: str):
    import torchjd.aggregation as aggregation

    return getattr(aggregation, TORCHJD_NAMES[name] + suffix)()


def entries(
    net: Net, T: int, methods: list[str], modes: list[str], torchjd: bool, batch: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, Callable[[Net], Callable]]:
    """Entry name -> factory of its backward(losses, z) on a fresh copy of `net`.

    Modes a method refuses are left out: `shared_reps` for methods with `supports_shared_reps = False`.
    """
    made: dict[str, Callable] = {"ew": lambda n: _ew(n, T)}
    for name in methods:
        reps = getattr(type(get(name, tasks=T)), "supports_shared_reps", True)
        for mode in modes:
            if mode.startswith("params") or reps:
                made[f"{name} {mode}"] = lambda n, name=name, mode=mode: _mtlkit(n, T, name, mode, batch)
        if torchjd and name in TORCHJD_NAMES:
            for kind, build in (("autojac", _autojac), ("autogram", _autogram)):
                try:  # optional solvers of TorchJD (quadprog, cvxpy) may be missing
                    build(copy.deepcopy(net), T, name)
                except Exception as error:
                    print(f"  (no torchjd-{kind} {name}: {str(error).splitlines()[0][:100]})", file=sys.stderr)
                    continue
                made[f"{name} torchjd-{kind}"] = lambda n, name=name, build=build: build(n, T, name)
    return made


def measure(kind: str, T: int, batch: int, methods: list[str], args) -> dict[str, tuple[float, float, float]]:
    """Entry -> (median step seconds, peak MB of one step, FLOP of one step)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = Net(kind, T, args.heads).to(device)
    x = torch.randn(batch, *base.input_shape, device=device)
    y = torch.randn(batch, T, device=device)
    steps = {}
    for entry, factory in entries(base, T, methods, args.modes, args.torchjd, (x, y)).items():
        net = copy.deepcopy(base)
        backward = factory(net)
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-4)
        after_step = getattr(backward, "after_step", None)

        def step(net=net, backward=backward, optimizer=optimizer, after_step=after_step):
            optimizer.zero_grad(set_to_none=True)
            losses, z = net.losses(x, y)
            backward(losses, z)
            optimizer.step()
            if after_step is not None:
                after_step()

        steps[entry] = step
    cuda = device.type == "cuda"
    clock = time.perf_counter if (cuda or args.clock == "wall") else time.process_time
    for entry, step in list(steps.items()):
        try:
            for _ in range(args.warmup):
                step()
        except ValueError as error:  # a method undefined here (Krum at T=2, ...): "n/a" in the table
            print(f"  (n/a {entry}: {str(error).splitlines()[0][:160]})", file=sys.stderr)
            del steps[entry]
    samples: dict[str, list[float]] = {entry: [] for entry in steps}
    for _ in range(args.rounds):
        for entry, step in steps.items():
            if cuda:
                torch.cuda.synchronize()
            start = clock()
            step()
            if cuda:
                torch.cuda.synchronize()
            samples[entry].append(clock() - start)
    return {
        entry: (statistics.median(samples[entry]), _peak_mb(step, device), _flops(step))
        for entry, step in steps.items()
    }


def _flops(step: Callable[[], None]) -> float:
    """Floating-point operations of one step, as torch's FlopCounterMode counts them (matmuls, convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def _peak_mb(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # Every allocation (+bytes) and free (-bytes) in the order they happened. (An operator's
    # `self_cpu_memory_usage` nets its allocations against its frees, which hides peaks.)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]  # type: ignore[union-attr]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def table(title: str, cells: dict[tuple, dict[str, tuple[float, float, float]]], columns: list[tuple]) -> str:
    lines = [title, "", "| entry | " + " | ".join(_label(c) for c in columns) + " |", "|---|" + "---:|" * len(columns)]
    names = list(dict.fromkeys(name for c in columns for name in cells[c]))
    for name in names:
        row = []
        for c in columns:
            cell = cells[c]
            if name not in cell:
                row.append("n/a")
                continue
            seconds, peak, flops = cell[name]
            ew_seconds, ew_peak, ew_flops = cell["ew"]
            if name == "ew":
                row.append(f"{seconds * 1e3:.2f} ms, {peak:.1f} MB, {flops / 1e6:.0f} MFLOP")
            else:
                row.append(
                    f"{seconds / ew_seconds:.2f}×, {peak / max(ew_peak, 1e-9):.1f}× mem, "
                    f"{flops / max(ew_flops, 1.0):.2f}× flop"
                )
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def method_table(
    cells: dict[tuple, dict[str, tuple[float, float, float]]], columns: list[tuple], methods: list[str]
) -> str:
    """One row per method: its step time / EW's in each mode (`--all-methods`)."""
    modes = {"params": "params", "reps/sample": "reps", "reps/batch": "reps/batch"}
    heads = [(c, mode) for c in columns for mode in modes if any(f" {mode}" in e for e in cells[c])]
    lines = [
        "| method | " + " | ".join(f"T={c[1]} {modes[mode]}" for c, mode in heads) + " |",
        "|---|" + "---:|" * len(heads),
        "| EW floor (ms) | " + " | ".join(f"{cells[c]['ew'][0] * 1e3:.2f}" for c, _ in heads) + " |",
    ]
    for name in methods:
        row = [cells[c].get(f"{name} {mode}") for c, mode in heads]
        ratios = [f"{r[0] / cells[c]['ew'][0]:.2f}" if r else "n/a" for r, (c, _) in zip(row, heads)]
        lines.append(f"| {name} | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def _label(c: tuple) -> str:
    kind, T, batch, threads = c
    return f"{kind} T={T} B={batch} {threads} thr"


def speedups(
    cells: dict[tuple, dict[str, tuple[float, float, float]]], columns: list[tuple], methods: list[str]
) -> str:
    lines = ["TorchJD time / mtlkit `params` time (> 1: mtlkit faster), per cell:", ""]
    for c in columns:
        parts = []
        for name in methods:
            ours = cells[c].get(f"{name} params")
            for kind in ("autojac", "autogram"):
                theirs = cells[c].get(f"{name} torchjd-{kind}")
                if ours and theirs:
                    parts.append(f"{name} {kind} {theirs[0] / ours[0]:.2f}")
        if parts:
            lines.append(f"- {_label(c)}: " + ", ".join(parts))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the issue's workload at T=10, fewer rounds")
    parser.add_argument("--methods", nargs="+", default=["mgda", "upgrad", "imtl_g"])
    parser.add_argument(
        "--all-methods",
        action="store_true",
        help="every registered method, modes params and reps (sample), the issue's workload only, no TorchJD",
    )
    parser.add_argument("--threads", nargs="+", default=["default", "1"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--no-torchjd", dest="torchjd", action="store_false")
    parser.add_argument(
        "--heads",
        choices=["linear", "mlp"],
        default="linear",
        help="per task: nn.Linear(rep, 1) (the issue's workload), or Linear(rep, 64) → ReLU → Linear(64, 1)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=["params", "params/fold", "reps/sample", "reps/batch"],
        default=["params", "params/fold", "reps/sample", "reps/batch"],
        help="mtlkit entries per method (reps/*: rep_grad at the representation); EW is always measured",
    )
    args = parser.parse_args()
    args.rounds = args.rounds or (7 if args.quick else 15)
    args.warmup = 2
    if args.all_methods:
        args.methods, args.modes, args.torchjd = available(aliases=False), ["params", "reps/sample"], False
    if args.torchjd:
        try:
            import torchjd  # noqa: F401
        except ImportError:
            args.torchjd = False
    default_threads = torch.get_num_threads()
    main_cells = [("mlp256", T, 256) for T in ((10,) if args.quick else (2, 10, 40))]
    shape_cells = (
        []
        if args.quick or args.all_methods
        else [(k, 10, b) for k in ("mlp1024", "cnn") for b in (32, 256)] + [("mlp256", 10, 32)]
    )
    results: dict[tuple, dict] = {}
    for threads in args.threads:
        torch.set_num_threads(default_threads if threads == "default" else int(threads))
        label = f"{torch.get_num_threads()}" + ("d" if threads == "default" else "")
        for kind, T, batch in main_cells + shape_cells:
            print(f"{kind} T={T} batch={batch} threads={label} ...", file=sys.stderr, flush=True)
            results[(kind, T, batch, label)] = measure(kind, T, batch, args.methods, args)
    clock = "wall time" if args.clock == "wall" or args.device != "cpu" else "process CPU time"
    print(
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} UTC, {platform.machine()} {os.cpu_count()} cores, torch "
        f"{torch.__version__}, device {args.device}, {clock}, {args.heads} heads, median of {args.rounds} steps; "
        "'Nd' = torch's default "
        f"N threads. EW row: ms per step and peak MB of one step; other rows: ratio to EW (time, peak memory).\n"
    )
    labels = [f"{default_threads}d" if t == "default" else str(int(t)) for t in args.threads]
    columns = [(k, T, b, lab) for lab in labels for k, T, b in main_cells]
    if args.all_methods:
        for lab in labels:
            print(f"Issue workload (MLP 64→256→256, batch 256), {lab} threads: step time / EW's\n")
            print(method_table(results, [c for c in columns if c[3] == lab], args.methods))
            print()
        return
    against_torchjd = args.torchjd and "params" in args.modes
    print(table("Issue workload (MLP 64→256→256, batch 256):", results, columns))
    if against_torchjd:
        print()
        print(speedups(results, columns, args.methods))
    if shape_cells:
        columns = [(k, T, b, lab) for lab in labels for k, T, b in shape_cells]
        print()
        print(table("Other shapes, T=10:", results, columns))
        if against_torchjd:
            print()
            print(speedups(results, columns, args.methods))


if __name__ == "__main__":
    main()
