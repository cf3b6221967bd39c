"""Time per training step of every registered balancer, relative to EW, and against TorchJD.

Model: a shared MLP trunk (in → hidden → hidden → rep, ReLU) and T linear heads (MSE),
T = 2, 10, 40. For every method registered in `mtlkit.weighting` (one name per class) a
step is zero_grad → forward → `balancer.backward(...)` → `optimizer.step()`, with the
task gradients taken on the shared parameters ("params") or at the representation
("reps", LibMTL's rep_grad). When `torchjd` is importable, the same aggregation through
TorchJD (`autojac.mtl_backward` + `jac_to_grad` with its aggregator, i.e. the Jacobian on
the shared parameters) runs beside mtlkit's params mode. All entries of one (T, mode)
cell run interleaved, one step each per round; each number is an entry's median
step time. On CPU (one torch thread) the clock is the thread's CPU time, so other
processes' load does not inflate it; on CUDA, wall time of synchronised steps.

Run: python benchmarks/balancers.py [--quick] [--device cpu|cuda] [--threads 1] [--write-readme]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mtlkit.weighting import GradientBalancer, available, get
from mtlkit.weighting.context import POST_STEP_LOSSES, StepContext, needs_of

README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- balancers:begin -->", "<!-- balancers:end -->"

# mtlkit name -> TorchJD aggregator factory (T -> aggregator), for methods both have.
TORCHJD = {
    "ew": lambda T: _jd("Sum")(),
    "mgda": lambda T: _jd("MGDA")(),
    "pcgrad": lambda T: _jd("PCGrad")(),
    "cagrad": lambda T: _jd("CAGrad")(c=0.4),
    "gradvac": lambda T: _jd("GradVac")(),
    "graddrop": lambda T: _jd("GradDrop")(),
    "imtl_g": lambda T: _jd("IMTLG")(),
    "nash_mtl": lambda T: _jd("NashMTL")(n_tasks=T),
    "aligned_mtl": lambda T: _jd("AlignedMTL")(),
    "upgrad": lambda T: _jd("UPGrad")(),
}


def _jd(name: str):
    import torchjd.aggregation

    return getattr(torchjd.aggregation, name)


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


def _mtlkit_step(net: Net, name: str, tasks: list[str], mode: str) -> Callable[[torch.Tensor, torch.Tensor], None]:
    balancer = get(name, tasks=tasks).to(next(net.parameters()).device)
    optimizer = torch.optim.SGD([*net.parameters(), *balancer.parameters()], lr=1e-3)
    shared = list(net.trunk.parameters())
    needs = needs_of(balancer)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad()
        if needs:  # what the Trainer hands these methods; the extra batches are this one (same cost)
            balancer.context = _context(net, tasks, x, y)
        losses, z = net.losses(x, y)
        if mode == "reps":
            balancer.backward(losses, shared_reps=z)
        else:
            balancer.backward(losses, shared_params=shared)
        optimizer.step()
        if POST_STEP_LOSSES in needs:  # FAMO's exact loop, as the Trainer runs it
            with torch.no_grad():
                balancer.update(balancer.context.losses((x, y)))

    return step


def _context(net: Net, tasks: list[str], x: torch.Tensor, y: torch.Tensor) -> StepContext:
    def losses(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(zip(tasks, net.losses(*batch)[0]))

    def same() -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    return StepContext((x, y), losses, same, same, list(net.trunk.parameters()), list(net.parameters()), lr=1e-3)


def _torchjd_step(net: Net, aggregator) -> Callable[[torch.Tensor, torch.Tensor], None]:
    from torchjd.autojac import jac_to_grad, mtl_backward

    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    shared = list(net.trunk.parameters())

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad()
        losses, z = net.losses(x, y)
        mtl_backward(losses, features=z, shared_params=shared, tasks_params=[list(h.parameters()) for h in net.heads])
        jac_to_grad(shared, aggregator)
        optimizer.step()

    return step


def _torchjd_aggregator(name: str, T: int):
    """TorchJD's aggregator for `name`, or why there is none here."""
    if name not in TORCHJD:
        return None, "not in TorchJD"
    try:
        return TORCHJD[name](T), ""
    except ImportError as error:  # TorchJD's optional solver dependencies (cvxpy, quadprog)
        return None, str(error).split(".")[0]


def _time(steps: dict[str, Callable], x, y, rounds: int, warmup: int) -> dict[str, float]:
    """Median step time of each entry over `rounds` interleaved steps.

    On CPU the clock is this thread's CPU time: torch runs single-threaded here (autograd
    included), and time spent waiting for a core taken by another process is not counted.
    On CUDA it is wall time around synchronised steps.
    """
    cuda = x.device.type == "cuda"
    clock = time.perf_counter if cuda else time.thread_time
    for step in steps.values():
        for _ in range(warmup):
            step(x, y)
    samples: dict[str, list[float]] = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            if cuda:
                torch.cuda.synchronize()
            start = clock()
            step(x, y)
            if cuda:
                torch.cuda.synchronize()
            samples[key].append(clock() - start)
    return {key: statistics.median(values) for key, values in samples.items()}


def run(args: argparse.Namespace) -> tuple[dict, list[str], dict[str, str]]:
    device = torch.device(args.device)
    results: dict[tuple[int, str], dict[str, float]] = {}
    skipped: dict[str, str] = {}
    names: list[str] = []
    for T in args.tasks:
        tasks = [f"t{i}" for i in range(T)]
        names = available(aliases=False)
        torch.manual_seed(0)
        base = Net(T, args.d_in, args.hidden, args.rep).to(device)
        x = torch.randn(args.batch, args.d_in, device=device)
        y = torch.randn(args.batch, T, device=device)
        for mode in ("params", "reps"):
            steps: dict[str, Callable] = {}
            for name in names:
                balancer = get(name, tasks=tasks)
                if mode == "reps" and not isinstance(balancer, GradientBalancer):
                    continue  # loss methods ignore where task gradients would be taken
                if mode == "reps" and not getattr(balancer, "supports_shared_reps", True):
                    continue  # state in the shared parameters' coordinates: refuses rep_grad
                steps[name] = _mtlkit_step(copy.deepcopy(base), name, tasks, mode)
                if mode == "params" and args.torchjd:
                    aggregator, why = _torchjd_aggregator(name, T)
                    if aggregator is None:
                        if why != "not in TorchJD":
                            skipped[name] = why
                        continue
                    steps[f"torchjd:{name}"] = _torchjd_step(copy.deepcopy(base), aggregator.to(device))
            results[(T, mode)] = _time(steps, x, y, args.rounds, args.warmup)
            print(f"T={T} {mode}: done", file=sys.stderr)
    return results, names, skipped


def tables(results: dict, names: list[str], skipped: dict[str, str], args: argparse.Namespace) -> str:
    Ts = args.tasks
    lines = [
        f"Step time relative to EW in the same run (EW's own time in ms on the first row). "
        f"Trunk {args.d_in}→{args.hidden}→{args.hidden}→{args.rep} (ReLU), batch {args.batch}, "
        f"T linear heads, SGD; device {args.device}, {torch.get_num_threads()} thread(s), torch {torch.__version__}. "
        f"`params`: task gradients on the shared parameters; `reps`: at the representation (rep_grad). "
        f"Loss methods ignore the mode, so they have one column per T.",
        "",
        "| method | " + " | ".join(f"T={T} params | T={T} reps" for T in Ts) + " |",
        "|---|" + "---:|" * (2 * len(Ts)),
    ]
    ew = {T: results[(T, "params")]["ew"] for T in Ts}
    lines.append("| EW (ms) | " + " | ".join(f"{1e3 * ew[T]:.1f} | " for T in Ts) + "|")
    for name in names:
        cells = []
        for T in Ts:
            for mode in ("params", "reps"):
                t = results[(T, mode)].get(name)
                cells.append("" if t is None else f"{t / ew[T]:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    jd = [n for n in names if any(f"torchjd:{n}" in results[(T, "params")] for T in Ts)]
    if jd:
        lines += [
            "",
            "Same method, Jacobian on the shared parameters: mtlkit (`shared_params`) vs TorchJD "
            "(`mtl_backward` + `jac_to_grad`), ms per step; ratio < 1 means mtlkit is faster.",
            "",
            "| method | " + " | ".join(f"T={T} mtlkit | T={T} TorchJD | ratio" for T in Ts) + " |",
            "|---|" + "---:|" * (3 * len(Ts)),
        ]
        for name in jd:
            cells = []
            for T in Ts:
                ours, theirs = results[(T, "params")][name], results[(T, "params")].get(f"torchjd:{name}")
                cells += [f"{1e3 * ours:.1f}", "" if theirs is None else f"{1e3 * theirs:.1f}"]
                cells.append("" if theirs is None else f"{ours / theirs:.2f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", "Not compared (TorchJD aggregator could not be built here): "]
        lines += [f"- {name}: {why}" for name, why in sorted(skipped.items())]
    return "\n".join(lines)


def targets(results: dict, names: list[str], args: argparse.Namespace) -> list[str]:
    """The issue's two targets, checked on this run."""
    report = []
    if 10 in args.tasks:
        cell = results[(10, "reps")]
        ew = results[(10, "params")]["ew"]
        slow = {n: round(cell[n] / ew, 2) for n in names if n in cell and cell[n] / ew > 1.5}
        report.append(f"rep_grad at T=10 <= 1.5x EW: {'met' if not slow else f'NOT met for {slow}'}")
    lost = {
        (n, T): round(results[(T, "params")][n] / results[(T, "params")][f"torchjd:{n}"], 2)
        for T in args.tasks
        for n in names
        if f"torchjd:{n}" in results[(T, "params")] and results[(T, "params")][n] > results[(T, "params")][f"torchjd:{n}"]
    }
    if args.torchjd:
        report.append(f"params mode at least as fast as TorchJD: {'met' if not lost else f'NOT met for {lost}'}")
    return report


_SECTION = """## balancers.py — step time of every balancer, relative to EW, and against TorchJD

One training step (zero_grad, forward, `balancer.backward`, SGD step) of a shared MLP
trunk with T linear heads (MSE), for every method in `mtlkit.weighting.available(aliases=False)`,
with the task gradients on the shared parameters (`params`) or at the representation
(`reps`, rep_grad); loss methods have one column per T. Beside mtlkit's `params` mode, the
same aggregation through TorchJD 0.18 (`autojac.mtl_backward` + `jac_to_grad`), where
TorchJD has the method and its optional solvers are installed. All entries of one cell
alternate step by step in one process; CPU times are the thread's CPU time (one torch
thread), so other jobs' load does not inflate them.

```
python benchmarks/balancers.py                 # T = 2 10 40, about 4 min on 1 core
python benchmarks/balancers.py --quick         # T = 2 10, smaller trunk, about 20 s
python benchmarks/balancers.py --write-readme  # also replaces the table below
```

Targets (issue 4): every gradient method with rep_grad at T=10 <= 1.5x an EW step; with
shared parameters, mtlkit at least as fast as TorchJD on the same method.
"""


def _write_readme(text: str) -> None:
    """Replace only the text between this benchmark's markers (other sections stay)."""
    block = f"{BEGIN}\n{text}\n{END}"
    current = README.read_text() if README.exists() else "# Benchmarks\n"
    if BEGIN in current:
        head, rest = current.split(BEGIN, 1)
        current = head + block + rest.split(END, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + _SECTION + "\n" + block + "\n"
    README.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T = 2 and 10, fewer steps, smaller trunk (~1 min)")
    parser.add_argument("--tasks", type=int, nargs="+", default=None, help="numbers of tasks (default 2 10 40)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 on CPU: timings are thread CPU time)"
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--no-torchjd", dest="torchjd", action="store_false")
    parser.add_argument("--write-readme", action="store_true", help="put the tables into benchmarks/README.md")
    args = parser.parse_args()
    if args.device == "cpu" and args.threads != 1:
        parser.error("CPU timings use the thread's CPU time, which needs --threads 1")
    torch.set_num_threads(args.threads)
    if args.torchjd:
        try:
            import torchjd  # noqa: F401
        except ImportError:
            args.torchjd = False
            print("torchjd is not installed: TorchJD columns left out", file=sys.stderr)
    if args.quick:
        args.tasks = args.tasks or [2, 10]
        args.d_in, args.hidden, args.rep = 64, 256, 128
        args.rounds, args.warmup = args.rounds or 10, 2
    else:
        args.tasks = args.tasks or [2, 10, 40]
        args.d_in, args.hidden, args.rep = 128, 512, 256
        args.rounds, args.warmup = args.rounds or 10, 2
    results, names, skipped = run(args)
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    text = f"Measured {time.strftime('%Y-%m-%d')} ({machine}).\n\n" + tables(results, names, skipped, args)
    checks = targets(results, names, args)
    text += "\n\nTargets on this run: " + "; ".join(checks) + "."
    print(text)
    if args.write_readme:
        _write_readme(text)


if __name__ == "__main__":
    main()
